"""The worker phase of the pipeline benchmark (nearline_rec.tools.bench.pipeline): produce
events and item updates, drain them through real worker processes, read freshness from the
lists' records, and clean the run's topics and keys up."""

from __future__ import annotations

import bisect
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nearline_rec.tools.bench import median, percentile
from nearline_rec.tools.bench.workload import Catalogue, events, item_updates
from nearline_rec.tools.localrun import (
    WorkerProcess,
    isolated_env,
)

Log = Callable[[str], None]


# -- producing ----------------------------------------------------------------------------------


def produce_timed(
    settings: Any, evs: list[Any], rate: float = 0.0
) -> list[tuple[int, int, int, str]]:
    """Produce events keyed by user id; returns (partition, offset, timestamp ms, user) each."""
    from nearline_rec.producer import make_producer

    producer = make_producer(settings)
    futures = []
    start = time.monotonic()
    try:
        for n, ev in enumerate(evs, 1):
            futures.append(
                (
                    producer.send(
                        settings.topics.user_events, key=ev.user_id.encode(), value=ev.encode()
                    ),
                    ev.user_id,
                )
            )
            if rate > 0:
                ahead = n / rate - (time.monotonic() - start)
                if ahead > 0.002:
                    time.sleep(ahead)
        producer.flush(timeout=120)
        out = []
        for fut, user in futures:
            md = fut.get(timeout=30)
            out.append((md.partition, md.offset, md.timestamp, user))
        return out
    finally:
        producer.close(timeout=10)


def trickle_items(settings: Any, cat: Catalogue, start: int, count: int, stop: threading.Event):
    """New items arriving while the worker runs: one upsert every 50 ms."""
    from nearline_rec.core.events import encode_item_update
    from nearline_rec.producer import make_producer

    producer = make_producer(settings)
    try:
        for u in item_updates(cat, start, start + count):
            if stop.is_set():
                break
            producer.send(
                settings.topics.item_updates, key=u.item_id.encode(), value=encode_item_update(u)
            )
            time.sleep(0.05)
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=10)


# -- the bare consumer baseline ----------------------------------------------------------------


async def bare_consume(settings: Any, group: str, n_events: int, timeout: float) -> float:
    """aiokafka consumer that only reads and JSON-decodes the topic; returns events/s."""
    from aiokafka import AIOKafkaConsumer

    from nearline_rec.kafka_clients import client_kwargs

    consumer = AIOKafkaConsumer(
        settings.topics.user_events,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **client_kwargs(settings.kafka),
    )
    await consumer.start()
    try:
        seen = 0
        first = None
        deadline = time.monotonic() + timeout
        while seen < n_events and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=2000)
            for msgs in batch.values():
                if first is None:
                    first = time.perf_counter()
                for m in msgs:
                    json.loads(m.value)
                seen += len(msgs)
            if batch:
                await consumer.commit()
        elapsed = time.perf_counter() - (first or time.perf_counter())
        return seen / elapsed if elapsed > 0 else 0.0
    finally:
        await consumer.stop()


# -- worker drains ----------------------------------------------------------------------------


def drain_workers(
    workers: list[WorkerProcess], target: int, timeout: float, log: Log
) -> dict[str, Any]:
    """Sample /status/ of the workers until together they consumed `target` events."""
    samples: list[dict[str, float]] = []
    t0 = time.monotonic()
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        stats = [w.status() for w in workers]
        if all(s is not None for s in stats):
            ev = sum(s["counters"].get("events_in", 0) for s in stats)  # type: ignore[index]
            li = sum(s["counters"].get("lists_written", 0) for s in stats)  # type: ignore[index]
            samples.append({"t": round(time.monotonic() - t0, 3), "events": ev, "lists": li})
            if ev >= target:
                break
        for w in workers:
            if not w.alive:
                raise RuntimeError(f"worker exited during the drain:\n{w.log_tail()}")
        time.sleep(0.5)
    else:
        log(f"  drain timed out after {timeout:.0f}s")
    return drain_rates(samples, target)


def drain_rates(samples: list[dict[str, float]], target: int) -> dict[str, Any]:
    """Sustained rate: events and lists between 10% and 90% of the target, over that time;
    plus the median of the 0.5 s interval rates in that window."""
    for s, prev in zip(samples[1:], samples, strict=False):
        dt = s["t"] - prev["t"]
        s["eps"] = round((s["events"] - prev["events"]) / dt, 1) if dt > 0 else 0.0
    lo = next((s for s in samples if s["events"] >= 0.1 * target), None)
    hi = next((s for s in samples if s["events"] >= 0.9 * target), None)
    out: dict[str, Any] = {"samples": samples, "consumed": samples[-1]["events"] if samples else 0}
    if lo is None or hi is None or hi["t"] <= lo["t"]:
        out.update(events_per_s=None, lists_per_s=None, median_interval_eps=None)
        return out
    window = [s["eps"] for s in samples if lo["t"] < s["t"] <= hi["t"] and "eps" in s]
    dt = hi["t"] - lo["t"]
    out.update(
        events_per_s=round((hi["events"] - lo["events"]) / dt, 1),
        lists_per_s=round((hi["lists"] - lo["lists"]) / dt, 1),
        median_interval_eps=median(window),
        lists_per_event=round((hi["lists"] - lo["lists"]) / max(hi["events"] - lo["events"], 1), 3),
    )
    return out


# -- freshness from the output topic ----------------------------------------------------------


def read_freshness(
    settings: Any, produced: list[tuple[int, int, int, str]], timeout: float
) -> dict[str, Any]:
    """Per event: Kafka timestamp of the first list record of its user covering its offset,
    minus the event's Kafka timestamp."""
    from kafka import KafkaConsumer, TopicPartition

    from nearline_rec.kafka_clients import client_kwargs

    consumer = KafkaConsumer(
        enable_auto_commit=False, consumer_timeout_ms=3000, **client_kwargs(settings.kafka)
    )
    topic = settings.topics.recommendations
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        lists: dict[str, list[tuple[int, int]]] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=500, max_records=5000)
            for msgs in batch.values():
                for m in msgs:
                    doc = json.loads(m.value)
                    src = doc.get("source") or {}
                    lists.setdefault(doc["user_id"], []).append(
                        (int(src.get("offset", -1)), int(m.timestamp))
                    )
            if all(consumer.position(tp) >= end[tp] for tp in tps):
                break
    finally:
        consumer.close()
    latencies = []
    missing = 0
    for user_lists in lists.values():
        user_lists.sort()
    for _part, offset, ts, user in produced:
        user_lists = lists.get(user, [])
        i = bisect.bisect_left(user_lists, (offset, -1))
        if i == len(user_lists):
            missing += 1
            continue
        latencies.append((user_lists[i][1] - ts) / 1000.0)
    return {
        "events": len(produced),
        "measured": len(latencies),
        "without_list": missing,
        "p50_s": round(percentile(latencies, 50), 4),
        "p90_s": round(percentile(latencies, 90), 4),
        "p99_s": round(percentile(latencies, 99), 4),
        "max_s": round(max(latencies), 4) if latencies else None,
        "latencies_sample": [round(x, 4) for x in latencies[:: max(1, len(latencies) // 2000)]],
    }


# -- clean-up ---------------------------------------------------------------------------------


def cleanup_run(settings_list: list[Any], log: Log) -> None:
    """Delete the run's topics and Redis keys."""
    import redis
    from kafka.admin import KafkaAdminClient

    from nearline_rec.kafka_clients import client_kwargs, topic_specs

    names: set[str] = set()
    for s in settings_list:
        names.update(name for name, _, _ in topic_specs(s))
    try:
        admin = KafkaAdminClient(**client_kwargs(settings_list[0].kafka))
        try:
            existing = set(admin.list_topics())
            doomed = sorted(n for n in names if n in existing)
            if doomed:
                admin.delete_topics(doomed, timeout_ms=30_000)
        finally:
            admin.close()
    except Exception as exc:  # clean-up is best effort: say so, keep the figures
        log(f"  could not delete topics: {exc}")
    for s in settings_list:
        try:
            r = redis.Redis.from_url(s.redis.url)
            keys = list(r.scan_iter(match=f"{s.redis.key_prefix}*", count=5000))
            for start in range(0, len(keys), 5000):
                r.delete(*keys[start : start + 5000])
            r.close()
        except Exception as exc:
            log(f"  could not delete redis keys: {exc}")


# -- one worker: drain, then freshness ---------------------------------------------------------


def worker_phase(
    env: dict[str, str],
    settings: Any,
    cat: Catalogue,
    backlog: list[Any],
    n_items: int,
    n_users: int,
    paced_seconds: float,
    timeout: float,
    work: Path,
    log: Log,
    name: str = "w1",
) -> dict[str, Any]:
    """`drain_and_freshness` on the generated workload: the paced events come from the
    workload generator while 1,000 new items arrive."""

    def paced_of(rate: float) -> list[Any]:
        return list(
            events(
                cat,
                int(rate * paced_seconds),
                n_users=n_users,
                seed=3,
                start_index=len(backlog),
                t0=backlog[-1].timestamp + 1 if backlog else 0.0,
                items_limit=n_items + 1000,
            )
        )

    def new_items(stop: threading.Event) -> None:
        trickle_items(settings, cat, n_items, 1000, stop)

    return drain_and_freshness(
        env, settings, backlog, paced_of, paced_seconds, timeout, work, log, name, new_items
    )


def drain_and_freshness(
    env: dict[str, str],
    settings: Any,
    backlog: list[Any],
    paced_of: Callable[[float], list[Any]],
    paced_seconds: float,
    timeout: float,
    work: Path,
    log: Log,
    name: str,
    alongside: Callable[[threading.Event], None] | None = None,
) -> dict[str, Any]:
    """One worker process drains the backlog (already on the topic): its maximum sustained
    rate; then `paced_of(rate)` is produced at half that rate (with `alongside` running in a
    thread until it is): freshness."""
    n_events = len(backlog)
    worker = WorkerProcess(env, work, name=name, loglevel="warning").start()
    try:
        worker.wait_ready(timeout=timeout)
        drain = drain_workers([worker], n_events, timeout, log)
        st = worker.status() or {}
        drain["item2item_cache"] = st.get("item2item_cache")
        drain["ranker"] = st.get("ranker")
        drain["load_average"] = list(os.getloadavg())
        max_eps = drain["events_per_s"] or drain["median_interval_eps"] or 100.0
        log(f"  {name}: {drain['events_per_s']} events/s, {drain['lists_per_s']} lists/s")
        rate = max_eps / 2
        paced = paced_of(rate)
        stop = threading.Event()
        beside = None
        if alongside is not None:
            beside = threading.Thread(target=alongside, args=(stop,), daemon=True)
            beside.start()
        produced = produce_timed(settings, paced, rate=rate)
        stop.set()
        if beside is not None:
            beside.join(timeout=30)
        worker.wait_events(n_events + len(paced), timeout=timeout)
        time.sleep(1.0)
        fresh = read_freshness(settings, produced, timeout)
        fresh["rate"] = round(rate, 1)
        fresh["achieved_rate"] = round(len(paced) / paced_seconds, 1)
        st = worker.status() or {}
        fresh["items_at_end"] = st.get("items")
        fresh["ranker"] = st.get("ranker")
        log(
            f"  {name}: freshness at {rate:.0f} events/s: "
            f"p50 {fresh['p50_s']}s p99 {fresh['p99_s']}s"
        )
    finally:
        worker.stop()
    return {"drain": drain, "freshness": fresh, "paced_events": len(paced)}


# -- the run ----------------------------------------------------------------------------------


def run_env(run: str, dim: int, batch_size: int, partitions: int) -> dict[str, str]:
    return isolated_env(
        run,
        NEARLINE_ITEMS__EMBEDDING_DIM=str(dim),
        NEARLINE_TOPICS__PARTITIONS=str(partitions),
        NEARLINE_WORKER__BATCH_SIZE=str(batch_size),
        # every touched user gets a freshly computed list: never fall back to popular lists
        NEARLINE_DEGRADE__MODE="normal",
    )
