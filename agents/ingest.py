"""user-events agent: micro-batches of raw bytes -> the processor (core) -> the sink (table,
store, recommendations topic), under the commit guard (at-least-once)."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import time
from collections.abc import Awaitable
from typing import Any

from faust.types import TP

from nearline_rec.composition import (
    app,
    counting_crashes,
    events_topic,
    guard,
    load_user,
    runtime,
    settings,
    sink,
)
from nearline_rec.kafka_clients import TopicDescriber
from nearline_rec.processing import RawRecord
from nearline_rec.runtime import log_event

log = logging.getLogger("nearline.ingest")

_describer = TopicDescriber(settings)
"""One admin client for the topic id, asked after every assignment."""


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


async def learn_source_id() -> None:
    """Which incarnation of user-events the offsets are in (its topic id): asked after every
    assignment, before the next batch, so a topic deleted and made again is noticed before
    its first record is taken for a redelivery. An unreachable broker: asked again later."""
    if not guard.source_stale:
        return
    processor = runtime().processor
    topic = events_topic.get_topic_name()
    try:  # bounded: a call that never returns must not hold the batch (and the partitions)
        found, partitions = await asyncio.wait_for(
            asyncio.to_thread(_describer.describe, topic), _describer.timeout_s + 5.0
        )
    except TimeoutError:
        _describer.abandon()  # the stuck call keeps its client; the next call makes a new one
        runtime().counters["topic_id_timeouts"] += 1
        log.warning("topic id of %s not read in time, keeping %r", topic, processor.source_id)
        return
    except Exception as exc:
        log.warning("topic id of %s not read, keeping %r: %s", topic, processor.source_id, exc)
        return
    guard.source_stale = False
    processor.partition_count = partitions
    if found and found != processor.source_id:
        if processor.source_id:
            log_event("source topic made again", topic=topic, topic_id=found)
            runtime().counters["source_topic_changes"] += 1
        processor.source_id = found


async def process_records(records: list[RawRecord]) -> None:
    """Apply records to users' state (the processor) and write every effect (the sink)."""
    rt = runtime()
    started = time.perf_counter()
    stamps = [r.timestamp for r in records if r.timestamp]
    waited = time.time() - min(stamps) if stamps else None  # the batch's oldest event
    degraded = rt.policy.mode == "degraded" and bool(rt.popular_rows)
    rt.refresh_model()
    result = rt.processor.process(
        records, load_user, degraded=rt.popular_rows if degraded else None
    )
    await sink().write_batch(records, result, started, waited)


# process_contained and handle_batch return their coroutine rather than await it: the
# records are decoded at the bottom of this chain, and a JSON document nested near the
# recursion limit gets its verdict (not_json or schema) by the depth of the stack there.


def process_contained(records: list[RawRecord]) -> Awaitable[None]:
    """process_records, with a failure kept to the records that cause it (Sink.contained)."""
    return sink().contained(process_records, records)


def handle_batch(events: list[Any]) -> Awaitable[None]:
    """One micro-batch from the stream, applied under the commit guard."""
    records = [_record(e) for e in events]
    return guard.run_batch(records, process_contained, runtime().counters, before=learn_source_id)


@app.timer(interval=1.0)
async def fill_owed_tails() -> None:
    """Records Faust acked without delivering them, at a partition's tail: read back."""
    await guard.fill_owed_tails(app.consumer, process_contained, runtime().counters)


_STUCK_AFTER_S = 60.0
_REREAD_AFTER_S = 20.0
"""A partition fetched past its frontier with nothing processed this long is read again."""
_stacks_logged = False


@app.timer(interval=5.0)
async def reread_dropped_records() -> None:
    """Records the Kafka client handed to Faust that never reached the agent (see
    CommitGuard.stalled): read again from the frontier, counted and logged."""
    fetched = _client_positions()
    if not fetched:
        return
    loop_now = asyncio.get_running_loop().time()
    for partition, frontier in guard.stalled(fetched, loop_now, _REREAD_AFTER_S).items():
        runtime().counters["partitions_reread"] += 1
        log.warning(
            "partition %s: fetched up to offset %s but nothing past %s reached the agent "
            "for %.0f s: reading again from %s",
            partition,
            fetched[partition],
            frontier,
            _REREAD_AFTER_S,
            frontier,
        )
        await app.consumer.seek(TP(events_topic.get_topic_name(), partition), frontier)


def _client_positions() -> dict[int, int]:
    """The Kafka client's position per assigned user-events partition (the next offset it
    hands out); empty when the consumer is not up."""
    try:
        states = _client_states()
    except Exception:  # not started, or stopping  # noqa: BLE001
        return {}
    return {
        tp.partition: st.position
        for tp, st in states
        if st is not None and st.has_valid_position and st.position is not None
    }


def _client_states() -> list[tuple[Any, Any]]:
    """(partition, the Kafka client's state of it, or None) for every assigned user-events
    partition, in order; raises while the consumer is not up."""
    client = app.consumer._thread._ensure_consumer()
    assignment = client._fetcher._subscriptions.subscription.assignment
    topic = events_topic.get_topic_name()
    return [
        (tp, None if assignment is None else assignment.state_value(tp))
        for tp in sorted(app.consumer.assignment())
        if tp.topic == topic
    ]


@app.timer(interval=10.0)
async def report_stuck_batch() -> None:
    """A batch holding the commit guard's lock for a minute is a bug (every wait in it is
    bounded): log where every task of the loop stands, once, so it can be found."""
    global _stacks_logged
    _report_idle_with_lag()
    held = guard.stuck_for()
    if held < _STUCK_AFTER_S:
        _stacks_logged = False
        return
    runtime().counters["batches_stuck"] += 1
    if _stacks_logged:
        return
    _stacks_logged = True
    log.error("a batch has held the lock for %.0f s; tasks:\n%s", held, _task_stacks())


def _task_stacks() -> str:
    """Where every task of the loop stands, one line each."""
    stacks = [
        f"{task.get_name()}: {_where(task.get_coro()) or '(not started)'}"
        for task in asyncio.all_tasks()
    ]
    # a task's chain stops at an async generator: walk them too
    stacks += [
        f"async generator: {_where(obj)}"
        for obj in gc.get_objects()
        if inspect.isasyncgen(obj) and obj.ag_frame is not None
    ]
    return "\n".join(sorted(stacks))


def _where(coro: Any) -> str:
    """`function (file:line) -> ...` down the chain of awaits."""
    return " -> ".join(
        f"{f.f_code.co_name} ({f.f_code.co_filename.rsplit('/', 2)[-1]}:{f.f_lineno})"
        for f in _awaited_frames(coro)
    )


def _awaited_frames(coro: Any, limit: int = 24) -> list[Any]:
    """The frames of a coroutine and of what it awaits, outermost first (a task's own
    stack shows only its outermost frame)."""
    frames = []
    while coro is not None and len(frames) < limit:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
        if frame is None:
            break
        frames.append(frame)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
    return frames


def _fetch_state() -> str:
    """Per user-events partition: the Kafka client's position, highwater, seconds since its
    last fetch request, paused flag, and seconds since the stream last took a record from
    it; then the queue sizes of the channels records are delivered to."""
    now = time.time()
    out = []
    try:
        inbound = app.monitor.stream_inbound_time
        for tp, st in _client_states():
            if st is None:
                out.append(f"{tp.partition}: no client state")
                continue
            fetched = (now - st.timestamp / 1000) if st.timestamp else None
            seen = inbound.get(tp)
            out.append(
                f"{tp.partition}: position {st.position if st.has_valid_position else None} "
                f"highwater {st.highwater} fetch {fetched and round(fetched, 1)} s ago "
                f"paused {st.paused} awaiting reset {st.awaiting_reset} stream took "
                f"{round(time.monotonic() - seen, 1) if seen else None} s ago"
            )
        queues = {
            name: [(id(ch), ch.queue.qsize()) for ch in channels]
            for name, channels in app.topics._topic_name_index.items()
        }
        out.append(f"channel queues {queues}")
        routes = {
            str(tp.partition): [id(ch) for ch in channels]
            for tp, channels in app.topics._tp_index.items()
            if tp.topic == events_topic.get_topic_name()
        }
        out.append(f"user-events routes {routes} (of {len(app.topics._tp_to_callback)} handlers)")
        out.append(f"conductor channels {[id(ch) for ch in app.topics._topics]}")
        out.append(
            "read offsets "
            f"{ {str(tp.partition): o for tp, o in app.consumer._read_offset.items()} }"
        )
        out.append(
            "committed "
            f"{ {str(tp.partition): o for tp, o in app.consumer._committed_offset.items()} }"
            f" frontier {guard.frontier.positions()} consumer flow {app.consumer.flow_active}"
        )
        out.append(f"fetcher {app._fetcher.state} generation {app.consumer_generation_id}")
    except Exception as exc:  # a diagnostic never breaks the worker  # noqa: BLE001
        out.append(f"(fetch state unavailable: {exc!r})")
    return "; ".join(out)


_idle_logged = False


def _report_idle_with_lag() -> None:
    """Partitions with lag and no batch for a minute: log the consumer's flow state once
    (which partitions it holds paused or active), so a stalled stream can be found."""
    global _idle_logged
    rt = runtime()
    last = rt.last_batch_at or rt.started_at
    if sum(rt.lag.values()) == 0 or time.time() - last < _STUCK_AFTER_S or guard.rebalancing():
        _idle_logged = False
        return
    if _idle_logged:
        return
    _idle_logged = True
    c = app.consumer
    log.error(
        "lag %d and no batch for %.0f s: assigned %s, paused %s, active %s, flow active %s, "
        "can resume flow %s, suspend flow %s",
        sum(rt.lag.values()),
        time.time() - last,
        sorted(str(tp) for tp in c.assignment()),
        sorted(str(tp) for tp in getattr(c, "_paused_partitions", ())),
        sorted(str(tp) for tp in (getattr(c, "_active_partitions", None) or ())),
        app.flow_control.is_active(),
        getattr(getattr(c, "can_resume_flow", None), "is_set", lambda: None)(),
        getattr(getattr(c, "suspend_flow", None), "is_set", lambda: None)(),
    )
    log.error("stalled stream: %s; tasks:\n%s", _fetch_state(), _task_stacks())


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
    """The gap filler's consumer and the admin client are not Faust's: closed with the
    worker."""
    await guard.close()
    await asyncio.to_thread(_describer.close)
