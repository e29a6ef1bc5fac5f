"""What recall channels share: the candidate, the per-user context, a channel's config, and
the merge with per-channel quotas. The channels themselves are in app/core/channels/."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import repeat
from typing import NamedTuple

import numpy as np

from nearline_rec.core.catalog import ItemCatalog
from nearline_rec.core.popularity import ItemStats
from nearline_rec.core.user_state import UserState
from nearline_rec.core.users import UserDirectory


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
    _short: tuple[np.ndarray | None] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    short_term_seeds: int = 5
    short_term_decay: float = 0.6
    found: dict[object, object] = field(default_factory=dict, repr=False, compare=False)
    """Searches done for this context ahead of its channels, with those of the other users
    of a micro-batch (`Recommender.recommend_many`): `nearest` and `similar_users` read them
    instead of searching again."""

    def short_term(self) -> np.ndarray | None:
        """Short-term taste: the user's last `short_term_seeds` liked items' unit vectors,
        weighted `short_term_decay ** age` (the newest like has age 0), summed. A candidate's
        inner product with it is its recency-weighted cosine to those likes. None without a
        liked item that has a vector."""
        if self._short is None:
            q = np.zeros(self.catalog.dim, np.float32)
            found = False
            for age, item_id in enumerate(reversed(self.user.liked[-self.short_term_seeds :])):
                v = self.catalog.vector(item_id)
                if v is not None:
                    q += np.float32(self.short_term_decay**age) * v
                    found = True
            self._short = (q if found else None,)
        return self._short[0]

    def _admissible(self) -> np.ndarray:
        # One boolean per key, made once per list: a copy of the recommendable mask with the
        # seen items cleared (~10 us at 100k items; a set lookup per channel cost more).
        if self._ok is None:
            self.admissible_into(np.empty_like(self.catalog.recommendable_mask))
        assert self._ok is not None
        return self._ok

    def admissible_into(self, out: np.ndarray) -> None:
        """Make this context's admissible mask in `out` (a row of a micro-batch's matrix)."""
        out[:] = self.catalog.recommendable_mask
        if self.exclude:
            out[np.fromiter(self.exclude, np.int64, len(self.exclude))] = False
        self._ok = out

    def release(self) -> None:
        """Drop what recall needed and ranking does not (the admissible mask, the searches
        made ahead); asked for again, they are made again."""
        self._ok = None
        self.found.clear()

    def similar_users(self, n: int) -> list[tuple[str, float]]:
        """Up to n other users nearest to this user's embedding (`UserDirectory.similar`)."""
        if self.embedding is None:
            return []
        got = self.found.get(("similar_users", n))
        if got is not None:
            return got  # type: ignore[return-value]
        return self.users.similar(self.user.user_id, self.embedding, n)

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


def candidates(keys: list[int], scores: list[float], name: str) -> list[Candidate]:
    """Candidates of one channel from its keys and scores (Python ints and floats, as
    `tolist` gives them), built at C speed: a channel returns a few hundred a list, and the
    named tuple's own constructor cost twice as much."""
    return list(map(tuple.__new__, repeat(Candidate), zip(keys, scores, repeat(name))))


def _take(
    ctx: RecallContext, keys: np.ndarray, scores: np.ndarray, k: int, name: str
) -> list[Candidate]:
    keys = np.asarray(keys, dtype=np.int64)
    sel = np.flatnonzero(ctx.admissible_mask(keys))[:k]
    return candidates(keys[sel].tolist(), np.asarray(scores, dtype=np.float64)[sel].tolist(), name)


def nearest(ctx: RecallContext, query: np.ndarray, k: int, name: str) -> list[Candidate]:
    """The admissible items nearest to `query` (LSH with exact re-rank, or exact), as a
    channel's candidates: the index skips the others while it gathers candidates."""
    got = ctx.found.get((name, k))
    if got is not None and got[0] is query:  # type: ignore[index]
        keys, scores = got[1], got[2]  # type: ignore[index]
    else:
        keys, scores = ctx.catalog.search(query, k, allowed=ctx._admissible())
    return candidates(keys.tolist(), scores.tolist(), name)


def best(keys: np.ndarray, scores: np.ndarray, k: int, name: str) -> list[Candidate]:
    """The k best of distinct keys by score, ties by key (deterministic across runs)."""
    order = np.lexsort((keys, -scores))[:k]
    return candidates(keys[order].tolist(), scores[order].tolist(), name)


def _want(ctx: RecallContext, k: int) -> int:
    # Ask for extra: the index excludes seen items but not non-recommendable ones.
    return k + min(len(ctx.catalog) // 20, 4 * k) + 8


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


def merge(per_channel: list[tuple[ChannelConfig, list[Candidate]]]) -> list[Candidate]:
    """Apply per-channel quotas, then dedupe: an item keeps the first channel that found it."""
    kept = [cand for cfg, cands in per_channel for cand in cands[: cfg.quota]]
    # key -> its first place: built from the end, so an earlier place overwrites a later one
    first = dict(zip([c[0] for c in reversed(kept)], range(len(kept) - 1, -1, -1), strict=True))
    return [kept[i] for i in sorted(first.values())]
