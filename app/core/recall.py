"""Recall channels: each a config + callable that returns up to k admissible candidates."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from app.core.catalog import ItemCatalog
from app.core.popularity import ItemStats
from app.core.user_state import UserState
from app.core.users import UserDirectory

CHANNELS = ("embedding", "item2item", "similar_users", "genre", "trending", "newest")


class Candidate(NamedTuple):
    key: int
    score: float
    channel: str


@dataclass
class RecallContext:
    """What a channel may look at for one user; `exclude` holds seen item keys."""

    user: UserState
    embedding: np.ndarray | None
    catalog: ItemCatalog
    stats: ItemStats
    users: UserDirectory
    now: float
    like_threshold: float = 4.0
    exclude: set[int] = field(default_factory=set)
    _ok: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)
    _genres: Counter[str] | None = field(default=None, init=False, repr=False, compare=False)

    def _admissible(self) -> np.ndarray:
        # One boolean per key, made once per list: a copy of the recommendable mask with the
        # seen items cleared (~10 us at 100k items; a set lookup per channel cost more).
        if self._ok is None:
            ok = self.catalog.recommendable_mask.copy()
            if self.exclude:
                ok[np.fromiter(self.exclude, np.int64, len(self.exclude))] = False
            self._ok = ok
        return self._ok

    def admissible(self, key: int) -> bool:
        return bool(self._admissible()[key])

    def admissible_mask(self, keys: np.ndarray) -> np.ndarray:
        """`admissible` for an array of keys at once."""
        return self._admissible()[keys]


@dataclass(frozen=True)
class ChannelConfig:
    name: str
    k: int = 50
    quota: int = 20
    enabled: bool = True


RecallFn = Callable[[RecallContext, int], list[Candidate]]


def _take(
    ctx: RecallContext, keys: np.ndarray, scores: np.ndarray, k: int, name: str
) -> list[Candidate]:
    keys = np.asarray(keys, dtype=np.int64)
    sel = np.flatnonzero(ctx.admissible_mask(keys))[:k]
    return [
        Candidate(key, float(score), name)
        for key, score in zip(keys[sel].tolist(), np.asarray(scores)[sel].tolist(), strict=True)
    ]


def _want(ctx: RecallContext, k: int) -> int:
    # Ask for extra: the index excludes seen items but not non-recommendable ones.
    return k + min(len(ctx.catalog) // 20, 4 * k) + 8


def embedding_recall(ctx: RecallContext, k: int) -> list[Candidate]:
    """Items nearest to the user embedding (LSH with exact re-rank), admissible ones only:
    the index skips the others while it gathers candidates."""
    if ctx.embedding is None or k <= 0:
        return []
    keys, scores = ctx.catalog.search(ctx.embedding, k, allowed=ctx._admissible())
    return [
        Candidate(key, score, "embedding")
        for key, score in zip(keys.tolist(), scores.tolist(), strict=True)
    ]


def item2item_recall(ctx: RecallContext, k: int, seeds: int = 5) -> list[Candidate]:
    """Neighbours of the last liked items; an item near several seeds keeps its best score.

    A seed's neighbour list is the same for every user, so it comes from the catalog's
    cache; the user's seen items are filtered out after the lookup."""
    if k <= 0:
        return []
    want = _want(ctx, k)
    found_keys, found_scores = [], []
    for item_id in reversed(ctx.user.liked[-seeds:]):
        key = ctx.catalog.key(item_id)
        if key is None:
            continue
        keys, scores = ctx.catalog.neighbours(key, want)
        found_keys.append(keys)
        found_scores.append(scores)
    if not found_keys:
        return []
    keys = np.concatenate(found_keys).astype(np.int64, copy=False)
    scores = np.concatenate(found_scores)
    ok = ctx.admissible_mask(keys)
    keys, scores = keys[ok], scores[ok]
    # Best score first (ties by key): the first occurrence of a key is its best score.
    order = np.lexsort((keys, -scores))
    keys, scores = keys[order], scores[order]
    first = np.sort(np.unique(keys, return_index=True)[1])[:k]
    return [
        Candidate(key, float(score), "item2item")
        for key, score in zip(keys[first].tolist(), scores[first].tolist(), strict=True)
    ]


def similar_users_recall(ctx: RecallContext, k: int, n_users: int = 20) -> list[Candidate]:
    """Recent likes of users whose embeddings share LSH buckets with this user's."""
    if ctx.embedding is None or k <= 0:
        return []
    likes: list[np.ndarray] = []
    sims: list[float] = []
    for other, sim in ctx.users.similar(ctx.user.user_id, ctx.embedding, n_users):
        if sim > 0:
            likes.append(ctx.users.liked_keys(other)[::-1])  # newest first
            sims.append(sim)
    if not likes:
        return []
    all_keys = np.concatenate(likes).astype(np.int64)
    if len(all_keys) == 0:
        return []
    # newer likes of closer users count more: sim / (1 + 0.1 * position in the user's list)
    lengths = np.fromiter((len(a) for a in likes), dtype=np.int64, count=len(likes))
    starts = np.cumsum(lengths) - lengths
    position = np.arange(len(all_keys)) - np.repeat(starts, lengths)
    weights = np.repeat(np.asarray(sims), lengths) / (1.0 + 0.1 * position)
    ok = all_keys >= 0  # -1: not in the catalog when the user liked it
    ok[ok] = ctx.admissible_mask(all_keys[ok])
    distinct, at = np.unique(all_keys[ok], return_inverse=True)
    # bincount adds in input order, as a running sum per key would
    votes = np.bincount(at, weights=weights[ok], minlength=len(distinct))
    order = np.lexsort((distinct, -votes))[:k]
    return [
        Candidate(key, score, "similar_users")
        for key, score in zip(distinct[order].tolist(), votes[order].tolist(), strict=True)
    ]


def liked_genres(ctx: RecallContext) -> Counter[str]:
    """Genres of items the user rated at or above the threshold (or liked), counted (once per
    context: the genre channel and the ranking both read it; do not modify)."""
    if ctx._genres is not None:
        return ctx._genres
    counts: Counter[str] = Counter()
    high = [i for i, r in ctx.user.ratings.items() if r >= ctx.like_threshold]
    for item_id in dict.fromkeys([*high, *ctx.user.liked]):
        key = ctx.catalog.key(item_id)
        if key is not None:
            counts.update(ctx.catalog.meta(key).genres)
    ctx._genres = counts
    return counts


def genre_recall(ctx: RecallContext, k: int, min_ratings: int = 3) -> list[Candidate]:
    """Best-rated items of the genres the user rated highly, split by how often each appears."""
    genres = liked_genres(ctx)
    if not genres or k <= 0:
        return []
    total = sum(genres.values())
    rating = ctx.stats.bayes_rating(ctx.catalog.capacity)
    out: dict[int, float] = {}
    for genre, count in sorted(genres.items(), key=lambda gc: (-gc[1], gc[0])):
        share = max(1, round(k * count / total))
        keys = ctx.stats.genre_top(ctx.catalog, genre, min_ratings, share + len(ctx.exclude))
        fresh = [key for key in keys[ctx.admissible_mask(keys)].tolist() if key not in out]
        for key in fresh[:share]:
            out[key] = float(rating[key]) * count / total
    ranked = sorted(out.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    return [Candidate(key, score, "genre") for key, score in ranked]


def trending_recall(ctx: RecallContext, k: int) -> list[Candidate]:
    """Most popular items by time-decayed engagement from the stream."""
    if k <= 0:
        return []
    keys = ctx.stats.top_popular(ctx.catalog, k + len(ctx.exclude))
    pop = ctx.stats.popularity(ctx.catalog.capacity)
    return _take(ctx, keys, pop[keys], k, "trending")


def newest_recall(ctx: RecallContext, k: int) -> list[Candidate]:
    """Most recently released items that are out by the stream's clock."""
    if k <= 0:
        return []
    keys, neg_release = ctx.catalog.newest_order()
    # Sorted newest first: items not yet out by the stream's clock are a prefix to skip.
    start = int(np.searchsorted(neg_release, -ctx.now, side="left"))
    stop = start + k + len(ctx.exclude)
    if start >= len(keys):
        return []
    return _take(ctx, keys[start:stop], -neg_release[start:stop], k, "newest")


def build_channels(
    configs: list[ChannelConfig],
    *,
    item2item_seeds: int = 5,
    similar_users_n: int = 20,
    genre_min_ratings: int = 3,
) -> list[tuple[ChannelConfig, RecallFn]]:
    """Compose the enabled channels by name, in the configured order."""
    registry: dict[str, RecallFn] = {
        "embedding": embedding_recall,
        "item2item": lambda ctx, k: item2item_recall(ctx, k, item2item_seeds),
        "similar_users": lambda ctx, k: similar_users_recall(ctx, k, similar_users_n),
        "genre": lambda ctx, k: genre_recall(ctx, k, genre_min_ratings),
        "trending": trending_recall,
        "newest": newest_recall,
    }
    out = []
    for cfg in configs:
        if cfg.name not in registry:
            raise ValueError(f"unknown recall channel {cfg.name!r}; known: {', '.join(CHANNELS)}")
        if cfg.enabled and cfg.k > 0 and cfg.quota > 0:
            out.append((cfg, registry[cfg.name]))
    return out


def merge(per_channel: list[tuple[ChannelConfig, list[Candidate]]]) -> list[Candidate]:
    """Apply per-channel quotas, then dedupe: an item keeps the first channel that found it."""
    seen: set[int] = set()
    merged: list[Candidate] = []
    for cfg, cands in per_channel:
        for cand in cands[: cfg.quota]:
            if cand.key not in seen:
                seen.add(cand.key)
                merged.append(cand)
    return merged
