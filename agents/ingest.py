"""user-events agent: micro-batches of raw bytes -> core -> table, Redis, recommendations topic."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from app.core import fastjson
from app.processing import RawRecord
from app.runtime import (
    app,
    events_dlq_topic,
    events_topic,
    load_user,
    log_event,
    recommendations_topic,
    runtime,
    settings,
    user_table,
)
from app.storage.redis_store import RETRYABLE

log = logging.getLogger("nearline.ingest")


def _record(event: Any) -> RawRecord:
    msg = event.message
    return RawRecord(
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        key=msg.key,
        value=msg.value,
        timestamp=msg.timestamp,
    )


async def write_redis_until_done(writes: list[Any], **marks: Any) -> None:
    """Retry (tenacity inside the store) and then keep trying: the batch is not acked until
    Redis has it, so an outage pauses this partition set instead of losing a list."""
    delay = 0.5
    while True:
        try:
            await runtime.store.write_lists(writes, now=time.time(), **marks)
            if not runtime.redis_ok:
                log_event("redis back", pending=len(writes))
            runtime.redis_ok = True
            return
        except RETRYABLE as exc:
            if runtime.redis_ok:
                log.warning("redis unavailable, pausing batch: %s", exc)
            runtime.redis_ok = False
            runtime.counters["redis_batch_retries"] += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def handle_batch(stream: Any, events: Sequence[Any]) -> None:
    started = time.perf_counter()
    records = [_record(e) for e in events]
    stamps = [r.timestamp for r in records if r.timestamp]
    waited = time.time() - min(stamps) if stamps else None  # the batch's oldest event
    by_pos = {(r.partition, r.offset): e for r, e in zip(records, events, strict=True)}
    degraded = runtime.policy.mode == "degraded" and bool(runtime.popular_rows)
    result = runtime.processor.process(
        records, load_user, degraded=runtime.popular_rows if degraded else None
    )
    runtime.counters["events_in"] += len(records)
    runtime.counters["events_applied"] += result.applied
    runtime.counters["events_duplicate"] += result.duplicates
    runtime.counters["lists_reemitted"] += result.reemitted

    sends = []
    for dl in result.dead_letters:
        runtime.dead_letters[dl.value["reason"]] += 1
        src = dl.value["source"]
        log_event(
            "dead letter",
            reason=dl.value["reason"],
            partition=src["partition"],
            offset=src["offset"],
            mode=runtime.policy.mode,
        )
        sends.append(await events_dlq_topic.send(key=dl.key, value=dl.encode()))

    # Faust writes a table key to the changelog partition of the *current* event; in a
    # batch that spans partitions, point it at an event of this user's own partition.
    # Then put the stream's current event back: take_events() files the record that is
    # waiting to enter the next batch under stream.current_event once this batch is
    # done, so a stale event left here would replace that record (lost, never acked)
    # with a copy of one from this batch.
    pending = stream.current_event
    try:
        for user_id, state in result.states.items():
            last = result.last_record[user_id]
            stream._set_current_event(by_pos[(last.partition, last.offset)])
            user_table[user_id.encode()] = state.to_bytes()
    finally:
        stream._set_current_event(pending)

    dirty = set(result.dirty)
    clean = [uid for uid in result.states if uid not in dirty]
    await write_redis_until_done(
        [w for _, w, _ in result.lists],
        dirty=result.dirty,
        clean=[uid for uid in clean if uid in runtime.dirty],
    )
    now = time.time()
    for uid in result.dirty:
        runtime.dirty.setdefault(uid, now)
    for uid in clean:
        runtime.dirty.pop(uid, None)
    for _, write, doc in result.lists:
        sends.append(
            await recommendations_topic.send(key=write.user_id.encode(), value=fastjson.dumps(doc))
        )
    # Publishes must be on the broker before the batch is acked (commit after effects).
    if sends:
        await asyncio.gather(*sends)
    runtime.counters["lists_written"] += len(result.lists)
    # only now are the batch's effects (table, Redis, topic) all done: waiters key on this
    runtime.counters["events_done"] += len(records)
    runtime.counters["lists_degraded"] += len(result.dirty)
    runtime.counters["dead_letters"] += len(result.dead_letters)
    runtime.last_batch_at = time.time()
    runtime.metrics.observe_batch(
        len(records),
        time.perf_counter() - started,
        [runtime.last_batch_at - r.timestamp for r in result.last_record.values() if r.timestamp],
        waited,
    )
    if stamps:
        runtime.last_message_time = max(runtime.last_message_time, max(stamps))
    for state in result.states.values():
        runtime.last_event_time = max(runtime.last_event_time, state.last_event_time)


@app.agent(events_topic, concurrency=1)
async def ingest(stream: Any) -> None:
    # Users are scored against the catalog: wait until the item follower caught up.
    await runtime.catalog_ready.wait()
    w = settings.worker
    async for events in stream.take_events(w.batch_size, within=w.batch_within):
        await handle_batch(stream, events)
