"""Item statistics from the stream: time-decayed popularity and rating averages, per genre too."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nearline_rec.core.catalog import ItemCatalog

# Exponents above this are folded back into the scores so float64 never overflows.
_RENORMALISE_AT = 60.0


@dataclass(frozen=True, slots=True)
class ItemCount:
    """One item's totals: popularity `score` decayed to time `t`, and its ratings."""

    score: float
    t: float
    rating_sum: float = 0.0
    rating_n: float = 0.0

    def plus(self, weight: float, ts: float, rating: float | None, half_life: float) -> ItemCount:
        """These totals with one more event counted: the older of the two times is decayed
        to the newer, so counting is order-free (up to float rounding)."""
        w = max(weight, 0.0)
        if ts >= self.t:
            score, t = self.score * 2.0 ** ((self.t - ts) / half_life) + w, ts
        else:
            score, t = self.score + w * 2.0 ** ((ts - self.t) / half_life), self.t
        if rating is None:
            return ItemCount(score, t, self.rating_sum, self.rating_n)
        return ItemCount(score, t, self.rating_sum + rating, self.rating_n + 1)


@dataclass(frozen=True, slots=True)
class CountedEvent:
    """An applied event as the shared item statistics count it, with its source position
    (which makes counting it idempotent: a position already counted is skipped)."""

    partition: int
    offset: int
    item_id: str
    weight: float
    ts: float
    rating: float | None = None


class ItemStats:
    """Arrays indexed by catalog key; grows with the catalog.

    Popularity is sum(weight * 2^((t - now) / half_life)) over events. Stored relative
    to a reference time so an event only touches its own item: O(1) per event.
    """

    def __init__(self, half_life_seconds: float, prior_count: float = 5.0) -> None:
        self.half_life = half_life_seconds
        self.prior_count = prior_count
        self._pop = np.zeros(0)
        self._rating_sum = np.zeros(0)
        self._rating_n = np.zeros(0)
        self._t_ref = 0.0
        self.now = 0.0
        """Newest event time seen: the stream's clock."""
        self.version = 0
        self._genre_cache: dict[tuple[str, int], np.ndarray] = {}
        self._genre_cache_key: tuple[int, int] = (-1, -1)
        # Derived arrays, valid while `version` (and the capacity or catalog) is unchanged:
        # the lists of one micro-batch are made after all its events, so they share them.
        self._derived: dict[tuple[object, ...], np.ndarray] = {}
        self._derived_version = -1
        self._top_asked = 0

    def _cached(self, key: tuple[object, ...]) -> np.ndarray | None:
        if self._derived_version != self.version:
            self._derived.clear()
            self._derived_version = self.version
        return self._derived.get(key)

    def _keep(self, key: tuple[object, ...], value: np.ndarray) -> np.ndarray:
        value.setflags(write=False)  # shared by every caller until the next event
        self._derived[key] = value
        return value

    def _grow(self, n: int) -> None:
        if n > len(self._pop):
            extra = max(n - len(self._pop), 1024)
            self._pop = np.concatenate([self._pop, np.zeros(extra)])
            self._rating_sum = np.concatenate([self._rating_sum, np.zeros(extra)])
            self._rating_n = np.concatenate([self._rating_n, np.zeros(extra)])

    def add(self, key: int, weight: float, ts: float, rating: float | None = None) -> None:
        self._grow(key + 1)
        if self._t_ref == 0.0:
            self._t_ref = ts
        if ts > self.now:
            self.now = ts
        exponent = (ts - self._t_ref) / self.half_life
        if exponent > _RENORMALISE_AT:
            self._pop *= 2.0 ** (-exponent)
            self._t_ref = ts
            exponent = 0.0
        self._pop[key] += max(weight, 0.0) * 2.0**exponent
        if rating is not None:
            self._rating_sum[key] += rating
            self._rating_n[key] += 1
        self.version += 1

    def clear(self) -> None:
        """Forget every count (the shared statistics they mirrored were lost)."""
        for arr in (self._pop, self._rating_sum, self._rating_n):
            arr[:] = 0.0
        self._t_ref = 0.0
        self.now = 0.0
        self.version += 1

    def set_item(self, key: int, count: ItemCount) -> None:
        """Replace one item's statistics with totals counted elsewhere (the statistics every
        worker shares, app/storage: decayed score as of `count.t`, rating sum and number)."""
        self.set_items([key], [count])

    def set_items(self, keys: list[int], counts: list[ItemCount]) -> None:
        """Replace items' statistics (distinct keys) with totals counted elsewhere, in a few
        array operations: a read of the shared statistics brings thousands of them a second
        under load, and a catalog that grew brings all of them."""
        if not keys:
            return
        k = np.asarray(keys, dtype=np.int64)
        t = np.fromiter((c.t for c in counts), np.float64, len(counts))
        self._grow(int(k.max()) + 1)
        if self._t_ref == 0.0:
            self._t_ref = float(t[0])
        latest = float(t.max())
        if latest > self.now:
            self.now = latest
        exponent = (latest - self._t_ref) / self.half_life
        if exponent > _RENORMALISE_AT:  # the newest count is far past the time reference
            self._pop *= 2.0 ** (-exponent)
            self._t_ref = latest
        score = np.fromiter((c.score for c in counts), np.float64, len(counts))
        self._pop[k] = score * 2.0 ** ((t - self._t_ref) / self.half_life)
        self._rating_sum[k] = np.fromiter((c.rating_sum for c in counts), np.float64, len(k))
        self._rating_n[k] = np.fromiter((c.rating_n for c in counts), np.float64, len(k))
        self.version += 1

    def popularity(self, capacity: int) -> np.ndarray:
        """Decayed popularity as of `now`, for keys [0, capacity) (read-only)."""
        hit = self._cached(("pop", capacity))
        if hit is not None:
            return hit
        self._grow(capacity)
        scale = 2.0 ** ((self._t_ref - self.now) / self.half_life) if self.now else 1.0
        return self._keep(("pop", capacity), self._pop[:capacity] * scale)

    def popularity_max(self, capacity: int) -> float:
        """max(popularity(capacity)), 0.0 when empty; once per statistics version."""
        hit = self._cached(("pop_max", capacity))
        if hit is None:
            pop = self.popularity(capacity)
            hit = self._keep(("pop_max", capacity), np.array([pop.max() if len(pop) else 0.0]))
        return float(hit[0])

    def rating_count(self, capacity: int) -> np.ndarray:
        self._grow(capacity)
        return self._rating_n[:capacity]

    def bayes_rating(self, capacity: int) -> np.ndarray:
        """Mean rating shrunk toward the global mean by prior_count pseudo-ratings (read-only)."""
        hit = self._cached(("rating", capacity))
        if hit is not None:
            return hit
        self._grow(capacity)
        n = self._rating_n[:capacity]
        s = self._rating_sum[:capacity]
        total_n = float(n.sum())
        global_mean = float(s.sum()) / total_n if total_n else 3.0
        rating = (s + self.prior_count * global_mean) / (n + self.prior_count)
        return self._keep(("rating", capacity), rating)

    def top_popular(self, catalog: ItemCatalog, k: int) -> np.ndarray:
        """Recommendable keys by decayed popularity (ties by key), most popular first."""
        cap = catalog.capacity
        # a brand-new item has no popularity yet, so only `ranking_version` matters
        key = ("top", catalog.ranking_version)
        hit = self._cached(key)
        asked = self._top_asked if hit is not None else 0
        # a top-n list's prefix is the top-k list: one sort serves every k up to n
        if hit is None or k > asked:
            self._top_asked = max(k, 256)
            mask = catalog.recommendable_mask[:cap]
            hit = self._keep(
                key, top_keys(self.popularity(cap), mask, self._top_asked, positive=True)
            )
        return hit[:k]

    def genre_top(self, catalog: ItemCatalog, genre: str, min_ratings: int, k: int) -> np.ndarray:
        """Best-rated recommendable items of a genre, with at least min_ratings ratings."""
        # refresh every ~200 events; a brand-new item has no ratings, so only
        # `ranking_version` can change the answer on the catalog's side
        cache_key = (catalog.ranking_version, self.version // 200)
        if cache_key != self._genre_cache_key:
            self._genre_cache = {}
            self._genre_cache_key = cache_key
        hit = self._genre_cache.get((genre, min_ratings))
        if hit is None:
            cap = catalog.capacity
            rating = self.bayes_rating(cap)
            mask = catalog.recommendable_mask[:cap] & (self.rating_count(cap) >= min_ratings)
            in_genre = mask & catalog.genre_mask(genre)
            hit = top_keys(rating, in_genre, 200, positive=False)
            self._genre_cache[(genre, min_ratings)] = hit
        return hit[:k]


def top_keys(score: np.ndarray, mask: np.ndarray, k: int, *, positive: bool) -> np.ndarray:
    ok = mask & (score > 0) if positive else mask
    keys = np.flatnonzero(ok)
    if len(keys) == 0 or k <= 0:
        return np.zeros(0, np.int64)
    values = score[keys]
    if len(keys) > 2 * k:
        # Only the best k need sorting: keep every key scoring at least the k-th best (ties
        # included, so the key order below still decides among equals).
        kth = values[np.argpartition(values, len(values) - k)[len(values) - k]]
        near = values >= kth
        keys, values = keys[near], values[near]
    # lexsort: primary -score, secondary key, so equal scores come out in key order
    order = np.lexsort((keys, -values))
    return keys[order[:k]].astype(np.int64)


def recency(release_ts: np.ndarray, now: float, half_life_days: float = 365.0) -> np.ndarray:
    """1.0 for an item released now, halving every half_life_days (0 for future releases)."""
    age_days = np.maximum(now - release_ts, 0.0) / 86400.0
    out = 0.5 ** (age_days / half_life_days)
    return np.where(release_ts > now, 0.0, out)


def log_scaled(values: np.ndarray) -> np.ndarray:
    """log1p scaled to [0, 1] by the maximum, so weights do not depend on traffic volume."""
    top = float(values.max()) if len(values) else 0.0
    if top <= 0:
        return np.zeros_like(values)
    return np.log1p(values) / math.log1p(top)
