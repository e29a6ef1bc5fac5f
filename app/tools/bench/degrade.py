"""Burst benchmark: lag, mode and throughput over time, with and without degradation."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import click

from nearline_rec.tools.bench import median, write_result
from nearline_rec.tools.localrun import (
    WorkerProcess,
    isolated_env,
    settings_for,
    start_services,
    stop_services,
)


def _burst_events(items: list[str], n_users: int, n_events: int) -> list[Any]:
    from nearline_rec.core.events import UserEvent

    # Zipf-ish user activity: a few heavy users, a long tail, sessions of 5 events
    out = []
    for j in range(n_events):
        u = (j // 5 * 7919) % n_users if j % 2 else (j // 5) % max(n_users // 10, 1)
        item = items[(j * 31 + u * 17) % len(items)]
        out.append(
            UserEvent(
                f"bench-{j}",
                f"user-{u}",
                item,
                "rating" if j % 4 == 0 else "click",
                1.7e9 + j,
                rating=4.5 if j % 4 == 0 else None,
            )
        )
    return out


def _one_run(
    label: str, mode: str, sample: Any, items: list[str], args: dict[str, Any], work: Path
) -> dict[str, Any]:
    from nearline_rec.kafka_clients import ensure_topics
    from nearline_rec.producer import item_updates_from_files, produce_events, publish_items

    env = isolated_env(
        f"bench-{label}-{int(time.time())}",
        NEARLINE_DEGRADE__MODE=mode,
        NEARLINE_DEGRADE__LAG_HIGH=str(args["lag_high"]),
        NEARLINE_DEGRADE__LAG_LOW=str(args["lag_low"]),
        NEARLINE_DEGRADE__HOLD_SECONDS=str(args["hold"]),
        NEARLINE_DEGRADE__CHECK_INTERVAL="0.25",
        NEARLINE_DEGRADE__REFRESH_SECONDS="1",
        NEARLINE_WORKER__BATCH_SIZE="500",
    )
    s = settings_for(env)
    ensure_topics(s)
    updates, _ = item_updates_from_files(
        sample.movies_path, sample.embeddings_path, dim=s.items.embedding_dim
    )
    publish_items(s, updates)
    worker = WorkerProcess(env, work, name=label, loglevel="warning").start()
    try:
        worker.wait_ready(timeout=180)
        warm = _burst_events(items, 200, 500)
        warm = [
            e.__class__(f"warm-{e.event_id}", e.user_id, e.item_id, e.type, e.timestamp, e.rating)
            for e in warm
        ]
        produce_events(s, warm)
        worker.wait_events(len(warm))
        time.sleep(1.5)
        burst = _burst_events(items, args["users"], args["events"])
        total = len(warm) + len(burst)
        t0 = time.monotonic()
        produce_events(s, burst)
        produced_s = time.monotonic() - t0
        samples: list[dict[str, Any]] = []
        drained_at = settled_at = None
        deadline = t0 + args["timeout"]
        while time.monotonic() < deadline:
            st = worker.status()
            now = time.monotonic() - t0
            if st:
                c = st["counters"]
                samples.append(
                    {
                        "t": round(now, 2),
                        "lag": st["lag"],
                        "mode": st["mode"],
                        "events": c.get("events_in", 0) - len(warm),
                        "dirty": st["dirty_users"],
                        "degraded_lists": c.get("lists_degraded", 0),
                    }
                )
                if drained_at is None and c.get("events_in", 0) >= total:
                    drained_at = now
                if drained_at is not None and st["dirty_users"] == 0 and st["mode"] == "normal":
                    settled_at = now
                    break
            time.sleep(0.25)
        final = worker.status() or {}
    finally:
        worker.stop()
    for prev, cur in zip(samples, samples[1:], strict=False):
        dt = cur["t"] - prev["t"]
        cur["eps"] = round((cur["events"] - prev["events"]) / dt, 1) if dt > 0 else 0.0
    if samples:
        samples[0]["eps"] = 0.0
    by_mode = {
        m: [x["eps"] for x in samples if x["mode"] == m and x["eps"] > 0]
        for m in ("normal", "degraded")
    }
    return {
        "label": label,
        "mode_setting": mode,
        "events": len(burst),
        "produce_seconds": round(produced_s, 2),
        "drain_seconds": None if drained_at is None else round(drained_at, 2),
        "settled_seconds": None if settled_at is None else round(settled_at, 2),
        "max_lag": max((x["lag"] for x in samples), default=0),
        "seconds_degraded": round(sum(0.25 for x in samples if x["mode"] == "degraded"), 2),
        "median_eps_normal": median(by_mode["normal"]),
        "median_eps_degraded": median(by_mode["degraded"]),
        "degraded_lists": final.get("counters", {}).get("lists_degraded", 0),
        "dirty_recomputed": final.get("counters", {}).get("dirty_recomputed", 0),
        "transitions": final.get("transitions", []),
        "samples": samples,
    }


def _plot(path: Path, runs: list[dict[str, Any]], args: dict[str, Any]) -> None:
    from nearline_rec.extras import pyplot

    plt = pyplot()

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    colors = {"auto": "tab:blue", "baseline": "tab:gray"}
    for run in runs:
        t = [x["t"] for x in run["samples"]]
        c = colors.get(run["label"], None)
        name = "with degradation" if run["label"] == "auto" else "never degrade (baseline)"
        ax1.plot(t, [x["lag"] for x in run["samples"]], label=name, color=c)
        ax2.plot(t, [x.get("eps", 0) for x in run["samples"]], label=name, color=c)
        if run["label"] == "auto":
            for x, nxt in zip(run["samples"], run["samples"][1:], strict=False):
                if x["mode"] == "degraded":
                    for ax in (ax1, ax2):
                        ax.axvspan(x["t"], nxt["t"], color="tab:orange", alpha=0.15, lw=0)
    for y, name in ((args["lag_high"], "high"), (args["lag_low"], "low")):
        ax1.axhline(y, ls="--", color="tab:red", lw=0.8)
        ax1.text(0, y, f" {name} {y}", color="tab:red", va="bottom", fontsize=8)
    ax1.set_ylabel("consumer lag (events)")
    ax1.legend(loc="upper right")
    ax1.set_title(
        f"burst of {args['events']} events over {args['users']} users (orange: degraded mode)"
    )
    ax2.set_ylabel("events/s consumed")
    ax2.set_xlabel("seconds since the burst started")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(
    out_dir: Path,
    *,
    events: int,
    users: int,
    lag_high: int,
    lag_low: int,
    hold: float,
    timeout: float,
) -> dict[str, Any]:
    from nearline_rec.data.sample import generate_sample

    args = {
        "events": events,
        "users": users,
        "lag_high": lag_high,
        "lag_low": lag_low,
        "hold": hold,
        "timeout": timeout,
    }
    started = start_services(lambda m: click.echo(m, err=True))
    try:
        work = Path(tempfile.mkdtemp(prefix="nearline-bench-"))
        sample = generate_sample(work / "sample", n_items=2000, n_users=400, n_ratings=4000)
        import json

        truth = json.loads(sample.truth_path.read_text())
        items = sorted(truth["items"], key=lambda i: truth["items"][i]["popularity_rank"])
        runs = []
        for label, mode in (("baseline", "normal"), ("auto", "auto")):
            click.echo(f"run {label}: {events} events ...", err=True)
            runs.append(_one_run(label, mode, sample, items, args, work))
    finally:
        stop_services(started)
    base, auto = runs
    figures = {
        "params": args,
        "runs": runs,
        "summary": {
            "drain_seconds": {"auto": auto["drain_seconds"], "baseline": base["drain_seconds"]},
            "drain_ratio_auto_vs_baseline": (
                round(auto["drain_seconds"] / base["drain_seconds"], 3)
                if auto["drain_seconds"] and base["drain_seconds"]
                else None
            ),
            "eps_degraded_vs_normal": (
                round(auto["median_eps_degraded"] / base["median_eps_normal"], 2)
                if base["median_eps_normal"]
                else None
            ),
            "max_lag": {"auto": auto["max_lag"], "baseline": base["max_lag"]},
            "seconds_degraded": auto["seconds_degraded"],
            "settled_seconds": auto["settled_seconds"],
        },
    }
    write_result(out_dir, "degrade", figures)
    _plot(out_dir / "degrade.png", runs, args)
    return figures
