"""ANN benchmark: the LSH index against exact numpy brute force and hnswlib, in one run.

Workload: `lsh_tune.clustered_vectors` (Gaussian mixture, n/50 clusters, L2-normalised, seeded);
queries are extra points of the same mixture, not in the index. Truth = exact top-10 by inner
product. Every speed is a median over passes; single-query figures run one query at a time.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from nearline_rec.core.lsh import LSHIndex, LSHParams, default_params
from nearline_rec.core.lsh_tune import recall_at_k
from nearline_rec.tools.bench import median, write_result
from nearline_rec.tools.bench.lsh_hnsw import hnsw_runs, vs_hnsw
from nearline_rec.tools.bench.lsh_measure import (
    K,
    exact_batch,
    exact_single,
    measure_single,
    query_latencies,
    rss_bytes,
    timed_passes,
    workload,
)


def lsh_settings(n: int, dim: int) -> list[tuple[str, LSHParams]]:
    """The measured default for this size and a few neighbours of it (fewer/more probes,
    a candidate cap), so the plot shows the recall/speed trade-off of the knobs."""
    base = default_params(n, dim)
    out = [("default", base)]
    for probes in sorted({max(0, base.probes // 2), min(2 * base.m, base.probes * 2)}):
        if probes != base.probes:
            out.append((f"probes={probes}", _with(base, probes=probes)))
    if base.sketch_keep:
        out.append(("no sketch", _with(base, sketch_keep=0)))
    out.append(("cap=2000", _with(base, max_candidates=2000)))
    return out


def _with(p: LSHParams, **changes: Any) -> LSHParams:
    fields = {
        "dim": p.dim,
        "w": p.w,
        "m": p.m,
        "L": p.L,
        "probes": p.probes,
        "combine": p.combine,
        "vote_threshold": p.vote_threshold,
        "max_candidates": p.max_candidates,
        "sketch_keep": p.sketch_keep,
        "seed": p.seed,
    }
    fields.update(changes)
    return LSHParams(**fields)


def _describe(p: LSHParams) -> dict[str, Any]:
    return {
        "w": p.w,
        "m": p.m,
        "L": p.L,
        "probes": p.probes,
        "combine": p.combine,
        "max_candidates": p.max_candidates,
        "sketch_keep": p.sketch_keep,
    }


def bench_updates(
    index: LSHIndex,
    x: np.ndarray,
    n_ops: int,
    seed: int = 5,
    queries: np.ndarray | None = None,
    query_params: LSHParams | None = None,
) -> dict[str, float]:
    """Streaming updates, one call per item: insert new keys, move existing ones to a new
    vector (another point of the mixture), delete. Leaves the index as it was (moved vectors
    are moved back). With `queries` and `query_params` (the setting to query with; the index
    may be a build with other query-time fields), also queries/s one at a time while the
    inserted and moved rows are still in the delta (as between merges in a worker that follows
    updates)."""
    rng = np.random.default_rng(seed)
    n, dim = x.shape
    fresh = x[rng.integers(0, n, n_ops)] + 0.3 * rng.standard_normal((n_ops, dim)).astype(
        np.float32
    ) / np.sqrt(dim)
    fresh /= np.linalg.norm(fresh, axis=1, keepdims=True)
    new_keys = (np.arange(n_ops) + 10 * n + 1_000_000).tolist()
    moved = rng.choice(n, size=n_ops, replace=False).tolist()
    targets = x[rng.integers(0, n, n_ops)]

    t = time.perf_counter()
    for key, v in zip(new_keys, fresh, strict=True):
        index.upsert(key, v)
    insert_s = time.perf_counter() - t
    t = time.perf_counter()
    for key, v in zip(moved, targets, strict=True):
        index.upsert(key, v)
    move_s = time.perf_counter() - t
    with_delta: dict[str, float] = {}
    if queries is not None and query_params is not None:
        view = index._query_view(query_params)  # now: a view sees the delta as it is
        total_s, _ = query_latencies(lambda q: view.search(q, K), queries)
        with_delta = {
            "delta_rows": index.delta_rows(),
            "qps_with_delta": round(len(queries) / total_s, 1),
        }
    t = time.perf_counter()
    for key in new_keys:
        index.remove(key)
    delete_s = time.perf_counter() - t
    # Moves in batches of 500, as the item follower applies a Kafka fetch in one call.
    moved_arr = np.asarray(moved)
    t = time.perf_counter()
    for start in range(0, n_ops, 500):
        index.upsert_many(moved_arr[start : start + 500], x[moved_arr[start : start + 500]])
    move_batch_s = time.perf_counter() - t  # (this also restores the moved vectors)
    # Updates fold the delta into the sorted arrays once it holds merge_rows() rows: time one
    # such merge and charge it to the rows that trigger it.
    t = time.perf_counter()
    index.compact()
    merge_s = time.perf_counter() - t
    per_row = merge_s / index.merge_rows()
    return {
        "ops": n_ops,
        "insert_per_s": round(n_ops / insert_s, 1),
        "move_per_s": round(n_ops / move_s, 1),
        "move_batched_per_s": round(n_ops / move_batch_s, 1),
        "delete_per_s": round(n_ops / delete_s, 1),
        "batch": 500,
        "merge_s": round(merge_s, 3),
        "merge_rows": index.merge_rows(),
        "move_per_s_amortised": round(1 / (move_s / n_ops + per_row), 1),
        "move_batched_per_s_amortised": round(1 / (move_batch_s / n_ops + per_row), 1),
        **with_delta,
    }


def bench_size(
    n: int,
    dim: int,
    *,
    n_queries: int,
    passes: int,
    update_ops: int,
    hnsw: bool,
    hnsw_efs: list[int],
    ef_construction: int,
    budget_s: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    log(f"  N={n:,} d={dim}: data ...")
    x, qs = workload(n, dim, n_queries)
    raw = x.nbytes

    # Exact numpy brute force: the truth and the floor.
    t = time.perf_counter()
    truth = exact_batch(x, qs)
    exact_batch_s = [time.perf_counter() - t]
    exact_batch_s += timed_passes(lambda: exact_batch(x, qs), passes - 1, budget_s)
    n_single = min(len(qs), 200)
    exact = {
        **measure_single(lambda q: exact_single(x, q), qs[:n_single], passes, budget_s),
        "batch_qps": round(len(qs) / median(exact_batch_s), 1),
        "recall": 1.0,
        "memory_beyond_vectors": 0,
    }
    log(f"    exact: qps {exact['qps']} batched {exact['batch_qps']}")

    lsh_points = []
    builds: dict[tuple[Any, ...], LSHIndex] = {}
    first_params: dict[tuple[Any, ...], LSHParams] = {}  # query setting for the update pass
    build_info: dict[tuple[Any, ...], dict[str, Any]] = {}
    keys = np.arange(n, dtype=np.int64)
    for label, params in lsh_settings(n, dim):
        if params.structure not in builds:
            for structure, old in builds.items():  # one build held at a time
                build_info[structure]["updates"] = bench_updates(
                    old, x, update_ops, queries=qs, query_params=first_params[structure]
                )
            builds.clear()
            gc.collect()
            rss0 = rss_bytes()
            t = time.perf_counter()
            base = LSHIndex(_with(params, probes=0, max_candidates=0, combine="or"))
            base.upsert_many(keys, x)
            build_s = time.perf_counter() - t
            gc.collect()
            builds[params.structure] = base
            first_params[params.structure] = params
            build_info[params.structure] = {
                "build_s": round(build_s, 2),
                "memory_bytes": base.memory_bytes(),
                "rss_bytes": rss_bytes() - rss0,
            }
        index = builds[params.structure]._query_view(params)
        found = [index.search(q, K)[0] for q in qs]
        cands = [index.candidates(q).size for q in qs[:100]]
        single = measure_single(lambda q, ix=index: ix.search(q, K), qs, passes, budget_s)
        batch_t = timed_passes(lambda ix=index: ix.search_batch(qs, K), passes, budget_s)
        info = build_info[params.structure]
        point = {
            "label": label,
            "params": _describe(params),
            "recall": round(recall_at_k(found, truth, K), 4),
            "mean_candidates": round(float(np.mean(cands)), 1),
            **single,
            "batch_qps": round(len(qs) / median(batch_t), 1),
            "vs_exact_qps": round(single["qps"] / exact["qps"], 2),
            "build_s": info["build_s"],
            "memory_bytes": info["memory_bytes"],
            "memory_vs_raw": round(info["memory_bytes"] / raw, 3),
            "rss_bytes": info["rss_bytes"],
        }
        lsh_points.append(point)
        log(
            f"    lsh {label}: recall {point['recall']} qps {point['qps']} "
            f"(x{point['vs_exact_qps']} exact) cands {point['mean_candidates']} "
            f"mem x{point['memory_vs_raw']} raw"
        )
    # Updates last, on each build: the queries above ran on a freshly built index.
    for structure, index in builds.items():
        build_info[structure]["updates"] = bench_updates(
            index, x, update_ops, queries=qs, query_params=first_params[structure]
        )
    for p, (_, params) in zip(lsh_points, lsh_settings(n, dim), strict=True):
        p["updates"] = build_info[params.structure]["updates"]
    log(f"    lsh updates: {lsh_points[0]['updates']}")
    builds.clear()
    gc.collect()

    hnsw_out: dict[str, Any] = {"available": False, "why": "skipped (--no-hnsw)"}
    if hnsw:
        hnsw_out = hnsw_runs(x, qs, truth, hnsw_efs, ef_construction, passes, budget_s, log)
        if hnsw_out.get("available"):
            for p in lsh_points:
                p["vs_hnsw_same_recall"] = vs_hnsw(p, hnsw_out["points"])
    return {
        "n": n,
        "dim": dim,
        "queries": len(qs),
        "raw_vector_bytes": raw,
        "exact": exact,
        "lsh": lsh_points,
        "hnswlib": hnsw_out,
    }


def plot(path: Path, sizes: list[dict[str, Any]]) -> None:
    from nearline_rec.extras import pyplot

    plt = pyplot()

    cols = min(2, len(sizes))
    rows = (len(sizes) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.6 * rows), squeeze=False)
    for ax, s in zip(axes.ravel(), sizes, strict=False):
        ex = s["exact"]
        ax.scatter([ex["qps"]], [1.0], marker="s", color="black", label="exact numpy (1 query)")
        ax.scatter(
            [ex.get("batch_qps", ex["qps"])],
            [1.0],
            marker="s",
            facecolor="none",
            color="black",
            label="exact numpy (batches of 32)",
        )
        lsh = sorted((p for p in s["lsh"] if "qps" in p), key=lambda p: p["qps"])
        ax.plot(
            [p["qps"] for p in lsh],
            [p["recall"] for p in lsh],
            "o",
            color="tab:blue",
            label="LSH (1 query)",
        )
        for p in lsh:
            ax.annotate(
                p["label"],
                (p["qps"], p["recall"]),
                fontsize=7,
                xytext=(3, -9),
                textcoords="offset points",
            )
        batched = [p for p in lsh if "batch_qps" in p]
        ax.plot(
            [p["batch_qps"] for p in batched],
            [p["recall"] for p in batched],
            "o",
            color="tab:blue",
            alpha=0.45,
            label="LSH (search_batch)",
        )
        h = s["hnswlib"]
        if h.get("available"):
            pts = h["points"]
            ax.plot(
                [p["qps"] for p in pts],
                [p["recall"] for p in pts],
                "^-",
                color="tab:red",
                label="hnswlib M=16 (1 query)",
            )
            for p in pts:
                ax.annotate(
                    f"ef={p['ef']}",
                    (p["qps"], p["recall"]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                    color="tab:red",
                )
        ax.set_xscale("log")
        ax.set_xlabel("queries/s (one thread)")
        ax.set_ylabel("recall@10 vs exact")
        ax.set_title(f"{s.get('workload', 'clustered')}: N = {s['n']:,}, d = {s['dim']}")
        ax.grid(True, which="both", alpha=0.3)
        ax.axhline(0.95, color="gray", lw=0.7, ls=":")
    for ax in axes.ravel()[len(sizes) :]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7, loc="lower left")
    fig.suptitle("recall@10 vs queries/s: LSH settings against exact numpy and hnswlib")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(
    out_dir: Path,
    *,
    sizes: list[int],
    dims: list[int],
    n_queries: int,
    passes: int,
    update_ops: int,
    hnsw: bool,
    hnsw_efs: list[int],
    ef_construction: int,
    budget_s: float,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    from nearline_rec.blas import limit_blas_threads

    limit_blas_threads(1)  # every figure is for one thread, as in the worker
    started = time.perf_counter()
    results = []
    for n in sizes:
        for dim in dims:
            results.append(
                bench_size(
                    n,
                    dim,
                    n_queries=n_queries,
                    passes=passes,
                    update_ops=update_ops,
                    hnsw=hnsw,
                    hnsw_efs=hnsw_efs,
                    ef_construction=ef_construction,
                    budget_s=budget_s,
                    log=log,
                )
            )
    figures = {
        "params": {
            "sizes": sizes,
            "dims": dims,
            "queries": n_queries,
            "passes": passes,
            "update_ops": update_ops,
            "k": K,
            "workload": "lsh_tune.clustered_vectors(n + queries, d, n_clusters=n/50, seed=1)",
        },
        "results": results,
        "summary": summarize(results),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    write_result(out_dir, "lsh", figures)
    plot(out_dir / "lsh.png", results)
    return figures


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per size: the default LSH setting against both baselines, as ratios."""
    rows = []
    for s in results:
        d = next(p for p in s["lsh"] if p["label"] == "default")
        best = max(
            (p for p in s["lsh"] if p["recall"] >= 0.95), key=lambda p: p["qps"], default=None
        )
        rows.append(
            {
                "n": s["n"],
                "dim": s["dim"],
                "default": d["params"],
                "recall": d["recall"],
                "qps": d["qps"],
                "batch_qps": d["batch_qps"],
                "exact_qps": s["exact"]["qps"],
                "exact_batch_qps": s["exact"]["batch_qps"],
                "vs_exact": d["vs_exact_qps"],
                "vs_hnsw_same_recall": d.get("vs_hnsw_same_recall"),
                "best_at_0.95": None
                if best is None
                else {
                    "label": best["label"],
                    "recall": best["recall"],
                    "qps": best["qps"],
                    "vs_exact": best["vs_exact_qps"],
                    "vs_hnsw_same_recall": best.get("vs_hnsw_same_recall"),
                },
                "build_s": d["build_s"],
                "memory_vs_raw": d["memory_vs_raw"],
                "memory_bytes": d["memory_bytes"],
                "move_per_s": d["updates"]["move_per_s"],
                "move_batched_per_s": d["updates"]["move_batched_per_s"],
                "move_per_s_amortised": d["updates"]["move_per_s_amortised"],
                "move_batched_per_s_amortised": d["updates"]["move_batched_per_s_amortised"],
                "merge_s": d["updates"]["merge_s"],
                "insert_per_s": d["updates"]["insert_per_s"],
                "delete_per_s": d["updates"]["delete_per_s"],
                "qps_with_delta": d["updates"].get("qps_with_delta"),
                "delta_rows": d["updates"].get("delta_rows"),
                "hnsw_build_s": s["hnswlib"].get("build_s"),
            }
        )
    return rows
