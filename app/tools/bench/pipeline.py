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
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nearline_rec.tools.bench import median, write_result
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

from nearline_rec.tools.bench.pipeline_phases import (  # noqa: E402
    bare_consume,
    cleanup_run,
    drain_workers,
    produce_timed,
    run_env,
    worker_phase,
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
    env1 = run_env(run1, dim, batch_size, partitions)
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
        produce_timed(s1, backlog)
        log(f"  produced a backlog of {n_events:,} events in {time.perf_counter() - t:.1f}s")

        bare = [
            asyncio.run(bare_consume(s1, f"{run1}-bare-{i}", n_events, timeout)) for i in range(3)
        ]
        figures["bare_consumer"] = {
            "events_per_s": round(median(bare), 1),
            "runs": [round(b, 1) for b in bare],
            "what": "aiokafka consumer, reads and json-decodes the same topic, commits per batch",
        }
        log(f"  bare consumer: {figures['bare_consumer']['events_per_s']} events/s")

        # 1. One worker process drains the backlog: the maximum sustained rate.
        # 2. Freshness at half that rate, with new items arriving.
        one = worker_phase(
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
                    d = drain_workers(workers, total, timeout, log)
                finally:
                    for w in workers:
                        w.stop()
                d["processes"] = n_proc
                figures["scale"]["runs"].append(d)
                log(f"  {n_proc} process(es): {d['events_per_s']} events/s")
    finally:
        try:
            cleanup_run(cleanup, log)
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
            produce_timed(s_v, backlog)
            phase = worker_phase(
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
