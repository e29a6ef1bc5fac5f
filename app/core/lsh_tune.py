"""Offline tuning of LSH parameters: recall against the exact twin, speed and candidate counts."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from nearline_rec.core.lsh import ExactIndex, LSHIndex, LSHParams


@dataclass(frozen=True)
class TuneResult:
    """How one parameter set did on the tuning queries."""

    params: LSHParams
    recall: float
    """Mean recall@k against exact search."""
    qps: float
    """Queries a second, one query at a time, re-rank included."""
    mean_candidates: float
    """Mean number of candidates re-ranked per query."""
    build_seconds: float
    """Time to bulk-load the catalogue (shared by entries differing only in query-time fields)."""


def recall_at_k(approx_keys: list[np.ndarray], exact_keys: list[np.ndarray], k: int) -> float:
    """Mean over queries of |approx[:k] & exact[:k]| / min(k, len(exact)); queries whose exact
    answer is empty are skipped (nothing to find), and recall is 1.0 if all are."""
    if len(approx_keys) != len(exact_keys):
        raise ValueError(f"{len(approx_keys)} approximate answers for {len(exact_keys)} queries")
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    recalls = []
    for approx, exact in zip(approx_keys, exact_keys, strict=True):
        truth = np.asarray(exact)[:k]
        if truth.size == 0:
            continue
        hits = np.intersect1d(np.asarray(approx)[:k], truth).size
        recalls.append(hits / truth.size)
    return float(np.mean(recalls)) if recalls else 1.0


def collision_probability(distance: float | np.ndarray, w: float) -> float | np.ndarray:
    """P[h(u) == h(v)] of one p-stable function floor((a.x + b) / w) at L2 distance `distance`
    (Datar et al. 2004); recall of (m, L) is about 1 - (1 - p^m)^L. ANN-FACTS found this within
    ~0.015 of measured recall, which is why the grid below is narrow."""
    c = np.maximum(np.asarray(distance, dtype=np.float64), 1e-12)
    r = w / c
    normal_tail = 0.5 * np.vectorize(math.erfc)(r / math.sqrt(2.0))  # P[N(0,1) > r]
    p = 1.0 - 2.0 * normal_tail - 2.0 / (math.sqrt(2.0 * math.pi) * r) * (1.0 - np.exp(-r * r / 2))
    return float(p) if p.ndim == 0 else p


def clustered_vectors(
    n: int, dim: int, *, n_clusters: int | None = None, spread: float = 0.5, seed: int = 0
) -> np.ndarray:
    """L2-normalised Gaussian-mixture data: centres uniform on the sphere, each point a centre
    plus noise of norm ~`spread`. The default n/50 clusters and spread 0.5 put the 10th
    neighbour at distance ~0.57 (cosine ~0.84) against ~1.41 for a random pair."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters or max(1, n // 50), dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, centres.shape[0], n)
    x = centres[labels] + spread * rng.standard_normal((n, dim)) / math.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def mixture_vectors(
    n: int,
    dim: int,
    *,
    n_clusters: int,
    spread: float = 0.5,
    spectrum: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """L2-normalised Gaussian mixture with an optional power-law spectrum: coordinate i of the
    centres and of the noise is scaled by (i + 1) ** -`spectrum` before a random rotation, so
    the variance falls off as real embeddings' does (a few strong directions, a long tail);
    `spread` ~1 makes neighbouring clusters overlap. `spectrum=0` is `clustered_vectors`'s
    shape with any cluster count."""
    rng = np.random.default_rng(seed)
    scale = (np.arange(1, dim + 1, dtype=np.float64) ** -spectrum)[None, :]
    scale /= math.sqrt(float(np.mean(scale**2)))  # same total variance as spectrum=0
    centres = rng.standard_normal((n_clusters, dim)) * scale
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.empty((n, dim), dtype=np.float32)
    rotation = np.linalg.qr(rng.standard_normal((dim, dim)))[0] if spectrum else None
    for start in range(0, n, 65_536):  # blocks bound the float64 temporaries
        m = min(65_536, n - start)
        labels = rng.integers(0, n_clusters, m)
        block = centres[labels] + spread * rng.standard_normal((m, dim)) * scale / math.sqrt(dim)
        if rotation is not None:
            block = block @ rotation
        x[start : start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return x


WORKLOADS = ("clustered", "few-large", "wide-powerlaw")
"""Synthetic catalogues of `workload_vectors`; `nearline bench lsh` adds "movielens" (real
item embeddings trained from ratings)."""


def workload_vectors(name: str, n: int, dim: int, *, seed: int = 1) -> np.ndarray:
    """A synthetic catalogue: "clustered" (n/50 tight clusters of ~50, the one the defaults
    were tuned on), "few-large" (n/4,000 clusters: 250 at 1M, thousands of close neighbours
    each), "wide-powerlaw" (max(2,000, n/200) wide overlapping clusters, spectrum (i+1)^-0.5)."""
    if name == "clustered":
        return clustered_vectors(n, dim, n_clusters=max(1, n // 50), seed=seed)
    if name == "few-large":
        return mixture_vectors(n, dim, n_clusters=max(4, n // 4000), spread=0.5, seed=seed)
    if name == "wide-powerlaw":
        return mixture_vectors(
            n, dim, n_clusters=max(2000, n // 200), spread=1.0, spectrum=0.5, seed=seed
        )
    raise ValueError(f"unknown workload {name!r}: expected one of {', '.join(WORKLOADS)}")


def default_grid(n_items: int, dim: int) -> list[LSHParams]:
    """Parameter sets worth trying for a catalogue of `n_items` vectors of `dim` (144 sets,
    36 builds).

    A wider sweep (w 1.5-4, m = 7w-4 .. 7w+4, L 16-64, probes 0-8) at 2k-100k items put every
    set reaching recall@10 >= 0.95 with the fewest candidates near m = 8w, so the grid spans
    m = 8w +- 2; bigger catalogues need larger m to keep the scanned fraction down, smaller
    ones are dominated by per-table overhead and do better with fewer tables. Since probes are
    shared out among the tables by boundary distance (with two-coordinate steps), larger m with
    more probes and fewer tables re-ranks fewer candidates for the same recall (1M x 64: m=16,
    L=24, 20 probes a table: 0.956 at ~4,700 candidates, where m=15, L=32, 8 fixed +-1 probes
    gave 0.947 at ~5,600), so the grid goes to 24 tables and 16 probes.
    """
    shift = 2 if n_items > 300_000 else (-2 if n_items < 5_000 else 0)
    return [
        LSHParams(dim=dim, w=w, m=round(8 * w) + shift + dm, L=tables, probes=probes)
        for w in (1.5, 2.0, 2.5, 3.0)
        for dm in (-2, 0, 2)
        for tables in (16, 24, 32)
        for probes in (0, 4, 8, 16)
    ]


def tune(
    matrix: np.ndarray,
    *,
    k: int = 10,
    n_queries: int = 200,
    grid: Iterable[LSHParams] | None = None,
    seed: int = 0,
    noise: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
) -> list[TuneResult]:
    """Measure each parameter set of `grid` (default: `default_grid`) on `matrix`, in grid order.

    Queries are random catalogue rows held out of their own answers (each query excludes its
    row, as an item-to-item lookup does), optionally with Gaussian `noise` of that norm added
    and re-normalised; the truth is `ExactIndex` with the same exclusions.
    """
    x = np.ascontiguousarray(matrix, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"matrix must be a non-empty (n, dim) array, got {x.shape}")
    n, dim = x.shape
    params_list = list(default_grid(n, dim) if grid is None else grid)
    for params in params_list:
        if params.dim != dim:
            raise ValueError(f"grid entry has dim={params.dim}, the matrix has {dim}")
    rng = np.random.default_rng(seed)
    rows = rng.choice(n, size=min(n_queries, n), replace=False)
    queries = x[rows].copy()
    if noise > 0:
        queries += noise * rng.standard_normal(queries.shape).astype(np.float32) / math.sqrt(dim)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exclude = [(int(r),) for r in rows]
    keys = np.arange(n, dtype=np.int64)
    exact = ExactIndex(dim)
    exact.upsert_many(keys, x)
    truth = [found for found, _ in exact.search_batch(queries, k, exclude=exclude)]

    # Entries sharing dim, w, m and L and seed share one build (only query-time fields
    # differ); builds run one at a time, grouped, so a single layout is held in memory.
    groups: dict[tuple[int, float, int, int, int], list[int]] = {}
    for i, params in enumerate(params_list):
        groups.setdefault(params.structure, []).append(i)
    results: list[TuneResult | None] = [None] * len(params_list)
    done = 0
    for members in groups.values():
        start = time.perf_counter()
        base = LSHIndex(params_list[members[0]])
        base.upsert_many(keys, x)
        build_seconds = time.perf_counter() - start
        for i in members:
            index = base._query_view(params_list[i])
            index.search(queries[0], k, exclude=exclude[0])  # warm-up, not timed
            start = time.perf_counter()
            found = [
                index.search(q, k, exclude=ex)[0] for q, ex in zip(queries, exclude, strict=True)
            ]
            elapsed = time.perf_counter() - start
            results[i] = TuneResult(
                params=params_list[i],
                recall=recall_at_k(found, truth, k),
                qps=len(queries) / max(elapsed, 1e-9),
                mean_candidates=float(np.mean([index.candidates(q).size for q in queries])),
                build_seconds=build_seconds,
            )
            done += 1
            if progress is not None:
                progress(done, len(params_list))
        del base
    return [r for r in results if r is not None]


def recommend(results: Iterable[TuneResult], target_recall: float = 0.95) -> TuneResult:
    """The fastest result meeting `target_recall`, else the one with the highest recall
    (faster first among equals)."""
    results = list(results)
    if not results:
        raise ValueError("no results to recommend from")
    meeting = [r for r in results if r.recall >= target_recall]
    if meeting:
        return max(meeting, key=lambda r: r.qps)
    return max(results, key=lambda r: (r.recall, r.qps))
