"""`nearline bench replay`: the worker end to end on a real ratings log (a MovieLens release,
or any file `nearline evaluate` reads) instead of the pipeline benchmark's generated workload.

The catalog is the file's movies with item vectors trained on the earliest 80% of the ratings
(as `nearline evaluate` trains them) or read from --embeddings; the events are the ratings in
time order, as `nearline evaluate` replays them. The first 80% go on the topic as a backlog one
worker process drains (events/s and lists/s between 10% and 90% of it); the rest is produced at
half that rate and freshness is read from the lists' records, as in `nearline bench pipeline`.
With --model, the built-in linear ranker and the learned one run in alternating rounds, each on
its own topics. Baseline in the same run: a bare consumer of the same topic.

A real log has its own shape: in time order a user's ratings come in sessions, so a micro-batch
holds fewer distinct users than the generated workload's and the worker makes fewer lists per
event. The report gives lists/s and lists per event beside events/s for that reason.
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
from nearline_rec.tools.bench.pipeline_phases import (
    bare_consume,
    cleanup_run,
    drain_and_freshness,
    produce_timed,
    run_env,
)
from nearline_rec.tools.localrun import (
    isolated_env,
    settings_for,
    start_services,
    stop_services,
)

Log = Callable[[str], None]

BACKLOG_SHARE = 0.8
"""The earliest share of the events: the backlog one worker drains."""


def run(
    out_dir: Path,
    *,
    ratings: Path,
    movies: Path,
    embeddings: Path | None,
    model: Path | None,
    rounds: int,
    dim: int,
    batch_size: int,
    partitions: int,
    paced_seconds: float,
    timeout: float,
    log: Log = print,
) -> dict[str, Any]:
    from nearline_rec.kafka_clients import ensure_topics
    from nearline_rec.producer import publish_items
    from nearline_rec.tools.quality.evaluate import EvalConfig, prepare

    if model is not None:
        from nearline_rec.ranking import load_onnx

        load_onnx(model)  # a bad file: its one-line error now, not after the first phases
    base = run_env(f"bench-replay-{int(time.time())}", dim, batch_size, partitions)
    log(f"reading {ratings} and {movies} ...")
    prepared = prepare(settings_for(base), ratings, movies, embeddings, EvalConfig(ablation=False))
    evs = prepared.events
    n_backlog = int(len(evs) * BACKLOG_SHARE)
    backlog, rest = evs[:n_backlog], evs[n_backlog:]
    variants = ("linear", "learned") if model is not None else ("linear",)
    figures: dict[str, Any] = {
        "params": {
            "ratings": str(ratings),
            "movies": str(movies),
            "embeddings": str(embeddings) if embeddings else None,
            "model": str(model) if model else None,
            "rounds": rounds,
            "dim": dim,
            "batch_size": batch_size,
            "partitions": partitions,
            "paced_seconds": paced_seconds,
            "backlog_share": BACKLOG_SHARE,
        },
        "data": {
            "events": len(evs),
            "users": len({e.user_id for e in evs}),
            "items": len(prepared.updates),
            "items_with_vector": sum(1 for u in prepared.updates if u.embedding is not None),
            "backlog_events": n_backlog,
            "embeddings": prepared.embeddings,
        },
        "load_average_start": list(os.getloadavg()),
    }
    started = start_services(log)
    work = Path(tempfile.mkdtemp(prefix="nearline-bench-replay-"))
    cleanup: list[Any] = []
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    t_start = time.perf_counter()
    try:
        for r in range(rounds):
            for v in variants if r % 2 == 0 else tuple(reversed(variants)):
                log(f"ranker {v}, round {r + 1}/{rounds}")
                app_id = f"{base['NEARLINE_WORKER__APP_ID']}-{v[:3]}{r}"
                env = {**base, **isolated_env(app_id)}
                if v == "learned":
                    env["NEARLINE_RANKING__MODEL_PATH"] = str(model)
                s = settings_for(env)
                cleanup.append(s)
                ensure_topics(s)
                publish_items(s, prepared.updates)
                produce_timed(s, backlog)
                if "bare_consumer" not in figures:
                    bare = [
                        asyncio.run(bare_consume(s, f"{app_id}-bare-{i}", n_backlog, timeout))
                        for i in range(3)
                    ]
                    figures["bare_consumer"] = {
                        "events_per_s": round(median(bare), 1),
                        "runs": [round(b, 1) for b in bare],
                    }
                    log(f"  bare consumer: {figures['bare_consumer']['events_per_s']} events/s")
                phase = drain_and_freshness(
                    env,
                    s,
                    backlog,
                    lambda rate: rest[: max(1, int(rate * paced_seconds))],
                    paced_seconds,
                    timeout,
                    work,
                    log,
                    f"{v}{r}",
                )
                phase["round"] = r
                runs[v].append(phase)
    finally:
        try:
            cleanup_run(cleanup, log)
        finally:
            stop_services(started)
    figures["runs"] = runs
    figures["load_average_end"] = list(os.getloadavg())
    figures["summary"] = summarize(figures)
    figures["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    write_result(out_dir, "replay", figures)
    plot(out_dir / "replay.png", figures)
    return figures


def summarize(f: dict[str, Any]) -> dict[str, Any]:
    """Per ranker: medians over its rounds; with both, learned / linear."""
    out: dict[str, Any] = {"data": f["data"], "bare_consumer_events_per_s": None}
    if "bare_consumer" in f:
        out["bare_consumer_events_per_s"] = f["bare_consumer"]["events_per_s"]
    for v, phases in f["runs"].items():
        eps = [p["drain"]["events_per_s"] for p in phases if p["drain"]["events_per_s"]]
        lps = [p["drain"]["lists_per_s"] for p in phases if p["drain"]["lists_per_s"]]
        p99 = [p["freshness"]["p99_s"] for p in phases]
        out[v] = {
            "events_per_s": median(eps) if eps else None,
            "events_per_s_runs": eps,
            "lists_per_s": median(lps) if lps else None,
            "lists_per_event": median(
                [p["drain"]["lists_per_event"] for p in phases if p["drain"]["events_per_s"]]
            )
            if eps
            else None,
            "freshness_p99_s": median(p99) if p99 else None,
            "freshness_p99_runs": p99,
        }
    lin, lrn = out.get("linear", {}), out.get("learned", {})
    if lin.get("events_per_s") and lrn.get("events_per_s"):
        out["ratio_learned_to_linear"] = round(lrn["events_per_s"] / lin["events_per_s"], 3)
    return out


def plot(path: Path, f: dict[str, Any]) -> None:
    from nearline_rec.extras import pyplot

    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for v, phases in f["runs"].items():
        for p in phases:
            samples = [s for s in p["drain"]["samples"] if "eps" in s]
            ax1.plot(
                [s["t"] for s in samples],
                [s["eps"] for s in samples],
                label=f"{v} round {p['round'] + 1}",
            )
            lat = sorted(p["freshness"]["latencies_sample"])
            if lat:
                ax2.plot(lat, [(i + 1) / len(lat) for i in range(len(lat))], label=v)
    ax1.set(xlabel="seconds", ylabel="events/s (0.5 s intervals)", title="drain of the backlog")
    ax2.set(xlabel="event to list (s)", ylabel="share of events", title="freshness at half rate")
    for ax in (ax1, ax2):
        ax.legend(fontsize=7)
    data = f["data"]
    fig.suptitle(
        f"{Path(f['params']['ratings']).parent.name}: {data['events']:,} ratings, "
        f"{data['users']:,} users, {data['items']:,} items",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
