"""Lag monitor, degraded-mode lists and the background recompute of dirty users."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from nearline_rec.agents.items import mirror_catalog
from nearline_rec.composition import (
    app,
    counting_crashes,
    events_topic,
    recommendations_topic,
    runtime,
    settings,
    user_table,
)
from nearline_rec.core import fastjson
from nearline_rec.core.user_state import UserState, directory_entry
from nearline_rec.kafka_clients import client_kwargs
from nearline_rec.runtime import log_event
from nearline_rec.storage import keys
from nearline_rec.storage.redis_client import UNAVAILABLE

log = logging.getLogger("nearline.degrade")

_admin: AIOKafkaAdminClient | None = None
_offsets: AIOKafkaConsumer | None = None


async def _end_offsets(tps: list[Any]) -> tuple[dict[Any, int], dict[Any, int]]:
    """(earliest, latest) offsets from a group-less client: asking through Faust's consumer
    thread waits behind its fetch loop (about a second per call)."""
    global _offsets
    if _offsets is None:
        _offsets = AIOKafkaConsumer(group_id=None, **client_kwargs(settings.kafka))
        await _offsets.start()
    return await _offsets.beginning_offsets(tps), await _offsets.end_offsets(tps)


async def _committed(tps: list[Any]) -> dict[Any, int]:
    """Committed offsets of this app's consumer group (next offset to read), from the broker."""
    global _admin
    if _admin is None:
        _admin = AIOKafkaAdminClient(**client_kwargs(settings.kafka))
        await _admin.start()
    offsets = await _admin.list_consumer_group_offsets(settings.worker.app_id, partitions=tps)
    return {
        tp: meta.offset for tp, meta in offsets.items() if meta is not None and meta.offset >= 0
    }


async def measure_lag() -> dict[int, int]:
    """lag = broker high-water mark - committed offset, per assigned user-events partition.

    End offsets are asked of the broker every time: Faust's own monitor only learns them
    from fetches, so its lag freezes exactly when the consumer stalls."""
    topic = events_topic.get_topic_name()
    tps = [
        TopicPartition(tp.topic, tp.partition)
        for tp in sorted(app.consumer.assignment())
        if tp.topic == topic
    ]
    if not tps:
        return {}
    start, end = await _end_offsets(tps)
    committed = await _committed(tps)
    # nothing committed yet: the group starts from the earliest offset
    return {tp.partition: max(0, end[tp] - committed.get(tp, start[tp])) for tp in tps}


async def read_control() -> str | None:
    """The operator's mode override; on the way, notice that Redis lost its data (the code
    registry is gone) or that `nearline rebuild-lists` was run, and rebuild the lists."""
    try:
        override, epoch, token = await runtime().store.read_control()
        runtime().redis_ping_ok = True
    except UNAVAILABLE:
        runtime().redis_ping_ok = False
        return None
    if runtime().store.registry_lost(epoch):
        await start_rebuild("redis lost its data (the code registry is gone)")
    if token != runtime().rebuild_token:
        seen_before = runtime().rebuild_token_seen
        runtime().rebuild_token, runtime().rebuild_token_seen = token, True
        if seen_before and token is not None:  # not a request made before this worker ran
            await start_rebuild("requested (nearline rebuild-lists)")
    return override


async def start_rebuild(reason: str) -> None:
    """Every list this worker owns, made again from the users' state: the item mirror (and
    with it the code registry) first, then each user through the recompute task at
    NEARLINE_DEGRADE__RECOMPUTE_RATE, so event processing keeps going meanwhile."""
    t0 = time.monotonic()
    try:
        items = await mirror_catalog()
    except UNAVAILABLE as exc:  # the next check tries again (the registry is still gone)
        runtime().store.forget_codes()
        log.warning("rebuild postponed, redis unavailable: %s", exc)
        return
    now = time.time()
    users = [k.decode() if isinstance(k, bytes) else str(k) for k in list(user_table.data.keys())]
    for user_id in users:
        runtime().dirty.setdefault(user_id, now)
    runtime().counters["rebuilds"] += 1
    runtime().last_rebuild = {"reason": reason, "at": now, "users": len(users), "items": items}
    log_event(
        "rebuilding lists",
        reason=reason,
        users=len(users),
        items=items,
        mirror_s=round(time.monotonic() - t0, 2),
    )


@app.timer(interval=settings.degrade.check_interval)
async def lag_monitor() -> None:
    now = time.time()
    override = await read_control()
    if override in ("auto", "degraded", "normal") and override != runtime().policy.override:
        runtime().policy.set_override(override, now)
        log_event("mode override", override=override, mode=runtime().policy.mode)
    try:
        runtime().lag = await measure_lag()
        runtime().lag_measured_at = now
    except Exception as exc:  # the broker is away: keep the last figure, say so
        runtime().counters["lag_check_failures"] += 1
        log.warning("lag check failed: %s", exc)
    lag = sum(runtime().lag.values())
    before = runtime().policy.mode
    mode = runtime().policy.observe(lag, now)
    if mode != before:
        t = runtime().policy.transitions[-1]
        log_event(
            "mode change", mode=mode, lag=lag, reason=t.reason, dirty_users=len(runtime().dirty)
        )
    events = runtime().counters["events_in"]
    prev = runtime().history[-1] if runtime().history else None
    eps = 0.0
    if prev is not None and now > prev["t"]:
        eps = (events - prev["events"]) / (now - prev["t"])
    runtime().history.append(
        {
            "t": now,
            "lag": lag,
            "mode": mode,
            "events": events,
            "eps": round(eps, 1),
            "dirty": len(runtime().dirty),
        }
    )


_stats_lock = asyncio.Lock()


async def read_shared_stats() -> int:
    """Take the item statistics' changes since the last read from Redis into the core's
    statistics (the counts of every worker's events); returns how many items changed."""
    async with _stats_lock:  # the timer and the list refresh both read
        return await _read_shared_stats()


async def _read_shared_stats() -> int:
    shared = runtime().shared_stats
    seq, changed = await runtime().store.read_counts(shared.seq)
    stats = runtime().recommender.stats
    if seq < shared.seq:  # Redis lost them: count again from zero, as every worker does
        log_event("shared item statistics lost, starting again", had=shared.seq, now=seq)
        stats.clear()
        shared.reset()
        return 0
    catalog = runtime().recommender.catalog
    grown = shared.catalog_seen != (len(catalog), catalog.ranking_version)
    shared.counts.update(changed)
    todo = shared.counts if grown else changed  # items the catalog did not know before
    keys, counts = [], []
    for item_id, count in todo.items():
        key = catalog.key(item_id)
        if key is not None:
            keys.append(key)
            counts.append(count)
    stats.set_items(keys, counts)
    shared.catalog_seen = (len(catalog), catalog.ranking_version)
    shared.seq = seq
    shared.read_at = time.time()
    return len(changed)


@app.timer(interval=settings.degrade.stats_interval)
async def follow_shared_stats() -> None:
    """Every worker ranks with the statistics of all workers' events (popularity, trending,
    ratings behind the genre rule), read from Redis as they change."""
    if not settings.degrade.shared_stats or not runtime().catalog_ready.is_set():
        return
    try:
        await read_shared_stats()
    except UNAVAILABLE as exc:
        log.warning("shared item statistics not read, redis unavailable: %s", exc)


def writes_shared_lists() -> bool:
    """With shared statistics one worker writes the shared lists: the owner of user-events
    partition 0 (every worker would write the same lists; one writer keeps them steady)."""
    if not settings.degrade.shared_stats:
        return True
    topic = events_topic.get_topic_name()
    return any(tp.topic == topic and tp.partition == 0 for tp in app.consumer.assignment())


async def refresh_lists() -> None:
    rec = runtime().recommender
    n = settings.degrade.popular_size
    if settings.degrade.shared_stats:  # the lists include every count written before now
        await read_shared_stats()
    runtime().popular_rows = rec.popular_rows(n)
    runtime().shared_stats.writer = writes_shared_lists()
    if not runtime().shared_stats.writer:
        await flush_experiment_counts()
        return
    stamp = time.time()
    prefix = settings.redis.key_prefix
    shared = {
        keys.popular_list(prefix): rec.popular_list(n).to_json(version=0, generated_at=stamp),
        keys.cold_start_list(prefix): rec.cold_start_list().to_json(version=0, generated_at=stamp),
    }
    for genre, lst in rec.genre_popular_lists(n).items():
        shared[keys.genre_list(prefix, genre)] = lst.to_json(version=0, generated_at=stamp)
    await runtime().store.write_shared_lists(shared)
    await flush_experiment_counts()


async def flush_experiment_counts() -> None:
    """A/B online metric: this worker's counts since the last flush, summed in Redis."""
    delta = runtime().experiment_delta()
    await runtime().store.add_experiment_counts(settings.experiments.name, delta)
    runtime().experiment_flushed(delta)


@app.timer(interval=settings.degrade.refresh_seconds)
async def refresh_shared_lists() -> None:
    """Popularity, per-genre and cold-start lists, ready to serve, computed ahead of time."""
    if not runtime().catalog_ready.is_set():
        return
    try:
        await refresh_lists()
    except UNAVAILABLE as exc:
        log.warning("shared lists not refreshed: %s", exc)


async def recompute_some(budget: int) -> int:
    """Recompute up to `budget` dirty users, oldest first; returns how many were done."""
    picked = list(runtime().dirty.items())[:budget]
    outputs = []
    gone = []
    for user_id, _marked in picked:
        raw = user_table.get_state(user_id.encode())
        if raw is None:  # not on this worker's partitions (any more): its owner does it
            gone.append(user_id)
            continue
        try:
            outputs.append(runtime().processor.recompute(UserState.from_bytes(raw)))
        except Exception as exc:  # keeps its degraded list; the next event tries again
            runtime().counters["list_errors"] += 1
            log_event(
                "recompute failed, keeping the degraded list",
                user_id=user_id,
                error=type(exc).__name__,
                detail=str(exc)[:200],
            )
    writes = [w for _, w, _ in outputs]
    # rewrite: a rebuild replaces records of the same version (written with lost codes)
    await runtime().store.write_lists(
        writes, clean=[w.user_id for w in writes], now=time.time(), rewrite=True
    )
    sends = [
        await recommendations_topic.send(key=w.user_id.encode(), value=fastjson.dumps(doc))
        for _, w, doc in outputs
    ]
    if sends:
        await asyncio.gather(*sends)
    for user_id, _ in picked:
        runtime().dirty.pop(user_id, None)
    runtime().counters["dirty_recomputed"] += len(outputs)
    return len(outputs)


@app.task
async def recompute_dirty() -> None:
    """After recovery, give every user served a degraded list a normal one, at a bounded rate."""
    await counting_crashes("recompute", _recompute_dirty)


async def _recompute_dirty() -> None:
    await runtime().catalog_ready.wait()
    tick = 0.25
    per_tick = max(1, int(settings.degrade.recompute_rate * tick))
    last_reload = 0.0
    while True:
        await asyncio.sleep(tick)
        if runtime().policy.mode != "normal":
            continue
        try:
            if not runtime().dirty and time.monotonic() - last_reload > 30:
                # users marked by an earlier run of this worker, or moved here by a rebalance
                last_reload = time.monotonic()
                for user_id in await runtime().store.dirty_users():
                    if user_table.get_state(user_id.encode()) is not None:
                        runtime().dirty.setdefault(user_id, 0.0)
            if runtime().dirty:
                done = await recompute_some(per_tick)
                if not runtime().dirty:
                    log_event("dirty users recomputed", last_batch=done)
        except UNAVAILABLE as exc:
            log.warning("recompute paused, redis unavailable: %s", exc)
            await asyncio.sleep(1.0)


def holders(raw_states: list[tuple[Any, bytes]], items: set[str]) -> list[str]:
    """Users whose last list names one of `items` (a byte search first: most states do not
    hold the item, and only those that might are decoded)."""
    needles = [fastjson.dumps(i) for i in items]
    out = []
    for _key, raw in raw_states:
        if raw and any(n in raw for n in needles):
            state = UserState.from_bytes(raw)
            if items.intersection(state.last_list):
                out.append(state.user_id)
    return out


@app.task
async def recompute_holders_of_retired() -> None:
    """An item retired (deleted, or made not recommendable) while users hold it in their
    stored lists: those users are marked for the recompute task, which writes them lists
    without it (readers already leave it out meanwhile)."""
    await counting_crashes("retired", _recompute_holders)


async def table_slices(
    slice_size: int,
    keys: list[Any] | None = None,
    wanted: Callable[[Any], bool] | None = None,
) -> AsyncIterator[list[tuple[Any, bytes]]]:
    """The user table's (key, state) pairs, `slice_size` keys at a time, with the loop given
    back between slices (batches run meanwhile). Only the keys are listed up front (or
    given); each slice's states are read when it is reached (with RocksDB, from disk: the
    states are never all in memory at once), only for keys `wanted` says yes to, and a
    state deleted meanwhile is left out."""
    keys = list(user_table.data.keys()) if keys is None else keys
    for start in range(0, len(keys), slice_size):
        states = []
        for key in keys[start : start + slice_size]:
            if wanted is not None and not wanted(key):
                continue
            raw = user_table.get_state(key)
            if raw:
                states.append((key, raw))
        yield states
        await asyncio.sleep(0)


async def _recompute_holders(slice_size: int = 2000) -> None:
    rt = runtime()
    await rt.catalog_ready.wait()
    while True:
        await asyncio.sleep(1.0)
        if not rt.retired:
            continue
        items = set(rt.retired)
        rt.retired.clear()
        t0 = time.monotonic()
        marked = scanned = 0
        now = time.time()
        async for states in table_slices(slice_size):
            scanned += len(states)
            for user_id in holders(states, items):
                rt.dirty.setdefault(user_id, now)
                marked += 1
        rt.counters["retired_holders_marked"] += marked
        log_event(
            "lists holding retired items marked for recompute",
            items=len(items),
            users=marked,
            scanned=scanned,
            seconds=round(time.monotonic() - t0, 2),
        )


@app.task
async def fill_user_directory() -> None:
    """The similar-users directory holds the users of this worker's partitions (the most
    recently active NEARLINE_RECALL__SIMILAR_USERS_MAX of them): after a start or a
    rebalance their states come from the table, not from new events, so owned users with an
    embedding are added from the table, a slice at a time and at most half the loop's time,
    skipping those the full directory would drop at once. A scan waits for the table's
    recovery to end (the catalog, which starts it, has its own consumer); the table is
    scanned again 30 s later while the last scan still found users or the table's size
    changed, and after a new assignment; otherwise not (a scan reads the state of every user
    not in the directory: at 1M users, a minute of the loop's spare time)."""
    await counting_crashes("directory", _fill_directory)


def _not_in_directory(key: Any) -> bool:
    user_id = key.decode() if isinstance(key, bytes) else str(key)
    return user_id not in runtime().recommender.users


async def _fill_directory(slice_size: int = 1000) -> None:
    rt = runtime()
    await rt.catalog_ready.wait()  # the catalog comes from its own consumer, not Faust's
    guard = app.guard
    scanned_at = -1  # the assignment count at the last scan
    listed = -1  # keys the last scan found in the table
    again = False
    while True:
        seen = guard.assignments if guard is not None else 0
        if not again and seen == scanned_at:
            await asyncio.sleep(30.0)
            continue
        while app.in_recovery:  # the table is whole only when its recovery is over
            await asyncio.sleep(1.0)
        scanned_at = guard.assignments if guard is not None else 0
        added = 0
        keys = list(user_table.data.keys())
        t0 = time.monotonic()
        async for states in table_slices(slice_size, keys, _not_in_directory):
            fresh = []
            for _key, raw in states:
                entry = directory_entry(raw)
                if entry[1] is not None and rt.recommender.users.admits(entry[3]):
                    fresh.append(entry)
            rt.recommender.users.update_many(fresh)
            added += len(fresh)
            # background work: at most half the loop's time (reading the slice included),
            # so batches keep their pace
            await asyncio.sleep(time.monotonic() - t0)
            t0 = time.monotonic()
        rt.counters["directory_scans"] += 1
        # scanned again while it still finds users or the table changed size meanwhile
        # (a scan that began just before a recovery saw part of the table)
        again = added > 0 or len(keys) != listed
        listed = len(keys)
        if added:
            rt.counters["directory_filled"] += added
            log_event("similar-users directory filled from the table", users=added)
        await asyncio.sleep(30.0)


@app.on_before_shutdown.connect
async def close_lag_clients(app: Any, **kwargs: Any) -> None:
    """The lag monitor's own clients are not Faust's: close them with the worker."""
    global _admin, _offsets
    if _offsets is not None:
        await _offsets.stop()
        _offsets = None
    if _admin is not None:
        await _admin.close()
        _admin = None
