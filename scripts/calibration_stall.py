"""How late the worker's event loop wakes while the LSH index calibrates in the background:
the calibration in a child process (`NEARLINE_LSH__CALIBRATION_IN=process`) against on a
thread of the worker (`thread`), in one run, alternated, on the same catalogue and load.

An asyncio loop holds an `ItemCatalog` (the integration test's shapes: many small clusters
plus a few large ones) and does the worker's kind of loop work meanwhile: `--rate` taste
queries a second through the catalogue (the embedding channel) and item updates (moved
vectors, replayed at the swap). The worker's `CalibrationRunner` calibrates it, and its probe
(a 20 ms sleep, how late each wake-up is) gives the worst and p99 lateness during each
calibration and in as long a time just before it (the baseline). Each mode first calibrates
once unrecorded (numba's compiled kernels loaded, the process started), as the worker's start
calibration does; then `--repeats` rounds, the order of the modes rotated each round, with a
pause as long as the last calibration between them. Figures are medians over the rounds, and
ratios process / thread; the JSON keeps every round and the load average.

    python scripts/calibration_stall.py --items 21600 --dim 32 --queries 100 --budget 4 \\
        --repeats 5 --out scripts/results/calibration-stall.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from nearline_rec.blas import limit_blas_threads
from nearline_rec.calibration import CalibrationRunner
from nearline_rec.core.catalog import IndexConfig, ItemCatalog
from nearline_rec.core.events import ItemUpdate
from nearline_rec.core.lsh_tune import clustered_vectors, mixture_vectors
from nearline_rec.settings import LSHSettings

MODES = ("thread", "process")


def catalogue(n: int, dim: int, seed: int) -> np.ndarray:
    """Two thirds many ~50-point clusters, a third 6 large clusters (the integration test's
    catalogue changing shape)."""
    small = clustered_vectors(n - n // 3, dim, seed=seed)
    large = mixture_vectors(n // 3, dim, n_clusters=6, seed=seed + 1)
    return np.vstack([small, large]).astype(np.float32)


async def loop_work(
    cat: ItemCatalog, x: np.ndarray, rate: float, updates: int, done: list[int]
) -> None:
    """`rate` times a second: a taste query (mean of 3 items) of 100 through the catalogue,
    and `updates` items moved a little (their own vector plus noise: the catalogue keeps its
    shape)."""
    rng = np.random.default_rng(7)
    ids = [f"i{i}" for i in range(len(x))]
    while True:
        rows = rng.integers(0, len(x), 3)
        cat.search(x[rows].mean(axis=0), 100)
        moved = rng.integers(0, len(x), updates)
        noise = 0.02 * rng.standard_normal((updates, x.shape[1]))
        cat.upsert_many(
            ItemUpdate(ids[i], "upsert", x[i] + d) for i, d in zip(moved, noise, strict=True)
        )
        done[0] += 1
        await asyncio.sleep(1 / rate)


def _loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


async def run(a: argparse.Namespace) -> dict[str, Any]:
    x = catalogue(a.items, a.dim, a.seed)
    cat = ItemCatalog(a.dim, IndexConfig(exact_below=1000))
    cat.upsert_many(ItemUpdate(f"i{i}", "upsert", v) for i, v in enumerate(x))
    cat.reindex()
    base = LSHSettings(
        exact_below=1000,
        calibration_queries=a.queries,
        calibration_budget_seconds=a.budget,
        recalibrate_share=1e9,  # the script starts every calibration
    )
    done = [0]
    runner = CalibrationRunner(cat, base, events_done=lambda: done[0])
    work = asyncio.ensure_future(loop_work(cat, x, a.rate, a.updates, done))
    rounds: list[dict[str, Any]] = []
    try:
        for mode in a.modes:  # unrecorded: compile/load the kernels, start the process
            runner.settings = base.model_copy(update={"calibration_in": mode})
            print(f"warm-up {mode} ...", flush=True)
            await runner.run("start")
        longest = 2.0
        for r in range(a.repeats):
            order = a.modes if r % 2 == 0 else a.modes[::-1]
            for mode in order:
                # a "before" window free of calibrations and of the last one's install
                await asyncio.sleep(1.5 * longest + 1.0)
                runner.settings = base.model_copy(update={"calibration_in": mode})
                load = _loadavg()
                t = time.perf_counter()
                cal = await runner.run("changed")
                wall = time.perf_counter() - t
                longest = max(longest, wall)
                row = {
                    "round": r,
                    "mode": mode,
                    "wall_s": round(wall, 3),
                    "calibration_s": round(cal.seconds, 3) if cal else None,
                    "index": None if cal is None else ("exact" if cal.exact else "lsh"),
                    "recall": None if cal is None else round(cal.recall, 4),
                    "stall_max_ms": round(1000 * runner.loop_stall_max_s, 1),
                    "stall_p99_ms": round(1000 * runner.loop_stall_p99_s, 1),
                    "before_max_ms": round(1000 * runner.loop_stall_before_max_s, 1),
                    "before_p99_ms": round(1000 * runner.loop_stall_before_p99_s, 1),
                    "loop_work_during": runner.events_during,
                    "install_ms": round(1000 * runner.install_s, 1),
                    "replayed": runner.replayed,
                    "loadavg_before": load,
                }
                rounds.append(row)
                print(json.dumps(row), flush=True)
    finally:
        work.cancel()
        runner.close()

    def med(mode: str, key: str) -> float:
        return float(statistics.median(r[key] for r in rounds if r["mode"] == mode))

    keys = (
        "stall_max_ms",
        "stall_p99_ms",
        "before_max_ms",
        "before_p99_ms",
        "wall_s",
        "install_ms",
    )
    summary: dict[str, Any] = {m: {k: med(m, k) for k in keys} for m in a.modes}
    summary["loop_work_per_s"] = {
        m: round(
            statistics.median(
                r["loop_work_during"] / r["wall_s"] for r in rounds if r["mode"] == m
            ),
            1,
        )
        for m in a.modes
    }
    if set(a.modes) == set(MODES):
        summary["process_vs_thread"] = {
            k: round(summary["process"][k] / max(summary["thread"][k], 1e-9), 3) for k in keys
        }
    return {
        "benchmark": "calibration-stall",
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "params": vars(a) | {"out": str(a.out), "modes": list(a.modes)},
        "cpus": os.cpu_count(),
        "loadavg_end": _loadavg(),
        "summary": summary,
        "rounds": rounds,
    }


def replay_ab(a: argparse.Namespace) -> dict[str, Any]:
    """The swap's replay on the event loop, as `ItemCatalog.install_calibration` does it (one
    vectorised upsert of the changed keys) against one upsert a key (how it did it before),
    on copies of the same calibrated index, alternated, `--repeats` times per count."""
    import copy

    x = catalogue(a.items, a.dim, a.seed)
    cat = ItemCatalog(a.dim, IndexConfig(exact_below=1000))
    cat.upsert_many(ItemUpdate(f"i{i}", "upsert", v) for i, v in enumerate(x))
    cat.reindex()
    index = cat._lsh
    assert index is not None
    rng = np.random.default_rng(3)
    out: dict[str, Any] = {"loadavg_before": _loadavg(), "counts": {}}
    for count in a.replay_keys:
        keys = np.sort(rng.choice(len(x), count, replace=False)).astype(np.int64)
        moved = x[keys] + 0.02 * rng.standard_normal((count, a.dim)).astype(np.float32)
        moved /= np.linalg.norm(moved, axis=1, keepdims=True)
        times: dict[str, list[float]] = {"per_key_ms": [], "batched_ms": []}
        for r in range(a.repeats):
            for way in ("per_key_ms", "batched_ms") if r % 2 == 0 else ("batched_ms", "per_key_ms"):
                target = copy.deepcopy(index)
                t = time.perf_counter()
                if way == "per_key_ms":
                    for key, v in zip(keys.tolist(), moved, strict=True):
                        target.upsert(key, v)
                else:
                    target.upsert_many(keys, moved)
                times[way].append(1000 * (time.perf_counter() - t))
        med = {k: round(statistics.median(v), 2) for k, v in times.items()}
        med["batched_vs_per_key"] = round(med["batched_ms"] / med["per_key_ms"], 4)
        out["counts"][str(count)] = med | {"rounds": times}
        print(count, med, flush=True)
    out["loadavg_after"] = _loadavg()
    return out


def markdown(paths: list[Path]) -> str:
    """The docs' table rows (docs/lsh-calibration.md) from result files of this script."""
    rows = []
    for path in paths:
        d = json.loads(path.read_text())
        p, summary = d["params"], d["summary"]
        label = (
            f"{p['items']:,} x {p['dim']} ({p['queries']}, {p['budget']:g} s), "
            f"{p['repeats']} rounds"
        )
        loads = [r["loadavg_before"][0] for r in d["rounds"]]
        work = summary["loop_work_per_s"]
        for m in MODES:
            s = summary[m]
            rows.append(
                f"| {label} | {m} | {s['stall_max_ms']:.1f} ms | {s['stall_p99_ms']:.1f} ms "
                f"| {s['before_max_ms']:.1f} / {s['before_p99_ms']:.1f} ms "
                f"| {s['install_ms']:.1f} ms | {s['wall_s']:.2f} s | {work[m]:.1f}/s "
                f"| {min(loads):.1f}-{max(loads):.1f} |"
            )
        r = summary["process_vs_thread"]
        rows.append(
            f"| {label} | process / thread | {r['stall_max_ms']:.2f}x | {r['stall_p99_ms']:.2f}x "
            f"| {r['before_max_ms']:.2f}x / {r['before_p99_ms']:.2f}x | | {r['wall_s']:.2f}x "
            f"| {work['process'] / work['thread']:.2f}x | |"
        )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--items", type=int, default=21_600)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--budget", type=float, default=4.0)
    ap.add_argument("--rate", type=float, default=80.0, help="loop work units a second")
    ap.add_argument("--updates", type=int, default=2, help="items moved per work unit")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--modes", type=lambda s: tuple(s.split(",")), default=MODES)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--replay-keys",
        type=lambda s: [int(v) for v in s.split(",")],
        default=None,
        help="only time the swap's replay of this many changed keys (e.g. 1000,4000)",
    )
    ap.add_argument("--markdown", type=Path, nargs="*", help="print the docs' rows of these")
    a = ap.parse_args()
    if a.markdown:
        print(markdown(a.markdown))
        return
    limit_blas_threads(1)  # as the worker
    if a.replay_keys:
        out = {
            "benchmark": "calibration-replay",
            "measured_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "params": vars(a) | {"out": str(a.out), "modes": list(a.modes)},
            "replay": replay_ab(a),
        }
        if a.out is not None:
            a.out.write_text(json.dumps(out, indent=1) + "\n")
            print(f"wrote {a.out}")
        return
    out = asyncio.run(run(a))
    print(json.dumps(out["summary"], indent=1))
    if a.out is not None:
        a.out.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
