"""How `nearline bench lsh` measures: the seeded workload, the exact numpy floor, and timed
passes of single queries (median over passes, interleaved so load noise hits every method)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from nearline_rec.core.lsh_tune import clustered_vectors
from nearline_rec.tools.bench import loadavg, percentile

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


def timed_passes(fn: Callable[[], Any], n: int, budget_s: float) -> list[float]:
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


def query_latencies(
    search: Callable[[np.ndarray], Any], qs: np.ndarray
) -> tuple[float, list[float]]:
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
        runs.append(query_latencies(search, qs))
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
    load_before = loadavg()
    for r in range(passes):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            prepare, search, qs = methods[name]
            prepare()
            lat: list[float] = []
            total = 0.0
            while total < min_pass_s or not lat:
                spent, more = query_latencies(search, qs)
                total += spent
                lat += more
            runs[name].append((len(lat) / total, lat))
    load_after = loadavg()
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
