"""`nearline bench lsh --workload NAME`: the calibrated index and its defaults against exact and
hnswlib on one named catalogue (synthetic tastes or real embeddings)."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from nearline_rec.core.lsh import LSHIndex, default_params
from nearline_rec.core.lsh_tune import recall_at_k
from nearline_rec.tools.bench import loadavg, write_result
from nearline_rec.tools.bench.lsh import plot
from nearline_rec.tools.bench.lsh_hnsw import build_hnsw, vs_hnsw
from nearline_rec.tools.bench.lsh_measure import (
    K,
    Method,
    exact_batch,
    exact_single,
    measure_interleaved,
)


def workload_queries(x: np.ndarray, n_queries: int, seed: int = 99) -> np.ndarray:
    """Taste-like queries (`calibrate.taste_queries`: decayed means of a few liked items
    near each other), drawn with a seed the calibration does not use: never catalogue rows."""
    from nearline_rec.core.lsh import ExactIndex
    from nearline_rec.core.lsh.calibrate import taste_queries

    keys = np.arange(x.shape[0], dtype=np.int64)
    exact = ExactIndex(x.shape[1])
    exact.upsert_many(keys, x)
    qs, _ = taste_queries(keys, x, exact, n_queries, np.random.default_rng(seed))
    return qs


def _lsh_point(
    label: str, index: Any, qs: np.ndarray, truth: list[np.ndarray], raw: int
) -> dict[str, Any]:
    from nearline_rec.core.lsh.calibrate import describe

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
    from nearline_rec.core.lsh.calibrate import CalibrationConfig, calibrate

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
            hnsw_index, hnsw_out = build_hnsw(hnswlib, x, ef_construction)
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
            p["vs_hnsw_same_recall"] = vs_hnsw(p, hnsw_out["points"])
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
        "loadavg": loadavg(),
    }


def workload_matrix(
    name: str, n: int, dim: int, embeddings: Path | None = None
) -> tuple[np.ndarray, str]:
    """The catalogue of a workload and how it was made: a synthetic one from
    `lsh_tune.workload_vectors`, or "movielens": the item vectors of an embeddings file (as
    written by `nearline train-embeddings`) at their real size, L2-normalised."""
    from nearline_rec.core.lsh_tune import workload_vectors

    if name == "movielens":
        from nearline_rec.data.loaders import read_embeddings

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
    from nearline_rec.blas import limit_blas_threads

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
