"""user-events agent: micro-batches of raw bytes -> core -> table, Redis, recommendations topic."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from faust.types import TP

from app.composition import (
    activity_topic,
    app,
    counting_crashes,
    events_dlq_topic,
    events_topic,
    load_user,
    recommendations_topic,
    runtime,
    settings,
    user_table,
)
from app.core import fastjson
from app.errors import NearlineError
from app.kafka_clients import RangeReader, describe_topic, send_in_batches
from app.offsets import Gap
from app.processing import DeadLetter, RawRecord, dead_letter
from app.runtime import log_event
from app.storage.redis_store import RETRYABLE, RedisRefused

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
    Redis has it, so an outage pauses this partition set instead of losing a list. A write
    Redis refuses (OOM, READONLY, NOPERM, WRONGTYPE, MISCONF) is held the same way, with
    one log line saying what the operator must do, until Redis accepts it."""
    delay = 0.5
    while True:
        try:
            await runtime().store.write_lists(
                writes,
                now=time.time(),
                # positions are in this incarnation of the topic (counted again when new)
                count_topic=f"{events_topic.get_topic_name()}@{runtime().processor.source_id}",
                half_life=settings.recall.popularity_half_life_seconds,
                **marks,
            )
            if not runtime().redis_ok:
                log_event("redis back", pending=len(writes), refused=runtime().redis_refusal)
            runtime().redis_ok = True
            runtime().redis_refusal = None
            return
        except RETRYABLE as exc:
            if runtime().redis_ok:
                log.warning("redis unavailable, pausing batch: %s", exc)
            runtime().redis_ok = False
            runtime().counters["redis_batch_retries"] += 1
        except RedisRefused as exc:
            if runtime().redis_refusal != exc.code:
                log.error(
                    "redis refuses writes (%s), holding the batch and retrying: %s. %s",
                    exc.code,
                    exc.reply,
                    exc.advice,
                )
            runtime().redis_ok = False
            runtime().redis_refusal = exc.code
            runtime().counters[f"redis_refused_{exc.code}"] += 1
            runtime().counters["redis_batch_retries"] += 1
        await _backoff(delay)
        delay = min(delay * 2, 5.0)


class BatchAbandoned(NearlineError):
    """A batch held for Redis or the broker gives way to a rebalance (see _backoff)."""


async def _backoff(delay: float) -> None:
    """Wait before the next try of a held batch, giving way to a rebalance: Faust revokes
    partitions only after every in-flight batch is acked (`wait_empty`), so a batch held
    through a Redis outage would stall the whole group (a dead peer's partitions never
    taken over). The batch is abandoned instead, unacknowledged in effect: the commit guard
    (app.offsets) keeps its offsets uncommitted, and whoever owns each partition next
    applies its records again (idempotently)."""
    deadline = time.monotonic() + delay
    while True:
        if app.rebalancing:
            raise BatchAbandoned()
        left = deadline - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(min(left, 0.2))


def _transient(exc: BaseException) -> bool:
    """An error of the broker or the network that a later try of the same batch can pass."""
    if isinstance(exc, KafkaError):
        return bool(getattr(exc, "retriable", False)) or isinstance(
            exc, KafkaTimeoutError | KafkaConnectionError
        )
    return isinstance(exc, TimeoutError | OSError | ConnectionError) or isinstance(exc, RETRYABLE)


async def publish_until_done(records: list[tuple[str, int | None, bytes | None, bytes]]) -> None:
    """Publish with backoff while the broker is away; nothing is acked until it is done.
    An error no retry can pass (a record the broker will never take) is raised."""
    delay = 0.5
    while True:
        try:
            await _publish(records)
            return
        except Exception as exc:
            if not _transient(exc):
                raise
            runtime().counters["publish_retries"] += 1
            log.warning("publishing %d records failed, retrying: %r", len(records), exc)
        await _backoff(delay)
        delay = min(delay * 2, 5.0)


def _state_record(user_id: str, value: bytes, partition: int) -> tuple[str, int, bytes, bytes]:
    """The user's state into the table's store; its changelog record, for the partition of
    the user's own events, returned to be sent with the batch's publishes."""
    key = user_id.encode()
    user_table.put_state(key, value, partition)
    return (user_table.changelog_topic.get_topic_name(), partition, key, value)


async def _publish(records: list[tuple[str, int | None, bytes | None, bytes]]) -> None:
    """Send the batch's records (state changelog, recommendations) one producer batch per
    partition and wait until the broker has every one."""
    if not records:
        return
    sent = await send_in_batches(app.producer._ensure_producer(), records)
    changelog = user_table.changelog_topic.get_topic_name()
    for topic, partition, n, fut in sent:
        meta = await fut
        if topic == changelog:  # what Table._on_changelog_sent records (rocksdb:// stores)
            user_table.data.set_persisted_offset(TP(topic, partition), meta.offset + n - 1)


async def read_gap_until_done(gap: Gap) -> list[RawRecord]:
    """The records of a gap, read back from Kafka; an unreachable broker pauses the batch
    (like a Redis outage) rather than letting it go on without them."""
    delay = 0.5
    while True:
        try:
            topic = events_topic.get_topic_name()
            return await _reader().read(topic, gap.partition, gap.start, gap.end)
        except (KafkaError, TimeoutError, OSError) as exc:
            log.warning(
                "re-reading offsets %s-%s of partition %s failed, retrying: %s",
                gap.start,
                gap.end - 1,
                gap.partition,
                exc,
            )
            await _backoff(delay)
            delay = min(delay * 2, 5.0)


_range_reader: RangeReader | None = None


def _reader() -> RangeReader:
    global _range_reader
    if _range_reader is None:
        _range_reader = RangeReader(settings.kafka)
    return _range_reader


async def _fill(gaps: Sequence[Gap], why: str) -> dict[tuple[int, int], list[RawRecord]]:
    """Read every gap back: {(partition, gap end): its records}."""
    out = {}
    for gap in gaps:
        got = await read_gap_until_done(gap)
        out[(gap.partition, gap.end)] = got
        runtime().counters["offset_gaps"] += 1
        runtime().counters["events_refetched"] += len(got)
        log_event(
            "offset gap filled",
            why=why,
            partition=gap.partition,
            start=gap.start,
            end=gap.end,
            records=len(got),
        )
    return out


# One batch at a time: the agent's batches and the tail filler share the frontier.
_batch_lock = asyncio.Lock()

# Fault injection for the reliability tests: the last record of every batch is dropped
# here, after take_events() buffered it (so it is acked), which is what Faust's stream does
# to the records it skips. The commit guard must read each one back, in order.
_DROP_LAST_OF_BATCH = os.environ.get("NEARLINE_FAULT_DROP_LAST_OF_BATCH") == "1"


async def learn_source_id() -> None:
    """Which incarnation of user-events the offsets are in (its topic id): asked after every
    assignment, before the next batch, so a topic deleted and made again is noticed before
    its first record is taken for a redelivery. An unreachable broker: asked again later."""
    topic = events_topic.get_topic_name()
    try:
        found, partitions = await asyncio.to_thread(describe_topic, settings, topic)
    except Exception as exc:
        log.warning(
            "topic id of %s not read, keeping %r: %s", topic, runtime().processor.source_id, exc
        )
        return
    app.source_stale = False
    runtime().processor.partition_count = partitions
    if found and found != runtime().processor.source_id:
        if runtime().processor.source_id:
            log_event("source topic made again", topic=topic, topic_id=found)
            runtime().counters["source_topic_changes"] += 1
        runtime().processor.source_id = found


async def handle_batch(events: Sequence[Any]) -> None:
    """One micro-batch from the stream: records Faust jumped over are read back and
    applied first, in offset order (app.offsets), then the batch's effects are written
    and the frontier moves past it, before take_events acks the events."""
    records = [_record(e) for e in events]
    if _DROP_LAST_OF_BATCH:
        records = records[:-1]
    frontier = app.frontier
    assert frontier is not None
    async with _batch_lock:
        if app.source_stale:
            await learn_source_id()
        gaps = frontier.gaps(records)
        if gaps:
            fills = await _fill(gaps, "skipped by the stream")
            merged: list[RawRecord] = []
            for r in records:
                merged.extend(fills.pop((r.partition, r.offset), ()))
                merged.append(r)
            records = merged
        try:
            await process_contained(records)
        except BatchAbandoned:
            runtime().counters["batches_abandoned"] += 1
            log_event("batch given up for a rebalance, to be redone", records=len(records))
            return  # the frontier stays: these offsets are not committed
        frontier.advance(records)


@app.timer(interval=1.0)
async def fill_owed_tails() -> None:
    """Faust wanted to commit past records the agent never got, with no later record on
    that partition to reveal the gap: read them back and apply them, then commit."""
    frontier = app.frontier
    if frontier is None or not frontier.owed() or _batch_lock.locked() or app.rebalancing:
        return
    async with _batch_lock:
        mine = {tp.partition for tp in app.consumer.assignment() if tp.topic == frontier.topic}
        owed = [g for g in frontier.owed() if g.partition in mine]
        if not owed:
            return
        fills = await _fill(owed, "acked but not delivered")
        records = [r for gap in owed for r in fills[(gap.partition, gap.end)]]
        if records:
            try:
                await process_contained(records)
            except BatchAbandoned:
                return  # the tails stay owed; the next owner starts before them
        for gap in owed:
            frontier.filled(gap)
        positions = frontier.positions()
        commit = {
            TP(frontier.topic, g.partition): positions[g.partition]
            for g in owed
            if g.partition in positions
        }
        try:  # Faust already counts these as committed: no later ack would commit them
            await app.consumer._commit(commit)
        except KafkaError as exc:  # a rebalance: the next owner starts from the older commit
            log.warning("commit after filling a tail failed: %s", exc)


async def process_contained(records: list[RawRecord]) -> None:
    """process_records, with a failure kept to the records that cause it: the core already
    quarantines a record it cannot use, so what reaches here is an effect that failed
    (a publish the broker refuses, an unexpected error while writing). The batch is then
    done again one record at a time; when some records pass, each record that still fails
    is dead-lettered with reason processing_error and the stream goes on. When none passes,
    the fault is the worker's, not the records' (a store misconfigured, a bug in writing
    the effects): nothing is dead-lettered, the batch is held and retried with backoff,
    as through a Redis outage, with the error on /health, /status/ and in the log, until it
    passes or a rebalance takes it. Nothing reaches Faust's agent supervisor (which would
    restart the agent on the same records); transient trouble is retried inside."""
    delay = 0.5
    while True:
        try:
            await process_records(records)
            runtime().effects_error = None
            return
        except BatchAbandoned:
            raise
        except Exception as exc:
            failed = exc
        runtime().counters["batch_errors"] += 1
        log_event(
            "batch failed, retrying its records one at a time",
            records=len(records),
            error=type(failed).__name__,
            detail=str(failed)[:200],
        )
        passed, still = 0, []
        for record in records:
            try:
                await process_records([record])
                passed += 1
            except BatchAbandoned:
                raise
            except Exception as exc:
                still.append((record, exc))
        if passed or not still:
            for record, exc in still:
                await _quarantine_effects(record, exc)
            runtime().effects_error = None
            return
        if runtime().effects_error is None:
            log.error(
                "no record of a batch of %d can be written (%s: %s): holding it and retrying;"
                " this is the worker's fault, not the records' (see the traceback above)",
                len(records),
                type(failed).__name__,
                str(failed)[:200],
                exc_info=failed,
            )
        runtime().effects_error = f"{type(failed).__name__}: {str(failed)[:200]}"
        runtime().counters["batch_holds"] += 1
        await _backoff(delay)
        delay = min(delay * 2, 5.0)


async def _quarantine_effects(record: RawRecord, exc: Exception) -> None:
    dl = dead_letter(
        record,
        "processing_error",
        f"{type(exc).__name__} while writing its effects: {exc}",
        error=exc,
        max_bytes=settings.worker.dead_letter_max_bytes,
    )
    _count_dead_letter(dl)
    await publish_until_done([(events_dlq_topic.get_topic_name(), None, dl.key, dl.encode())])
    runtime().counters["events_done"] += 1
    runtime().counters["dead_letters"] += 1
    runtime().counters["processing_errors"] += 1


def _count_dead_letter(dl: DeadLetter) -> None:
    reason = dl.value["reason"]
    runtime().dead_letters[reason] += 1
    src = dl.value["source"]
    fields: dict[str, Any] = {}
    if "error" in dl.value:
        err = dl.value["error"]
        fields = {"error": err["type"], "where": err["where"], "detail": err["message"][:200]}
    log_event(
        "dead letter",
        reason=reason,
        partition=src["partition"],
        offset=src["offset"],
        mode=runtime().policy.mode,
        **fields,
    )


async def process_records(records: list[RawRecord]) -> None:
    """Apply records to users' state and write every effect: table (changelog awaited),
    Redis lists, recommendations and dead letters on the broker."""
    started = time.perf_counter()
    stamps = [r.timestamp for r in records if r.timestamp]
    waited = time.time() - min(stamps) if stamps else None  # the batch's oldest event
    degraded = runtime().policy.mode == "degraded" and bool(runtime().popular_rows)
    runtime().refresh_model()
    result = runtime().processor.process(
        records, load_user, degraded=runtime().popular_rows if degraded else None
    )
    runtime().counters["events_in"] += len(records)
    runtime().counters["events_applied"] += result.applied
    runtime().counters["events_duplicate"] += result.duplicates
    runtime().counters["lists_reemitted"] += result.reemitted
    runtime().counters["events_other_partitioner"] += result.other_partitioner

    for dl in result.dead_letters:
        _count_dead_letter(dl)
    runtime().counters["processing_errors"] += len(result.errors)
    for user_id, record, exc in result.list_errors:
        runtime().counters["list_errors"] += 1
        log_event(
            "list failed, serving the degraded list",
            user_id=user_id,
            partition=record.partition,
            offset=record.offset,
            error=type(exc).__name__,
            detail=str(exc)[:200],
        )

    # The user's state: into the table's store, and its changelog record sent to the
    # partition of the user's own events, explicitly. Table.__setitem__ would send it with
    # send_soon and forget it; Faust flushes its producer before committing offsets, but a
    # record being handed from its buffer to the Kafka client at that moment is in neither,
    # so a commit could land before the state it covers (a SIGKILL then lost the batch's
    # events: the restarted worker resumed after them from an older state). The records
    # go out with the recommendations, a producer batch per partition (a Faust send per
    # record cost ~0.1 ms of the event loop each), while Redis is written, and all are on
    # the broker before the batch is acknowledged (commit after effects).
    records_out: list[tuple[str, int | None, bytes | None, bytes]] = [
        _state_record(user_id, state.to_bytes(), result.last_record[user_id].partition)
        for user_id, state in result.states.items()
    ]
    topic = recommendations_topic.get_topic_name()
    records_out.extend(
        (topic, None, write.user_id.encode(), fastjson.dumps(doc)) for _, write, doc in result.lists
    )
    dlq = events_dlq_topic.get_topic_name()
    records_out.extend((dlq, None, dl.key, dl.encode()) for dl in result.dead_letters)
    # a like to the user's followers, a backfill to a new follower: keyed by the receiver
    activity = activity_topic.get_topic_name()
    records_out.extend((activity, None, a.user.encode(), a.encode()) for a in result.forwards)
    runtime().counters["friend_activity_sent"] += len(result.forwards)
    published = asyncio.ensure_future(publish_until_done(records_out))
    dirty = set(result.dirty)
    clean = [uid for uid in result.states if uid not in dirty]
    try:
        await write_redis_until_done(
            [w for _, w, _ in result.lists],
            dirty=result.dirty,
            clean=[uid for uid in clean if uid in runtime().dirty],
            counted=result.counted if settings.degrade.shared_stats else (),
        )
    except BaseException:
        published.cancel()
        raise
    now = time.time()
    for uid in result.dirty:
        runtime().dirty.setdefault(uid, now)
    for uid in clean:
        runtime().dirty.pop(uid, None)
    await published
    runtime().counters["lists_written"] += len(result.lists)
    # only now are the batch's effects (table, Redis, topic) all done: waiters key on this
    runtime().counters["events_done"] += len(records)
    runtime().counters["lists_degraded"] += len(result.dirty)
    runtime().counters["dead_letters"] += len(result.dead_letters)
    runtime().last_batch_at = time.time()
    runtime().metrics.observe_batch(
        len(records),
        time.perf_counter() - started,
        [runtime().last_batch_at - r.timestamp for r in result.last_record.values() if r.timestamp],
        waited,
    )
    if stamps:
        runtime().last_message_time = max(runtime().last_message_time, max(stamps))
    for state in result.states.values():
        runtime().last_event_time = max(runtime().last_event_time, state.last_event_time)


@app.agent(events_topic, concurrency=1)
async def ingest(stream: Any) -> None:
    # Users are scored against the catalog: wait until the item follower caught up.
    await runtime().catalog_ready.wait()
    w = settings.worker

    async def consume() -> None:
        async for events in stream.take_events(w.batch_size, within=w.batch_within):
            await handle_batch(events)

    await counting_crashes("ingest", consume)


@app.on_before_shutdown.connect
async def close_range_reader(app: Any, **kwargs: Any) -> None:
    """The gap filler's consumer is not Faust's: close it with the worker."""
    global _range_reader
    if _range_reader is not None:
        await _range_reader.close()
        _range_reader = None
