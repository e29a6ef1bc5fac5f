"""Read-path benchmark at concurrency: `nearline serve` (cached and Redis reads) driven by
wrk at 1..512 connections, next to redis-benchmark's bare GET of the same records at the same
concurrency, for 1 and 2 serve processes; reads paced at a share of bare Redis's req/s at
128 connections (latency at a given throughput); the worker's events/s with and without
that read load; and how long a changed list stays stale in the serve cache."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nearline_rec.core.events import ItemUpdate, UserEvent
from nearline_rec.tools.bench import median, write_result
from nearline_rec.tools.bench.serve_load import (
    WRK_LUA,
    Load,
    check_tools,
    median_of_runs,
    paced_rate,
    redis_get,
    user_name,
)
from nearline_rec.tools.bench.serve_probes import (
    measure_staleness,
    profile_under_load,
    sample_stacks,
)
from nearline_rec.tools.bench.serve_report import markdown_table, plot, targets_met
from nearline_rec.tools.clitools import confine_threads
from nearline_rec.tools.localrun import (
    ServeProcess,
    WorkerProcess,
    isolated_env,
    settings_for,
    start_services,
    stop_services,
)

LIGHT_READS = 2000.0
"""req/s of the light read load the worker's events/s is also measured under."""
SERVE_CPU = max(os.sched_getaffinity(0))
"""The read load is also run with serve confined to this CPU (`NEARLINE_SERVE__CPUS`, and wrk
with it), the worker's process left to the others."""
WORKER_CPUS = sorted(os.sched_getaffinity(0) - {SERVE_CPU}) or [SERVE_CPU]
"""...and, cores split, with the worker confined to these (`NEARLINE_WORKER__CPUS`)."""
SPLIT = "with_reads_cores_split"


MIN_BURST_SECONDS = 10.0
"""A worker burst is made long enough to last about this long at the warm-up's events/s."""
SEED_SHARE = 0.8
"""With a real log: the earliest share of its ratings makes the lists read; the rest are the
worker's bursts."""


def real_log(
    s: Any, ratings: Path, movies: Path
) -> tuple[list[ItemUpdate], list[UserEvent], list[UserEvent]]:
    """(items, seed events, burst events) of a real ratings log, as `nearline evaluate` reads
    it (item vectors trained on the seed part), its users renamed to the bench's names in
    order of first rating (the seed part's users are then the first ones)."""
    from nearline_rec.tools.quality.evaluate import EvalConfig, prepare

    prepared = prepare(s, ratings, movies, None, EvalConfig(ablation=False, train_share=SEED_SHARE))
    named: dict[str, str] = {}
    events = [
        dataclasses.replace(e, user_id=named.setdefault(e.user_id, user_name(len(named))))
        for e in prepared.events
    ]
    return prepared.updates, events[: prepared.n_train], events[prepared.n_train :]


def _sched_idle() -> None:
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()  # fmt: skip
    except (subprocess.SubprocessError, OSError):
        return "unknown"


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "unknown"


def run(
    out_dir: Path,
    *,
    seconds: float,
    repeats: int,
    users: int,
    connections: list[int],
    processes: list[int],
    burst: int,
    paced_share: float,
    log: Callable[[str], None],
    ratings: Path | None = None,
    movies: Path | None = None,
) -> dict[str, Any]:
    from nearline_rec.data.sample import generate_sample
    from nearline_rec.kafka_clients import ensure_topics
    from nearline_rec.producer import item_updates_from_files, produce_events, publish_items
    from nearline_rec.storage import keys

    check_tools()
    load_before = _loadavg()
    started = start_services(log)
    worker: WorkerProcess | None = None
    serving: list[ServeProcess] = []
    try:
        work = Path(tempfile.mkdtemp(prefix="nearline-bench-serve-"))
        script = work / "reads.lua"
        script.write_text(WRK_LUA)
        # every burst does the same work: in auto mode, a burst's lag may or may not tip the
        # worker into degraded mode (cheaper lists), which would decide its events/s
        env = isolated_env(f"bench-serve-{int(time.time())}") | {"NEARLINE_DEGRADE__MODE": "normal"}
        s = settings_for(env)
        ensure_topics(s)
        replayed: list[UserEvent] = []
        if ratings is not None and movies is not None:
            log(f"reading {ratings} and {movies} ...")
            updates, seed, replayed = real_log(s, ratings, movies)
            users = len({e.user_id for e in seed})
        else:
            sample = generate_sample(work / "sample", n_items=2000, n_users=200, n_ratings=2000)
            updates, _ = item_updates_from_files(
                sample.movies_path, sample.embeddings_path, dim=s.items.embedding_dim
            )
        publish_items(s, updates)
        ids = [u.item_id for u in updates]
        names = [user_name(u) for u in range(users)]
        worker = WorkerProcess(env, work, "worker", "warning").start()
        worker.wait_ready(180)
        if not replayed:
            seed = [
                UserEvent(f"s{u}-{j}", uid, ids[(u * 13 + j * 7) % len(ids)], "like", 1.7e9 + j)
                for u, uid in enumerate(names)
                for j in range(3)
            ]
        produce_events(s, seed)
        worker.wait(lambda st: st["counters"].get("events_done", 0) >= len(seed), 600, "seed")
        worker.wait(lambda st: st["counters"].get("lists_written", 0) >= users, 300, "lists")
        pattern = keys.user_list(s.redis.key_prefix, "u__rand_int__")
        rows: dict[str, list[dict[str, Any]]] = {}

        def add(name: str, row: dict[str, Any]) -> dict[str, Any]:
            rows.setdefault(name, []).append(row)
            return row

        stacks = sample_stacks(env, work, script, users, seconds, repeats, log)
        paced: dict[str, dict[str, Any]] = {}
        serve_counters: dict[str, Any] = {}
        profiles: dict[str, Any] = {}
        """One process's /health after its rounds (reads by tier, fallbacks)."""
        for procs in processes:
            cached = ServeProcess(env, work, procs, f"cached{procs}").start()
            direct = ServeProcess(
                {**env, "NEARLINE_SERVE__CACHE_TTL_SECONDS": "0"}, work, procs, f"redis{procs}"
            ).start()
            serving += [cached, direct]
            Load(cached.port, 16, 2, script, users).run()  # warm both caches and the code books
            Load(direct.port, 16, 1, script, users).run()
            for rep in range(repeats):
                for c in connections:
                    log(f"{procs} process(es), {c} connections, round {rep + 1}/{repeats}")
                    add(f"cache_p{procs}_c{c}", Load(cached.port, c, seconds, script, users).run())
                    add(f"redis_p{procs}_c{c}", Load(direct.port, c, seconds, script, users).run())
                    n = int(max(5_000, (80_000 if c > 1 else 20_000) * seconds))
                    add(f"bare_p{procs}_c{c}", redis_get(s.redis.url, pattern, c, users, n))
            # latency at a given throughput: each of 128 connections paced so the total is
            # `paced_share` of bare Redis's req/s at 128 connections in this run
            c = 128
            if c in connections:
                bare = median([r["rps"] for r in rows[f"bare_p{procs}_c{c}"]])
                target = paced_share * bare
                servers = (("cache", cached), ("redis", direct))
                intervals = {
                    k: paced_rate(srv.port, c, target, script, users) for k, srv in servers
                }
                for rep in range(repeats):
                    log(f"{procs} process(es), paced at {target:.0f} req/s, round {rep + 1}")
                    for kind, srv in servers:
                        row = Load(srv.port, c, seconds, script, users, intervals[kind]).run()
                        add(
                            f"paced_{kind}_p{procs}",
                            row | {"target_rps": round(target, 1), "interval_ms": intervals[kind]},
                        )
                for kind in ("cache", "redis"):
                    m = median_of_runs(rows[f"paced_{kind}_p{procs}"])
                    paced[f"{kind}_p{procs}"] = m | {
                        "target_rps": round(target, 1),
                        "bare_rps_128": bare,
                        "rps_vs_bare": round(m["rps"] / bare, 3),
                    }
            for name, srv in (("cache", cached), ("redis", direct)):
                serve_counters[f"{name}_p{procs}"] = srv.get("/health")
            if procs == 1:
                for name, srv in (("cache", cached), ("redis", direct)):
                    log(f"profiling {name} reads at 128 connections")
                    load = Load(srv.port, 128, seconds + 3, script, users)
                    profiles[name] = profile_under_load(srv, load, seconds)
            for srv in (cached, direct):
                srv.stop()
            serving.clear()

        # the worker under read load: a burst of events drained with and without 128 paced
        # connections reading from a 2-process serve (the read load of the paced figures)
        # and with a light read load (LIGHT_READS req/s), where the CPU reads take is small
        procs = max(processes)
        srv = ServeProcess(env, work, procs, "load").start()
        # serve under SCHED_IDLE (NEARLINE_SERVE__SCHED_IDLE; wrk, which stands for clients on
        # other hosts, with it): reads take only the CPU the worker leaves idle
        idle = ServeProcess(
            {**env, "NEARLINE_SERVE__SCHED_IDLE": "true"}, work, procs, "load-idle"
        ).start()
        pinned = ServeProcess(
            {**env, "NEARLINE_SERVE__CPUS": str(SERVE_CPU)}, work, procs, "load-pinned"
        ).start()
        idle_pinned = ServeProcess(
            {**env, "NEARLINE_SERVE__SCHED_IDLE": "true", "NEARLINE_SERVE__CPUS": str(SERVE_CPU)},
            work, procs, "load-idle-pinned",
        ).start()  # fmt: skip
        serving += [srv, idle, pinned, idle_pinned]
        bare = median([r["rps"] for r in rows.get(f"bare_p{procs}_c128", [{"rps": 20_000}])])
        heavy = paced_rate(srv.port, 128, paced_share * bare, script, users)
        # condition: (server, pace of each connection in ms, wrk under SCHED_IDLE, CPU of wrk)
        intervals: dict[str, tuple[ServeProcess, float, bool, int | None]] = {
            "with_reads": (srv, heavy, False, None),
            "with_light_reads": (srv, 128 / LIGHT_READS * 1000, False, None),
            "with_reads_serve_idle": (idle, heavy, True, None),
            "with_reads_serve_pinned": (pinned, heavy, False, SERVE_CPU),
            "with_reads_serve_idle_pinned": (idle_pinned, heavy, True, SERVE_CPU),
            # and the worker confined to the other CPUs, in this pair's burst without reads too
            SPLIT: (idle_pinned, heavy, True, SERVE_CPU),
        }
        # control: no reads, a busy loop per CPU under SCHED_IDLE beside the worker: what it
        # loses to anything running on its cores however low its priority (shared caches,
        # memory bandwidth, the host's scheduling of these virtual CPUs), not to CPU time
        events_rows: dict[str, list[float]] = {
            "without_reads": [],
            **{c: [] for c in intervals},
            "with_idle_busy_loops": [],
            "without_reads_worker_confined": [],
        }
        read_rates: dict[str, list[float]] = {c: [] for c in intervals}
        # the machine's speed drifts over minutes: each condition is measured right after a
        # burst without reads, and its ratio is to that burst (the median of those pairs)
        pair_ratios: dict[str, list[float]] = {
            c: [] for c in events_rows if not c.startswith("without_reads")
        }
        order = [(c, p) for _ in range(repeats) for p in pair_ratios for c in ("without_reads", p)]
        assert worker.proc is not None
        everywhere = os.sched_getaffinity(0)

        def burst_events(tag: str, k: int, n: int) -> list[UserEvent]:
            if replayed:  # the log's later ratings, again and again, as new events
                return [
                    dataclasses.replace(
                        replayed[(k * n + j) % len(replayed)],
                        event_id=f"{tag}{k}-{j}",
                        timestamp=1.8e9 + k * 1e4 + j,
                    )
                    for j in range(n)
                ]
            return [
                UserEvent(
                    f"{tag}{k}-{j}",
                    names[(j * 31 + k) % users],
                    ids[(j * 17 + k * 5) % len(ids)],
                    "click",
                    1.8e9 + k * 1e4 + j,
                )
                for j in range(n)
            ]

        # warm-up: the first burst pays one-time costs (compiled kernels, caches); measured
        # conditions must not
        st0 = worker.wait(lambda st: "counters" in st, 120, "the worker's status")
        warm = min(burst, 5000)
        t0 = time.perf_counter()
        produce_events(s, burst_events("w", 0, warm))
        done0 = st0["counters"].get("events_done", 0) + warm
        worker.wait(lambda st: st["counters"].get("events_done", 0) >= done0, 300, "warm-up")
        # a burst lasts MIN_BURST_SECONDS at least (a fast worker, or a log whose events make
        # few lists, drains --burst in a few status polls)
        burst = max(burst, int(warm / (time.perf_counter() - t0) * MIN_BURST_SECONDS))
        log(f"bursts of {burst:,} events")
        k = 0
        base_rate = 0.0
        for cond, pair in order:
            k += 1
            confine_threads(worker.proc.pid, set(WORKER_CPUS) if pair == SPLIT else everywhere)
            evs = burst_events("b", k, burst)
            load = None
            if cond in intervals:
                server, interval, wrk_idle, wrk_cpu = intervals[cond]
                reads = Load(server.port, 128, 600, script, users, interval)
                cmd, wenv = reads.command()
                if wrk_cpu is not None:
                    cmd = ["taskset", "-c", str(wrk_cpu), *cmd]
                load = subprocess.Popen(
                    cmd, env=wenv, stdout=subprocess.PIPE, text=True,
                    preexec_fn=_sched_idle if wrk_idle else None,
                )  # fmt: skip
                time.sleep(1.0)  # the load is on before the burst
            busy = []
            if cond == "with_idle_busy_loops":
                busy = [
                    subprocess.Popen(
                        [sys.executable, "-c", "while True: pass"], preexec_fn=_sched_idle
                    )
                    for _ in os.sched_getaffinity(0)
                ]
            try:
                # a status poll can time out on a loaded machine: wait for one that answers
                st0 = worker.wait(lambda st: "counters" in st, 120, "the worker's status")
                base = st0["counters"].get("events_done", 0)
                t0 = time.perf_counter()
                produce_events(s, evs)
                worker.wait(
                    lambda st: st["counters"].get("events_done", 0) >= base + burst,  # noqa: B023
                    300,
                    "burst",
                )
                rate = burst / (time.perf_counter() - t0)
            finally:
                for b in busy:
                    b.kill()
                    b.wait()
                if load is not None:
                    load.send_signal(signal.SIGINT)  # wrk prints its figures and exits
                    out = load.communicate(timeout=30)[0]
            if load is not None:
                read_rates[cond].append(reads.parse(out)["rps"])
            if cond == "without_reads":
                base_rate = rate
                cond = "without_reads_worker_confined" if pair == SPLIT else cond
            else:
                pair_ratios[cond].append(round(rate / base_rate, 3))
            events_rows[cond].append(round(rate, 1))
            log(f"worker events/s {cond}: {rate:.0f}")
        confine_threads(worker.proc.pid, everywhere)
        staleness = measure_staleness(s, srv, names[: min(50, users)])
        for server in (srv, idle, pinned, idle_pinned):
            server.stop()
        serving.clear()
        worker_tail = worker.status() or {}
    finally:
        for srv in serving:
            srv.stop()
        if worker is not None:
            worker.stop()
        stop_services(started)

    med = {name: median_of_runs(rs) for name, rs in rows.items() if not name.startswith("paced_")}
    table = []
    for procs in processes:
        for c in connections:
            bare_m = med[f"bare_p{procs}_c{c}"]
            row: dict[str, Any] = {"processes": procs, "connections": c, "bare_redis_get": bare_m}
            for kind in ("cache", "redis"):
                m = med[f"{kind}_p{procs}_c{c}"]
                row[kind] = m | {"rps_vs_bare": round(m["rps"] / bare_m["rps"], 3)}
            table.append(row)
    ev = {k: median(v) for k, v in events_rows.items()}
    figures = {
        "params": {
            "data": (
                f"ratings log {ratings} with {movies}: lists of its users from the earliest"
                f" {SEED_SHARE:.0%}, bursts of its later ratings"
                if ratings is not None
                else "the project's generated sample catalogue, 3 likes per user, click bursts"
            ),
            "seconds": seconds,
            "repeats": repeats,
            "users": users,
            "connections": connections,
            "processes": processes,
            "burst_events": burst,
            "paced_share_of_bare_redis": paced_share,
            "http_client": "wrk (closed loop; paced rounds: Lua delay per connection)",
            "redis_client": "redis-benchmark GET of the same records, same connections",
            "server": "nearline serve: httptools on uvloop, pre-forked processes, SO_REUSEPORT",
            "light_reads_rps": LIGHT_READS,
            "commit": _commit(),
        },
        "loadavg_before": load_before,
        "loadavg_after": _loadavg(),
        "stacks_cached_128": stacks,
        "closed_loop": table,
        "paced_128": paced,
        "targets_128": targets_met(paced),
        "worker_events_per_s": ev
        | {
            "ratio_with_reads": median(pair_ratios["with_reads"]),
            "ratio_with_light_reads": median(pair_ratios["with_light_reads"]),
            "ratio_with_reads_serve_idle": median(pair_ratios["with_reads_serve_idle"]),
            "ratio_with_reads_serve_pinned": median(pair_ratios["with_reads_serve_pinned"]),
            "ratio_with_reads_serve_idle_pinned": median(
                pair_ratios["with_reads_serve_idle_pinned"]
            ),
            "ratio_with_idle_busy_loops": median(pair_ratios["with_idle_busy_loops"]),
            "ratio_with_reads_cores_split": median(pair_ratios[SPLIT]),
            # what confining the worker costs it without reads (its bursts then, to the others)
            "ratio_worker_confined_without_reads": round(
                median(events_rows["without_reads_worker_confined"])
                / median(events_rows["without_reads"]),
                3,
            ),
            "serve_cpu": SERVE_CPU,
            "worker_cpus": WORKER_CPUS,
            "read_rps_during": {c: median(v) for c, v in read_rates.items()},
        },
        "worker_events_rounds": events_rows,
        "worker_ratio_pairs": pair_ratios,
        "serve_counters": serve_counters,
        "profile_128_one_process": profiles,
        "staleness_ms": staleness,
        "rounds": rows,
        "worker_counters": worker_tail.get("counters", {}),
    }
    write_result(out_dir, "serve", figures)
    (out_dir / "serve-table.md").write_text(markdown_table(figures))
    plot(out_dir / "serve.png", table, processes, connections)
    return figures
