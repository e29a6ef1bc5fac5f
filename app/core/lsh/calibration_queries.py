"""Queries for the LSH calibration: taste-like vectors as the worker's users ask, item vectors for
item-to-item, their exact top-k, and the recall@k of an index on them (`calibrate` measures its
settings with these).

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from nearline_rec.core.lsh.exact import ExactIndex
from nearline_rec.core.lsh.index import LSHIndex

if TYPE_CHECKING:
    from nearline_rec.core.lsh.calibrate import CalibrationConfig


@dataclass(frozen=True)
class QuerySet:
    """Query vectors, what each excludes (liked items, or the item itself) and the truth."""

    vectors: np.ndarray
    exclude: list[tuple[int, ...]]
    truth: list[np.ndarray]


def taste_queries(
    keys: np.ndarray,
    x: np.ndarray,
    exact: ExactIndex,
    n: int,
    rng: np.random.Generator,
    *,
    neighbourhood: int = 32,
    half_life: float = 3.0,
    other_interest: float = 0.25,
) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """`n` user taste vectors: a seed item and 1-7 more liked items among its `neighbourhood`
    nearest, one of them replaced by a random item (another interest) with probability
    `other_interest`, averaged with weights halving every `half_life` likes back (newest
    first, as the embedding update decays older engagement), L2-normalised. Each excludes its
    liked items, as the embedding channel excludes what the user has seen."""
    seeds = rng.integers(0, x.shape[0], n)
    hood = exact.search_batch(x[seeds], min(neighbourhood, x.shape[0]))
    out = np.empty((n, x.shape[1]), dtype=np.float32)
    exclude: list[tuple[int, ...]] = []
    for i, seed in enumerate(seeds.tolist()):
        near = hood[i][0]
        near = near[near != keys[seed]]
        likes = int(rng.integers(2, 9))
        picked = [int(keys[seed])]
        if near.size:
            picked += rng.choice(near, size=min(likes - 1, near.size), replace=False).tolist()
        if len(picked) > 1 and rng.random() < other_interest:
            picked[-1] = int(keys[rng.integers(0, x.shape[0])])
        picked = list(dict.fromkeys(picked))
        rng.shuffle(picked)  # the order of the likes: the newest first
        rows = np.searchsorted(keys, picked)
        weights = 0.5 ** (np.arange(len(picked)) / half_life)
        v = weights @ x[rows].astype(np.float64)
        out[i] = v / max(float(np.linalg.norm(v)), 1e-12)
        exclude.append(tuple(picked))
    return out, exclude


def query_sets(
    keys: np.ndarray, x: np.ndarray, exact: ExactIndex, config: CalibrationConfig
) -> tuple[QuerySet, QuerySet]:
    """(calibration, held-out): the first mixes taste and item vectors, the second is taste
    vectors only, drawn apart; truths from `exact`."""
    rng = np.random.default_rng(config.seed)
    n_item = int(round(config.queries * config.item_share))
    taste, taste_ex = taste_queries(keys, x, exact, config.queries - n_item, rng)
    items = rng.integers(0, x.shape[0], n_item)
    cal_vectors = np.vstack([taste, x[items]]).astype(np.float32)
    cal_exclude = taste_ex + [(int(keys[i]),) for i in items.tolist()]
    held, held_ex = taste_queries(keys, x, exact, config.queries, rng)
    sets = []
    for vectors, exclude in ((cal_vectors, cal_exclude), (held, held_ex)):
        truth = [found for found, _ in exact.search_batch(vectors, config.k, exclude=exclude)]
        sets.append(QuerySet(vectors, exclude, truth))
    return sets[0], sets[1]


def recall(index: LSHIndex | ExactIndex, qs: QuerySet, k: int) -> float:
    """Mean recall@k of `index` on `qs` (queries whose truth is empty are skipped)."""
    hits = total = 0
    for q, ex, truth in zip(qs.vectors, qs.exclude, qs.truth, strict=True):
        if truth.size == 0:
            continue
        found = index.search(q, k, exclude=ex)[0]
        hits += np.intersect1d(found[:k], truth[:k]).size
        total += min(k, truth.size)
    return hits / total if total else 1.0
