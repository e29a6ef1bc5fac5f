"""The hnswlib baseline of `nearline bench lsh` (the `bench` extra): its build, its query points
over ef, and the LSH's speed relative to it at equal recall."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from nearline_rec.core.lsh_tune import recall_at_k
from nearline_rec.tools.bench import median
from nearline_rec.tools.bench.lsh_measure import (
    K,
    measure_single,
    rss_bytes,
    timed_passes,
)


def build_hnsw(hnswlib: Any, x: np.ndarray, ef_construction: int) -> tuple[Any, dict[str, Any]]:
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


def hnsw_runs(
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
    index, out = build_hnsw(hnswlib, x, ef_construction)
    for ef in efs:
        index.set_ef(max(ef, K))
        found = [index.knn_query(q, k=K)[0][0] for q in qs]
        single = measure_single(lambda q, ix=index: ix.knn_query(q, k=K), qs, passes, budget_s)
        batch_t = timed_passes(
            lambda ix=index: ix.knn_query(qs, k=K, num_threads=1), passes, budget_s
        )
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


def vs_hnsw(point: dict[str, Any], hnsw_points: list[dict[str, Any]]) -> float | None:
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
