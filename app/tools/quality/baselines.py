"""The short-term baseline the pipeline must beat: item-to-item over the last likes, plus
popularity.

Item vectors come from PPMI + SVD of co-occurrence in the training part
(app/tools/quality/train.py).
A candidate's score is its cosine to each of the user's last `seeds` liked items, weighted
`decay ** age` (age 0 = the newest like), plus `pop_weight * log1p(positive count) /
log1p(max positive count)`; the user's seen items are excluded. Positive counts are the
positive events (rating >= the evaluation threshold) seen so far in the replay, train part
included. Every candidate in the catalog is scored exactly (no index, no recall step).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nearline_rec.core.catalog import ItemCatalog


@dataclass(frozen=True)
class ShortTermConfig:
    seeds: int = 5
    """How many of the user's last liked items score the candidates."""
    decay: float = 0.6
    """Weight of a like `age` likes old: decay ** age (the newest has age 0)."""
    pop_weight: float = 0.15
    """Weight of log1p(positive count) / log1p(max positive count)."""


class ShortTermBaseline:
    """Per-user last likes and per-item positive counts, fed event by event by the replay."""

    def __init__(
        self,
        catalog: ItemCatalog,
        item_ids: Sequence[str],
        vectors: np.ndarray,
        threshold: float,
        config: ShortTermConfig | None = None,
    ) -> None:
        self.catalog = catalog
        self.config = config or ShortTermConfig()
        self.threshold = threshold
        cap = catalog.capacity
        self.vectors = np.zeros((cap, vectors.shape[1]), np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        unit = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
        for item_id, row in zip(item_ids, unit, strict=True):
            key = catalog.key(item_id)
            if key is not None:
                self.vectors[key] = row
        self.positives = np.zeros(cap, np.float64)
        self.liked: dict[str, list[int]] = {}

    def observe(self, user_id: str, item_id: str, rating: float | None) -> None:
        if rating is None or rating < self.threshold:
            return
        key = self.catalog.key(item_id)
        if key is None or key >= len(self.positives):
            return
        self.positives[key] += 1
        liked = self.liked.setdefault(user_id, [])
        if key in liked:
            liked.remove(key)
        liked.append(key)
        del liked[: -self.config.seeds]

    def scores(self, user_id: str) -> np.ndarray:
        """Score of every catalog key for this user."""
        c = self.config
        seeds = self.liked.get(user_id, [])[::-1]  # newest first
        out = np.zeros(len(self.positives))
        if seeds:
            weights = c.decay ** np.arange(len(seeds))
            out += self.vectors @ (self.vectors[seeds].T @ weights)
        top = float(self.positives.max())
        if top > 0:
            out += c.pop_weight * np.log1p(self.positives) / math.log1p(top)
        return out

    def recommend(self, user_id: str, exclude: set[int], n: int) -> list[int]:
        """The top-n admissible keys (recommendable, not seen), ties by key."""
        scores = self.scores(user_id)
        ok = self.catalog.recommendable_mask[: len(scores)].copy()
        if exclude:
            ok[np.fromiter(exclude, np.int64, len(exclude))] = False
        keys = np.flatnonzero(ok)
        if len(keys) > n:
            # everything scoring at least the n-th best, so ties are broken by key exactly
            nth = -np.partition(-scores[keys], n - 1)[n - 1]
            keys = keys[scores[keys] >= nth]
        order = np.lexsort((keys, -scores[keys]))
        return keys[order][:n].tolist()
