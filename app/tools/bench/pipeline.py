"""End-to-end pipeline benchmark on the real Kafka and Redis: events/s per worker process,
lists/s, freshness at half the sustained rate, one vs two processes, against a bare consumer
and the in-process core measured in the same run.

Everything runs under an isolated run name (own topics, consumer groups, Redis prefix), which
is deleted at the end. Freshness is read from outside the worker: for every event produced in
the paced phase, the first list of its user whose source offset covers the event; the list's
record is published after the Redis write succeeded, so its Kafka timestamp minus the event's
is an upper bound of event-to-Redis time (by the few ms of one publish).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nearline_rec.tools.bench import median, percentile, write_result
from nearline_rec.tools.bench.core import core_throughput
from nearline_rec.tools.bench.workload import Catalogue, catalogue, events, item_updates
from nearline_rec.tools.localrun import (
    WorkerProcess,
    isolated_env,
    settings_for,
    start_services,
    stop_services,
)

Log = Callable[[str], None]


# -- producing ----------------------------------------------------------------------------------


def _produce(settings: Any, evs: list[Any], rate: float = 0.0) -> list[tuple[int, int, int, str]]:
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


def _trickle_items(settings: Any, cat: Catalogue, start: int, count: int, stop: threading.Event):
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


async def _bare_consume(settings: Any, group: str, n_events: int, timeout: float) -> float:
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


def _drain(workers: list[WorkerProcess], target: int, timeout: float, log: Log) -> dict[str, Any]:
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
    return _rates(samples, target)


def _rates(samples: list[dict[str, float]], target: int) -> dict[str, Any]:
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


def _freshness(
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


def _cleanup(settings_list: list[Any], log: Log) -> None:
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


def _worker_phase(
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
    """One worker process drains the backlog (already on the topic): its maximum sustained
    rate; then events are produced at half that rate while new items arrive: freshness."""
    n_events = len(backlog)
    worker = WorkerProcess(env, work, name=name, loglevel="warning").start()
    try:
        worker.wait_ready(timeout=timeout)
        drain = _drain([worker], n_events, timeout, log)
        st = worker.status() or {}
        drain["item2item_cache"] = st.get("item2item_cache")
        drain["ranker"] = st.get("ranker")
        drain["load_average"] = list(os.getloadavg())
        max_eps = drain["events_per_s"] or drain["median_interval_eps"] or 100.0
        log(f"  {name}: {drain['events_per_s']} events/s, {drain['lists_per_s']} lists/s")
        rate = max_eps / 2
        paced = list(
            events(
                cat,
                int(rate * paced_seconds),
                n_users=n_users,
                seed=3,
                start_index=n_events,
                t0=backlog[-1].timestamp + 1 if backlog else 0.0,
                items_limit=n_items + 1000,
            )
        )
        stop = threading.Event()
        trickle = threading.Thread(
            target=_trickle_items, args=(settings, cat, n_items, 1000, stop), daemon=True
        )
        trickle.start()
        produced = _produce(settings, paced, rate=rate)
        stop.set()
        trickle.join(timeout=30)
        worker.wait_events(n_events + len(paced), timeout=timeout)
        time.sleep(1.0)
        fresh = _freshness(settings, produced, timeout)
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


def _env(run: str, dim: int, batch_size: int, partitions: int) -> dict[str, str]:
    return isolated_env(
        run,
        NEARLINE_ITEMS__EMBEDDING_DIM=str(dim),
        NEARLINE_TOPICS__PARTITIONS=str(partitions),
        NEARLINE_WORKER__BATCH_SIZE=str(batch_size),
        # every touched user gets a freshly computed list: never fall back to popular lists
        NEARLINE_DEGRADE__MODE="normal",
    )


def run(
    out_dir: Path,
    *,
    n_items: int,
    dim: int,
    n_users: int,
    n_events: int,
    paced_seconds: float,
    batch_size: int,
    partitions: int,
    core_events: int,
    scale: bool,
    timeout: float,
    model: Path | None = None,
    rounds: int = 2,
    log: Log = print,
) -> dict[str, Any]:
    if model is not None:
        from nearline_rec.ranking import load_onnx

        load_onnx(model)  # a bad file: its one-line error now, not after the first phases
    started = start_services(log)
    work = Path(tempfile.mkdtemp(prefix="nearline-bench-pipeline-"))
    stamp = int(time.time())
    run1 = f"bench-pipe-{stamp}"
    env1 = _env(run1, dim, batch_size, partitions)
    s1 = settings_for(env1)
    cleanup = [s1]
    figures: dict[str, Any] = {
        "params": {
            "items": n_items,
            "dim": dim,
            "users": n_users,
            "events": n_events,
            "paced_seconds": paced_seconds,
            "batch_size": batch_size,
            "partitions": partitions,
            "workload": "nearline_rec.tools.bench.workload: Zipf users (s=1), sessions of 2-12 "
            "events, "
            "2 favourite clusters per user, new items arriving in the paced phase",
            "model": str(model) if model else None,
            "rounds": rounds if model else 0,
        },
        "load_average_start": list(os.getloadavg()),
    }
    t_start = time.perf_counter()
    try:
        from nearline_rec.kafka_clients import ensure_topics
        from nearline_rec.producer import publish_items

        log(f"catalogue: {n_items:,} items x {dim} ...")
        cat = catalogue(n_items + 1000, dim)  # the last 1,000 arrive during the paced phase
        figures["core"] = core_throughput(
            Catalogue(cat.vectors[:n_items], cat.labels[:n_items], cat.members),
            n_events=core_events,
            n_users=n_users,
            batch_size=batch_size,
            log=log,
        )
        ensure_topics(s1)
        t = time.perf_counter()
        publish_items(s1, item_updates(cat, 0, n_items))
        log(f"  published {n_items:,} items in {time.perf_counter() - t:.1f}s")
        backlog = list(events(cat, n_events, n_users=n_users, items_limit=n_items))
        t = time.perf_counter()
        _produce(s1, backlog)
        log(f"  produced a backlog of {n_events:,} events in {time.perf_counter() - t:.1f}s")

        bare = [
            asyncio.run(_bare_consume(s1, f"{run1}-bare-{i}", n_events, timeout)) for i in range(3)
        ]
        figures["bare_consumer"] = {
            "events_per_s": round(median(bare), 1),
            "runs": [round(b, 1) for b in bare],
            "what": "aiokafka consumer, reads and json-decodes the same topic, commits per batch",
        }
        log(f"  bare consumer: {figures['bare_consumer']['events_per_s']} events/s")

        # 1. One worker process drains the backlog: the maximum sustained rate.
        # 2. Freshness at half that rate, with new items arriving.
        one = _worker_phase(
            env1, s1, cat, backlog, n_items, n_users, paced_seconds, timeout, work, log
        )
        figures["one_worker"], figures["freshness"] = one["drain"], one["freshness"]
        paced_events = one["paced_events"]
        if model is not None:
            figures["ranker"] = _compare_rankers(
                model,
                rounds,
                env1,
                cat,
                Catalogue(cat.vectors[:n_items], cat.labels[:n_items], cat.members),
                backlog,
                n_items=n_items,
                n_users=n_users,
                paced_seconds=paced_seconds,
                core_events=core_events,
                batch_size=batch_size,
                timeout=timeout,
                work=work,
                cleanup=cleanup,
                log=log,
            )

        # 3. Scale-out: the same topic (4 partitions) drained by 1 and by 2 processes of a new
        #    consumer group each (own changelog and Redis prefix, so no write is a no-op).
        total = n_events + paced_events
        figures["scale"] = {"events": total, "runs": []}
        if scale:
            for n_proc in (1, 2):
                run_n = f"bench-pipe-{stamp}-x{n_proc}"
                env_n = {
                    **env1,
                    "NEARLINE_WORKER__APP_ID": run_n,
                    "NEARLINE_REDIS__KEY_PREFIX": f"{run_n[-20:]}:",
                }
                s_n = settings_for(env_n)
                cleanup.append(s_n)
                ensure_topics(s_n)
                workers = [
                    WorkerProcess(env_n, work, name=f"x{n_proc}-{i}", loglevel="warning").start()
                    for i in range(n_proc)
                ]
                try:
                    for w in workers:
                        w.wait_ready(timeout=timeout)
                    d = _drain(workers, total, timeout, log)
                finally:
                    for w in workers:
                        w.stop()
                d["processes"] = n_proc
                figures["scale"]["runs"].append(d)
                log(f"  {n_proc} process(es): {d['events_per_s']} events/s")
    finally:
        try:
            _cleanup(cleanup, log)
        finally:
            stop_services(started)
    figures["load_average_end"] = list(os.getloadavg())
    figures["summary"] = summarize(figures)
    figures["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    write_result(out_dir, "pipeline", figures)
    plot(out_dir / "pipeline.png", figures)
    return figures


# -- the learned ranker beside the linear one ---------------------------------------------------

_VARIANTS = ("linear", "learned")


def _compare_rankers(
    model: Path,
    rounds: int,
    base_env: dict[str, str],
    cat: Catalogue,
    core_cat: Catalogue,
    backlog: list[Any],
    *,
    n_items: int,
    n_users: int,
    paced_seconds: float,
    core_events: int,
    batch_size: int,
    timeout: float,
    work: Path,
    cleanup: list[Any],
    log: Log,
) -> dict[str, Any]:
    """The same worker phase (drain + freshness) and in-process core with the built-in
    linear ranker and with the ONNX model (NEARLINE_RANKING__MODEL_PATH), in alternating
    order over `rounds`, each run on its own topics; the first round of the core also
    profiles the ranking stage's share of the time."""
    from nearline_rec.kafka_clients import ensure_topics
    from nearline_rec.producer import publish_items
    from nearline_rec.ranking import read_card

    card = read_card(model)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in _VARIANTS}
    cores: dict[str, list[dict[str, Any]]] = {v: [] for v in _VARIANTS}
    for r in range(rounds):
        for v in _VARIANTS if r % 2 == 0 else tuple(reversed(_VARIANTS)):
            log(f"ranker {v}, round {r + 1}/{rounds}")
            learned = v == "learned"
            cores[v].append(
                core_throughput(
                    core_cat,
                    n_events=core_events,
                    n_users=n_users,
                    batch_size=batch_size,
                    settings={"ranking": {"model_path": str(model)}} if learned else None,
                    profile=r < 2,
                    log=log,
                )
            )
            run_v = f"{base_env['NEARLINE_WORKER__APP_ID']}-{v[:3]}{r}"
            env_v = {**base_env, **isolated_env(run_v)}
            if learned:
                env_v["NEARLINE_RANKING__MODEL_PATH"] = str(model)
            s_v = settings_for(env_v)
            cleanup.append(s_v)
            ensure_topics(s_v)
            publish_items(s_v, item_updates(cat, 0, n_items))
            _produce(s_v, backlog)
            phase = _worker_phase(
                env_v,
                s_v,
                cat,
                backlog,
                n_items,
                n_users,
                paced_seconds,
                timeout,
                work,
                log,
                name=f"{v}{r}",
            )
            phase["round"] = r
            runs[v].append(phase)
    return {"model": str(model), "version": card["version"], "core": cores, "runs": runs}


def _ranker_summary(rk: dict[str, Any]) -> dict[str, Any]:
    """Medians per ranker over the rounds, learned / linear ratios, and where the time goes."""
    out: dict[str, Any] = {"version": rk["version"]}
    for v in _VARIANTS:
        runs, cores = rk["runs"][v], rk["core"][v]
        eps = [x["drain"]["events_per_s"] for x in runs if x["drain"]["events_per_s"]]
        p99 = [x["freshness"]["p99_s"] for x in runs]
        shares = [c["ranking_share"]["share"] for c in cores if "ranking_share" in c]
        out[v] = {
            "events_per_s": median(eps),
            "events_per_s_runs": eps,
            "freshness_p99_s": median(p99),
            "freshness_p99_runs": p99,
            "core_events_per_s": median([c["events_per_s"] for c in cores]),
            "core_ranking_share": median(shares) if shares else None,
            "core_ranking_parts": cores[0].get("ranking_share", {}).get("parts"),
        }
        if v == "learned":
            status = [x["freshness"].get("ranker") or {} for x in runs]
            out[v]["versions_served"] = sorted({s.get("learned_version") for s in status})
            out[v]["fallback_batches"] = sum(sum(s.get("fallbacks", {}).values()) for s in status)
            # the model call's time in the worker over the drain's wall time
            calls = []
            for x in runs:
                st = x["drain"].get("ranker") or {}
                wall = x["drain"]["samples"][-1]["t"] if x["drain"]["samples"] else 0
                if wall > 0:
                    calls.append(st.get("seconds", 0.0) / wall)
            out[v]["worker_model_call_share"] = round(median(calls), 4) if calls else None
    lin, lea = out["linear"], out["learned"]
    out["ratio_events_per_s"] = (
        round(lea["events_per_s"] / lin["events_per_s"], 3) if lin["events_per_s"] else None
    )
    out["ratio_core_events_per_s"] = (
        round(lea["core_events_per_s"] / lin["core_events_per_s"], 3)
        if lin["core_events_per_s"]
        else None
    )
    out["ratio_freshness_p99"] = (
        round(lea["freshness_p99_s"] / lin["freshness_p99_s"], 3)
        if lin["freshness_p99_s"]
        else None
    )
    out["targets_met"] = bool(
        lea["events_per_s"] >= 5000
        and lea["freshness_p99_s"] <= 1.0
        and lea["fallback_batches"] == 0
        and lea["versions_served"] == [rk["version"]]
    )
    return out


def summarize(f: dict[str, Any]) -> dict[str, Any]:
    one = f.get("one_worker", {})
    bare = f.get("bare_consumer", {}).get("events_per_s")
    eps = one.get("events_per_s")
    scale = {r["processes"]: r.get("events_per_s") for r in f.get("scale", {}).get("runs", [])}
    fresh = f.get("freshness", {})
    ranker = _ranker_summary(f["ranker"]) if f.get("ranker") else None
    return {
        "ranker": ranker,
        "events_per_s_one_process": eps,
        "lists_per_s_one_process": one.get("lists_per_s"),
        "lists_per_event": one.get("lists_per_event"),
        "bare_consumer_events_per_s": bare,
        "ratio_to_bare_consumer": round(eps / bare, 3) if eps and bare else None,
        "core_in_process_events_per_s": f.get("core", {}).get("events_per_s"),
        "core_in_process_lists_per_s": f.get("core", {}).get("lists_per_s"),
        "ratio_to_core": round(eps / f["core"]["events_per_s"], 3)
        if eps and f.get("core")
        else None,
        "freshness_rate": fresh.get("rate"),
        "freshness_p50_s": fresh.get("p50_s"),
        "freshness_p99_s": fresh.get("p99_s"),
        "scale_events_per_s": scale,
        "scale_ratio_2_vs_1": round(scale[2] / scale[1], 3)
        if scale.get(1) and scale.get(2)
        else None,
    }


def plot(path: Path, f: dict[str, Any]) -> None:
    from nearline_rec.extras import pyplot

    plt = pyplot()

    ranker = (f.get("summary") or {}).get("ranker")
    n_panels = 3 if ranker else 2
    fig, axes = plt.subplots(1, n_panels, figsize=(6.5 * n_panels, 4.8))
    ax1, ax2 = axes[0], axes[1]
    runs = [("1 process (first drain)", f.get("one_worker", {}), "tab:blue")]
    for r in f.get("scale", {}).get("runs", []):
        color = "tab:green" if r["processes"] == 2 else "tab:cyan"
        runs.append((f"{r['processes']} process(es), scale-out run", r, color))
    for label, r, color in runs:
        s = [x for x in r.get("samples", []) if "eps" in x]
        ax1.plot([x["t"] for x in s], [x["eps"] for x in s], label=label, color=color, lw=1)
    bare = f.get("bare_consumer", {}).get("events_per_s")
    if bare:
        ax1.axhline(bare, color="black", ls="--", lw=1, label=f"bare consumer {bare:.0f}/s")
    core = f.get("core", {}).get("events_per_s")
    if core:
        ax1.axhline(core, color="tab:purple", ls=":", lw=1, label=f"core in-process {core:.0f}/s")
    ax1.axhline(5000, color="tab:red", lw=0.8, label="target 5,000/s")
    ax1.set_yscale("log")
    ax1.set_xlabel("seconds since the drain started")
    ax1.set_ylabel("events/s consumed (0.5 s intervals)")
    ax1.set_title(f"drain of the backlog: {f['params']['items']:,} items x {f['params']['dim']}")
    ax1.legend(fontsize=7, loc="lower right")
    fresh = f.get("freshness", {})
    lat = sorted(fresh.get("latencies_sample", []))
    if lat:
        ax2.plot(lat, [i / len(lat) for i in range(1, len(lat) + 1)], color="tab:blue")
        for q, name in ((fresh["p50_s"], "p50"), (fresh["p99_s"], "p99")):
            ax2.axvline(q, color="gray", ls=":", lw=0.8)
            ax2.text(q, 0.02, f" {name} {q:.3f}s", fontsize=8)
        ax2.axvline(1.0, color="tab:red", lw=0.8)
        ax2.set_xscale("log")
    ax2.set_xlabel("event Kafka timestamp -> list published after the Redis write (s)")
    ax2.set_ylabel("fraction of events")
    ax2.set_title(f"freshness at {fresh.get('rate', 0):.0f} events/s (half the sustained rate)")
    if ranker:
        _plot_ranker(axes[2], ranker)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_ranker(ax: Any, rk: dict[str, Any]) -> None:
    """Events/s per process (each round a dot, the median a bar) and freshness p99 per ranker."""
    labels = ["linear (built-in)", f"learned ONNX\n{rk['version']}"]
    for i, v in enumerate(_VARIANTS):
        ax.bar(i, rk[v]["events_per_s"], color="tab:blue", alpha=0.6, width=0.6)
        runs = rk[v]["events_per_s_runs"]
        ax.scatter([i] * len(runs), runs, color="black", s=12, zorder=3)
        p99 = ", ".join(f"{x:.2f}" for x in rk[v]["freshness_p99_runs"])
        ax.text(i, rk[v]["events_per_s"] * 1.02, f"p99 {p99} s", ha="center", fontsize=8)
    ax.axhline(5000, color="tab:red", lw=0.8, label="target 5,000/s")
    ax.set_xticks([0, 1], labels, fontsize=8)
    ax.set_ylabel("events/s, one process (drain; median of rounds)")
    share = rk["learned"].get("core_ranking_share")
    ax.set_title(
        f"learned / linear: {rk['ratio_events_per_s']}x events/s"
        + (f"; ranking {share:.0%} of core time" if share is not None else ""),
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="lower right")
