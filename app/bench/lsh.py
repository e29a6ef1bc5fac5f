"""ANN benchmark: the LSH index against exact numpy brute force and hnswlib, in one run.

Workload: `lsh_tune.clustered_vectors` (Gaussian mixture, n/50 clusters, L2-normalised, seeded);
queries are extra points of the same mixture, not in the index. Truth = exact top-10 by inner
product. Every speed is a median over passes; single-query figures run one query at a time.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from app.bench import median, percentile, write_result
from app.core.lsh import LSHIndex, LSHParams, default_params
from app.core.lsh_tune import clustered_vectors, recall_at_k

K = 10


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def workload(n: int, dim: int, n_queries: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(catalogue, queries) from one mixture: the queries are held-out points of it."""
    x = clustered_vectors(n + n_queries, dim, n_clusters=max(1, n // 50), seed=seed)
    return np.ascontiguousarray(x[:n]), np.ascontiguousarray(x[n:])


# -- exact numpy brute force: the floor ---------------------------------------------------------


def exact_single(x: np.ndarray, q: np.ndarray, k: int = K) -> np.ndarray:
    scores = x @ q
    part = np.argpartition(scores, -k)[-k:]
    return part[np.argsort(-scores[part], kind="stable")]


def exact_batch(x: np.ndarray, qs: np.ndarray, k: int = K, block: int = 32) -> list[np.ndarray]:
    out = []
    for start in range(0, qs.shape[0], block):
        scores = qs[start : start + block] @ x.T
        part = np.argpartition(scores, -k, axis=1)[:, -k:]
        for row, p in zip(scores, part, strict=True):
            out.append(p[np.argsort(-row[p], kind="stable")])
    return out


def _passes(fn: Callable[[], Any], n: int, budget_s: float) -> list[float]:
    """Wall times of up to n runs of fn, stopping early once budget_s is spent (>= 1 run)."""
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if time.perf_counter() - start > budget_s:
            break
    return times


def _latencies(search: Callable[[np.ndarray], Any], qs: np.ndarray) -> tuple[float, list[float]]:
    lat = []
    t0 = time.perf_counter()
    for q in qs:
        t = time.perf_counter()
        search(q)
        lat.append(time.perf_counter() - t)
    return time.perf_counter() - t0, lat


def measure_single(
    search: Callable[[np.ndarray], Any], qs: np.ndarray, passes: int, budget_s: float
) -> dict[str, float]:
    """Median queries/s over passes of one query at a time, with p50/p99 of the median pass."""
    search(qs[0])  # warm-up
    runs = []
    start = time.perf_counter()
    for _ in range(passes):
        runs.append(_latencies(search, qs))
        if time.perf_counter() - start > budget_s:
            break
    runs.sort(key=lambda r: r[0])
    mid_total, lat = runs[len(runs) // 2]
    return {
        "qps": round(len(qs) / mid_total, 1),
        "p50_ms": round(1000 * percentile(lat, 50), 4),
        "p99_ms": round(1000 * percentile(lat, 99), 4),
        "passes": len(runs),
    }


Method = tuple[Callable[[], Any], Callable[[np.ndarray], Any], np.ndarray]
"""(prepare before a pass, search one query, the queries of a pass)."""


def measure_interleaved(
    methods: dict[str, Method], passes: int, min_pass_s: float = 0.5
) -> dict[str, dict[str, Any]]:
    """Single-query q/s of several methods timed in alternation: each round times one pass
    of every method, in an order rotated by one each round, so that a change of load on a
    shared machine falls on all of them alike. A pass goes through its queries, again and
    again until `min_pass_s` has passed, so one preemption of a few ms does not decide a fast
    method's figure. Per method: the median pass's q/s, its p50/p99, every pass's q/s, and the
    load average at the start and end of the rounds."""
    names = list(methods)
    for prepare, search, qs in methods.values():
        prepare()
        search(qs[0])  # warm-up
    runs: dict[str, list[tuple[float, list[float]]]] = {name: [] for name in names}
    load_before = _loadavg()
    for r in range(passes):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            prepare, search, qs = methods[name]
            prepare()
            lat: list[float] = []
            total = 0.0
            while total < min_pass_s or not lat:
                spent, more = _latencies(search, qs)
                total += spent
                lat += more
            runs[name].append((len(lat) / total, lat))
    load_after = _loadavg()
    out = {}
    for name in names:
        ordered = sorted(runs[name], key=lambda run: run[0])
        qps, lat = ordered[len(ordered) // 2]
        out[name] = {
            "qps": round(qps, 1),
            "p50_ms": round(1000 * percentile(lat, 50), 4),
            "p99_ms": round(1000 * percentile(lat, 99), 4),
            "passes": len(ordered),
            "pass_qps": [round(q, 1) for q, _ in runs[name]],
            "loadavg": f"{load_before} -> {load_after}",
        }
    return out


# -- the LSH settings compared ------------------------------------------------------------------


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
        total_s, _ = _latencies(lambda q: view.search(q, K), queries)
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


def _hnsw_build(hnswlib: Any, x: np.ndarray, ef_construction: int) -> tuple[Any, dict[str, Any]]:
    """hnswlib M=16 on x (inner product), built on every core, set to query on one; and its
    build figures."""
    n, dim = x.shape
    gc.collect()
    rss0 = rss_bytes()
    t = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=dim)
    index.init_index(max_elements=n, ef_construction=ef_construction, M=16, random_seed=1)
    index.set_num_threads(os.cpu_count() or 1)  # the build may use every core...
    index.add_items(x, np.arange(n))
    build_s = time.perf_counter() - t
    mem = rss_bytes() - rss0
    index.set_num_threads(1)  # ...queries run on one, like the others
    return index, {
        "available": True,
        "M": 16,
        "ef_construction": ef_construction,
        "build_s": round(build_s, 2),
        "build_threads": os.cpu_count() or 1,
        "rss_bytes": mem,
        "points": [],
    }


def _hnsw_runs(
    x: np.ndarray,
    qs: np.ndarray,
    truth: list[np.ndarray],
    efs: list[int],
    ef_construction: int,
    passes: int,
    budget_s: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    try:
        import hnswlib
    except ImportError:
        return {"available": False, "why": "hnswlib not installed (pip install -e '.[bench]')"}
    index, out = _hnsw_build(hnswlib, x, ef_construction)
    for ef in efs:
        index.set_ef(max(ef, K))
        found = [index.knn_query(q, k=K)[0][0] for q in qs]
        single = measure_single(lambda q, ix=index: ix.knn_query(q, k=K), qs, passes, budget_s)
        batch_t = _passes(lambda ix=index: ix.knn_query(qs, k=K, num_threads=1), passes, budget_s)
        point = {
            "ef": ef,
            "recall": round(recall_at_k(found, truth, K), 4),
            **single,
            "batch_qps": round(len(qs) / median(batch_t), 1),
        }
        out["points"].append(point)
        log(f"    hnswlib ef={ef}: recall {point['recall']} qps {point['qps']}")
    del index
    return out


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
    exact_batch_s += _passes(lambda: exact_batch(x, qs), passes - 1, budget_s)
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
        batch_t = _passes(lambda ix=index: ix.search_batch(qs, K), passes, budget_s)
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
        hnsw_out = _hnsw_runs(x, qs, truth, hnsw_efs, ef_construction, passes, budget_s, log)
        if hnsw_out.get("available"):
            for p in lsh_points:
                p["vs_hnsw_same_recall"] = _vs_hnsw(p, hnsw_out["points"])
    return {
        "n": n,
        "dim": dim,
        "queries": len(qs),
        "raw_vector_bytes": raw,
        "exact": exact,
        "lsh": lsh_points,
        "hnswlib": hnsw_out,
    }


def _vs_hnsw(point: dict[str, Any], hnsw_points: list[dict[str, Any]]) -> float | None:
    """LSH queries/s over hnswlib's at the LSH point's recall (hnswlib's q/s interpolated in
    recall between its ef settings; None when every hnswlib point is below that recall)."""
    pts = sorted((p["recall"], p["qps"]) for p in hnsw_points)
    r = point["recall"]
    above = [(rr, q) for rr, q in pts if rr >= r]
    if not above:
        return None
    below = [(rr, q) for rr, q in pts if rr < r]
    r1, q1 = above[0]
    if below and r1 > below[-1][0]:
        r0, q0 = below[-1]
        # log-linear in q/s between neighbouring ef settings
        q = float(np.exp(np.log(q0) + (np.log(q1) - np.log(q0)) * (r - r0) / (r1 - r0)))
    else:
        q = float(max(q for rr, q in above))
    return round(point["qps"] / q, 3)


def plot(path: Path, sizes: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    from app.blas import limit_blas_threads

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


# -- workloads: the calibrated index and its defaults against exact and hnswlib ------------------


def workload_queries(x: np.ndarray, n_queries: int, seed: int = 99) -> np.ndarray:
    """Taste-like queries (`calibrate.taste_queries`: decayed means of a few liked items
    near each other), drawn with a seed the calibration does not use: never catalogue rows."""
    from app.core.lsh import ExactIndex
    from app.core.lsh.calibrate import taste_queries

    keys = np.arange(x.shape[0], dtype=np.int64)
    exact = ExactIndex(x.shape[1])
    exact.upsert_many(keys, x)
    qs, _ = taste_queries(keys, x, exact, n_queries, np.random.default_rng(seed))
    return qs


def _lsh_point(
    label: str, index: Any, qs: np.ndarray, truth: list[np.ndarray], raw: int
) -> dict[str, Any]:
    from app.core.lsh.calibrate import describe

    found = [index.search(q, K)[0] for q in qs]
    return {
        "label": label,
        "params": describe(index.params),
        "recall": round(recall_at_k(found, truth, K), 4),
        "memory_bytes": index.memory_bytes(),
        "memory_vs_raw": round(index.memory_bytes() / raw, 3),
    }


def bench_workload(
    name: str,
    x: np.ndarray,
    *,
    n_queries: int,
    passes: int,
    hnsw: bool,
    hnsw_efs: list[int],
    ef_construction: int,
    calibration_budget_s: float,
    target: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """One catalogue: exact, the calibrated index (or exact search, if it chose that), the
    size defaults and hnswlib at each ef, all on the same held-out taste queries, in one run:
    everything is built first, then the single-query timings alternate between them
    (`measure_interleaved`), so the ratios compare figures taken under the same load."""
    from app.core.lsh.calibrate import CalibrationConfig, calibrate

    n, dim = x.shape
    raw = x.nbytes
    log(f"  {name} N={n:,} d={dim}: queries ...")
    qs = workload_queries(x, n_queries)
    truth = exact_batch(x, qs)
    t = time.perf_counter()
    cal = calibrate(
        np.arange(n),
        x,
        CalibrationConfig(target_recall=target, budget_seconds=calibration_budget_s),
        log=lambda m: log("    " + m),
    )
    cal_s = time.perf_counter() - t
    log(f"    calibrated: {cal.reason} ({cal_s:.0f} s)")
    nothing = lambda: None  # noqa: E731
    exact_qs = qs[: min(len(qs), 200)]  # exact search is slow at 1M: fewer queries a pass
    methods: dict[str, Method] = {"exact": (nothing, lambda q: exact_single(x, q), exact_qs)}
    points = []
    if cal.index is not None:
        points.append(_lsh_point("calibrated", cal.index, qs, truth, raw))
        methods["calibrated"] = (nothing, lambda q, ix=cal.index: ix.search(q, K), qs)
    else:
        points.append({"label": "calibrated", "params": None, "recall": 1.0, "memory_vs_raw": 1.0})
    points[0]["calibration"] = {k: v for k, v in cal.summary().items() if k != "setting"}
    points[0]["calibration"]["wall_s"] = round(cal_s, 1)
    default = LSHIndex(default_params(n, dim))
    default.upsert_many(np.arange(n), x)
    points.append(_lsh_point("default", default, qs, truth, raw))
    methods["default"] = (nothing, lambda q, ix=default: ix.search(q, K), qs)
    hnsw_out: dict[str, Any] = {"available": False, "why": "skipped (--no-hnsw)"}
    hnsw_index = None
    if hnsw:
        try:
            import hnswlib
        except ImportError:
            hnsw_out["why"] = "hnswlib not installed (pip install -e '.[bench]')"
        else:
            log("    hnswlib: build ...")
            hnsw_index, hnsw_out = _hnsw_build(hnswlib, x, ef_construction)
            for ef in hnsw_efs:
                hnsw_index.set_ef(max(ef, K))
                found = [hnsw_index.knn_query(q, k=K)[0][0] for q in qs]
                hnsw_out["points"].append(
                    {"ef": ef, "recall": round(recall_at_k(found, truth, K), 4)}
                )
                methods[f"hnsw-{ef}"] = (
                    lambda ef=ef, ix=hnsw_index: ix.set_ef(max(ef, K)),
                    lambda q, ix=hnsw_index: ix.knn_query(q, k=K),
                    qs,
                )
    log(f"    timing {len(methods)} methods in {passes} alternating rounds ...")
    timed = measure_interleaved(methods, passes)
    exact = {**timed["exact"], "recall": 1.0}
    log(f"    exact: qps {exact['qps']}")
    for p in points:
        p.update(timed.get(p["label"], {k: v for k, v in exact.items() if k != "recall"}))
        p["vs_exact_qps"] = round(p["qps"] / exact["qps"], 2)
        log(f"    {p['label']}: recall {p['recall']} qps {p['qps']}")
    for hp in hnsw_out.get("points", []):
        hp.update(timed[f"hnsw-{hp['ef']}"])
        log(f"    hnswlib ef={hp['ef']}: recall {hp['recall']} qps {hp['qps']}")
    if hnsw_out.get("available"):
        for p in points:
            p["vs_hnsw_same_recall"] = _vs_hnsw(p, hnsw_out["points"])
    del cal, default, hnsw_index, methods
    gc.collect()
    return {
        "workload": name,
        "n": n,
        "dim": dim,
        "queries": len(qs),
        "raw_vector_bytes": raw,
        "exact": exact,
        "lsh": points,
        "hnswlib": hnsw_out,
        "timing": "interleaved: every method timed once a round, rounds rotate the order",
        "loadavg": _loadavg(),
    }


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return ""


def workload_matrix(
    name: str, n: int, dim: int, embeddings: Path | None = None
) -> tuple[np.ndarray, str]:
    """The catalogue of a workload and how it was made: a synthetic one from
    `lsh_tune.workload_vectors`, or "movielens": the item vectors of an embeddings file (as
    written by `nearline train-embeddings`) at their real size, L2-normalised."""
    from app.core.lsh_tune import workload_vectors

    if name == "movielens":
        from app.data.loaders import read_embeddings

        if embeddings is None:
            raise ValueError(
                "--workload movielens needs --embeddings FILE (nearline train-embeddings)"
            )
        _, x = read_embeddings(embeddings)
        x = np.asarray(x, dtype=np.float32)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(x), f"item vectors of {embeddings.name} ({len(x)} items)"
    return workload_vectors(name, n, dim), f"lsh_tune.workload_vectors({name!r}, n, d, seed=1)"


def run_workloads(
    out_dir: Path,
    *,
    workloads: list[str],
    sizes: list[int],
    dims: list[int],
    embeddings: Path | None,
    n_queries: int,
    passes: int,
    hnsw: bool,
    hnsw_efs: list[int],
    ef_construction: int,
    calibration_budget_s: float,
    target: float,
    tag: str,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    from app.blas import limit_blas_threads

    limit_blas_threads(1)
    started = time.perf_counter()
    results = []
    how = {}
    for name in workloads:
        for n in [0] if name == "movielens" else sizes:
            for dim in [0] if name == "movielens" else dims:
                x, how[name] = workload_matrix(name, n, dim, embeddings)
                results.append(
                    bench_workload(
                        name,
                        x,
                        n_queries=n_queries,
                        passes=passes,
                        hnsw=hnsw,
                        hnsw_efs=hnsw_efs,
                        ef_construction=ef_construction,
                        calibration_budget_s=calibration_budget_s,
                        target=target,
                        log=log,
                    )
                )
                del x
                gc.collect()
    figures = {
        "params": {
            "workloads": how,
            "sizes": sizes,
            "dims": dims,
            "queries": n_queries,
            "query_kind": "taste vectors (calibrate.taste_queries, seed 99), not catalogue rows",
            "passes": passes,
            "k": K,
            "target_recall": target,
            "calibration_budget_s": calibration_budget_s,
        },
        "results": results,
        "summary": summarize_workloads(results),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    write_result(out_dir, f"lsh-{tag}", figures)
    plot(out_dir / f"lsh-{tag}.png", results)
    return figures


def summarize_workloads(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per catalogue: calibrated and default against exact and hnswlib, as ratios, and
    whether the calibrated index meets the issue's bars (recall >= target on held-out taste
    queries, >= 20x exact at 1M, >= 0.25x hnswlib at the same recall, <= 2x raw memory)."""
    rows = []
    for s in results:
        cal = next(p for p in s["lsh"] if p["label"] == "calibrated")
        dflt = next(p for p in s["lsh"] if p["label"] == "default")
        rows.append(
            {
                "workload": s["workload"],
                "n": s["n"],
                "dim": s["dim"],
                "calibrated_index": cal["calibration"]["index"],
                "calibrated_params": cal["params"],
                "calibrated_recall": cal["recall"],
                "calibrated_qps": cal["qps"],
                "calibrated_p50_ms": cal["p50_ms"],
                "calibrated_p99_ms": cal["p99_ms"],
                "calibrated_vs_exact": cal["vs_exact_qps"],
                "calibrated_vs_hnsw": cal.get("vs_hnsw_same_recall"),
                "calibrated_memory_vs_raw": cal["memory_vs_raw"],
                "calibration_s": cal["calibration"]["wall_s"],
                "default_recall": dflt["recall"],
                "default_qps": dflt["qps"],
                "default_vs_exact": dflt["vs_exact_qps"],
                "default_vs_hnsw": dflt.get("vs_hnsw_same_recall"),
                "default_memory_vs_raw": dflt["memory_vs_raw"],
                "exact_qps": s["exact"]["qps"],
                "hnsw_points": [
                    (p["ef"], p["recall"], p["qps"]) for p in s["hnswlib"].get("points", [])
                ],
                "loadavg": s["loadavg"],
            }
        )
    return rows
