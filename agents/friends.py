"""Friend-graph agents: user-relations -> friend-activity (split by user), and
friend-activity -> the owning user's state and list (the same batch path as user events)."""

from __future__ import annotations

from typing import Any

from nearline_rec.agents.ingest import _record, process_contained
from nearline_rec.composition import (
    activity_topic,
    app,
    counting_crashes,
    events_dlq_topic,
    guard,
    relations_topic,
    runtime,
    settings,
    sink,
)
from nearline_rec.retry import BatchAbandoned
from nearline_rec.runtime import log_event


async def split_relations(events: list[Any]) -> None:
    """Each relation becomes a `follow` record for the follower and a `follower` record
    for the followee, keyed by each; a bad record becomes a dead letter on user-events-dlq
    with its reason. All are on the broker before the batch is acknowledged."""
    records = [_record(e) for e in events]
    forwards, letters = runtime().processor.relations(records)
    activity = activity_topic.get_topic_name()
    dlq = events_dlq_topic.get_topic_name()
    try:
        await sink().publish_until_done(
            [(activity, None, a.user.encode(), a.encode()) for a in forwards]
            + [(dlq, None, dl.key, dl.encode()) for dl in letters]
        )
    except BatchAbandoned:
        await _requeue(records)
        return
    for dl in letters:
        sink().count_dead_letter(dl)
    runtime().counters["relations_in"] += len(records)
    runtime().counters["friend_activity_sent"] += len(forwards)
    runtime().counters["dead_letters"] += len(letters)


@app.agent(relations_topic, concurrency=1)
async def relations(stream: Any) -> None:
    w = settings.worker

    async def consume() -> None:
        async for events in stream.take_events(w.batch_size, within=w.batch_within):
            await split_relations(events)

    await counting_crashes("relations", consume)


async def handle_activity(events: list[Any]) -> None:
    """A batch of friend activity: applied to its users' states and their lists made, with
    the batch lock the user-events agent holds too (the two write the same users)."""
    records = [_record(e) for e in events]
    async with guard.lock:
        try:
            await process_contained(records)
        except BatchAbandoned:
            await _requeue(records)


async def _requeue(records: list[Any]) -> None:
    """A batch given up for a rebalance is acknowledged by Faust all the same (take_events
    acks in a `finally`), and friend-activity has no commit guard: the records go to the
    end of their partitions again instead. Applying them is idempotent and does not depend
    on their order (last writer wins per edge, one like per friend and item). The same for
    a batch of relations whose split could not be published."""
    runtime().counters["batches_abandoned"] += 1
    try:  # to the partition each came from: relations are keyed by edge, not by user
        await sink().publish([(r.topic, r.partition, r.key, r.value) for r in records])
    except Exception as exc:  # the broker is away too: say what was lost
        runtime().counters["friend_records_dropped"] += len(records)
        log_event("friend records dropped", records=len(records), error=repr(exc))
        return
    runtime().counters["friend_records_requeued"] += len(records)
    log_event("friend records given up for a rebalance, requeued", records=len(records))


@app.agent(activity_topic, concurrency=1)
async def friend_activity(stream: Any) -> None:
    await runtime().catalog_ready.wait()  # lists are scored against the catalog
    w = settings.worker

    async def consume() -> None:
        async for events in stream.take_events(w.batch_size, within=w.batch_within):
            await handle_activity(events)

    await counting_crashes("friend_activity", consume)
