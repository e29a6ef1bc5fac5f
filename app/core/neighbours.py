"""Item-to-item neighbour lists, cached and invalidated exactly.

An item's nearest neighbours do not depend on the user, and liked items follow the same
Zipf curve as the events, so a few thousand seeds answer most item-to-item searches. An
entry holds the top-m search result of one seed and the m-th score (its threshold). A
catalog change can alter that result only if the changed item scores at least the
threshold against the seed: a new or moved vector entering the top-m, or an old vector
(deleted or moved away) that was in it. Every change is checked against all entries in one
matrix product, and exactly the entries it could alter are dropped, so a cached answer is
always the answer a fresh search would give.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

# Scores are float32 dot products; a change this close to the threshold counts as reaching it.
_TOLERANCE = 1e-5
# More changed vectors than this at once (a bulk load) drop everything.
_BULK = 512


class NeighbourCache:
    """Bounded LRU of {seed key: (neighbour keys, scores)}; `capacity` 0 disables it."""

    def __init__(self, dim: int, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.dim = dim
        self.capacity = capacity
        self._slots: OrderedDict[int, int] = OrderedDict()  # seed key -> slot, oldest first
        self._free = list(range(capacity - 1, -1, -1))
        self._seeds = np.zeros((capacity, dim), dtype=np.float32)
        # a free slot's threshold is +inf: no change ever matches it
        self._threshold = np.full(capacity, np.inf, dtype=np.float32)
        self._m = np.zeros(capacity, dtype=np.int64)
        self._results: list[tuple[np.ndarray, np.ndarray] | None] = [None] * capacity
        self.hits = 0
        self.misses = 0
        self._fresh: set[int] = set()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._slots)

    def get(self, key: int, m: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The cached top-m of `key`, or None (not cached, or cached with fewer than m)."""
        slot = self._slots.get(key)
        if slot is None or self._m[slot] < m:
            self.misses += 1
            return None
        self._slots.move_to_end(key)
        if key in self._fresh:
            self._fresh.discard(key)  # counted as a miss when it was searched ahead
        else:
            self.hits += 1
        keys, scores = self._results[slot]  # type: ignore[misc]
        return keys[:m].astype(np.int64), scores[:m]

    def absent(self, keys: list[int], m: int) -> list[int]:
        """Those of `keys` without a cached top-m, each counted as a miss (they are about to
        be searched ahead of their lookups: `put(..., fresh=True)`)."""
        out = []
        for key in keys:
            slot = self._slots.get(key)
            if slot is None or self._m[slot] < m:
                out.append(key)
        self.misses += len(out)
        return out

    def put(
        self,
        key: int,
        seed: np.ndarray,
        m: int,
        keys: np.ndarray,
        scores: np.ndarray,
        *,
        fresh: bool = False,
    ) -> None:
        """Remember the top-m search result of `key` (whose vector is `seed`); `fresh`: it
        was searched ahead of its lookup, whose miss `absent` counted (the next `get` of it
        is not a hit)."""
        self._fresh.discard(key)
        if self.capacity == 0:
            return
        if fresh:
            self._fresh.add(key)
        slot = self._slots.pop(key, None)
        if slot is None:
            if not self._free:
                _, oldest = self._slots.popitem(last=False)
                self._clear(oldest)
            slot = self._free.pop()
        self._slots[key] = slot
        self._seeds[slot] = seed
        self._m[slot] = m
        # Fewer than m found: any new vector could join the list, so every change drops it.
        self._threshold[slot] = scores[m - 1] if len(scores) >= m and m > 0 else -np.inf
        self._results[slot] = (keys.astype(np.int32), scores.astype(np.float32))

    def _clear(self, slot: int) -> None:
        self._threshold[slot] = np.inf
        self._results[slot] = None
        self._m[slot] = 0
        self._free.append(slot)

    def changed(self, vectors: np.ndarray) -> None:
        """Drop the entries any of these vectors (new, moved, deleted or old positions) could
        alter: those whose seed scores at least the entry's threshold against one of them."""
        if not self._slots or len(vectors) == 0:
            return
        if len(vectors) > _BULK:
            self.clear()  # a bulk load: cheaper to start over than to test every entry
            return
        sims = self._seeds @ np.asarray(vectors, dtype=np.float32).T
        hit = np.flatnonzero((sims >= (self._threshold - _TOLERANCE)[:, None]).any(axis=1))
        if len(hit):
            self._drop_slots(set(hit.tolist()))

    def drop_seeds(self, keys: np.ndarray) -> None:
        """Forget the entries of these seeds (their own vectors changed or were deleted)."""
        slots = {self._slots[k] for k in keys.tolist() if k in self._slots}
        if slots:
            self._drop_slots(slots)

    def _drop_slots(self, slots: set[int]) -> None:
        for key in [k for k, s in self._slots.items() if s in slots]:
            del self._slots[key]
        for slot in slots:
            self._clear(slot)
        self.dropped += len(slots)

    def clear(self) -> None:
        self._drop_slots(set(self._slots.values()))
