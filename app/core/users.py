"""Users hashed into LSH buckets as their embeddings move, for the similar-users channel."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable

import numpy as np

from nearline_rec.core.catalog import IndexConfig, unit
from nearline_rec.core.lsh import ExactIndex, LSHIndex

_NO_KEYS = np.zeros(0, dtype=np.int32)


class UserDirectory:
    """User embeddings and recent likes of the users this worker owns.

    Users get dense int keys (stable while the user stays in the directory). Below
    `exact_below` users the search is exact; past it an LSH index over the same measured
    parameters as the item index is built once and updated incrementally from then on (the
    vectors then live in it alone).

    With `max_users` > 0 the directory keeps at most about that many users: the most
    recently active by their `stamp` (the user's last event time). Past it the least recently
    active are dropped, a batch at a time, so memory is bounded whatever the number of users
    the worker owns. Recent likes are kept as catalog keys in one int32 matrix (4 B a like).
    """

    def __init__(
        self,
        dim: int,
        config: IndexConfig | None = None,
        recent: int = 20,
        item_key: Callable[[str], int | None] | None = None,
        max_users: int = 0,
    ) -> None:
        if max_users < 0:
            raise ValueError(f"max_users must be >= 0, got {max_users}")
        self.dim = dim
        self.item_key = item_key
        """Item id -> catalog key, for `liked_keys` (None: the ids are kept instead)."""
        self.config = config or IndexConfig()
        self.recent = recent
        self.max_users = max_users
        self.evicted = 0
        """Users dropped for `max_users` so far."""
        self._key: dict[str, int] = {}
        self._ids: list[str | None] = []
        self._free: list[int] = []
        self._stamp = np.zeros(0, dtype=np.float64)
        self._clock = 0.0  # the newest stamp seen: a user updated without one is newest
        self._floor = -np.inf  # the newest stamp dropped by the last eviction
        self._liked_keys = np.zeros((0, recent), dtype=np.int32)
        self._liked_n = np.zeros(0, dtype=np.int16)
        self._liked: dict[int, tuple[str, ...]] = {}  # only without `item_key`
        self._exact: ExactIndex | None = ExactIndex(dim)
        self._lsh: LSHIndex | None = None

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._key

    def __len__(self) -> int:
        """Users with an embedding (the ones a search can find)."""
        return len(self._index)

    @property
    def _index(self) -> ExactIndex | LSHIndex:
        return self._lsh if self._lsh is not None else self._exact  # type: ignore[return-value]

    @property
    def held(self) -> int:
        """Users in the directory, with or without an embedding."""
        return len(self._key)

    def key(self, user_id: str) -> int:
        key = self._key.get(user_id)
        if key is None:
            if self._free:
                key = self._free.pop()
                self._ids[key] = user_id
            else:
                key = len(self._ids)
                self._ids.append(user_id)
                self._grow(key + 1)
            self._key[user_id] = key
        return key

    def user_id(self, key: int) -> str:
        user_id = self._ids[key]
        if user_id is None:
            raise KeyError(key)
        return user_id

    @property
    def lsh(self) -> LSHIndex | None:
        return self._lsh

    def admits(self, stamp: float) -> bool:
        """False for a user the directory would drop at once: it is full and the user was
        last active no later than a user it dropped (a fill from stored states skips them,
        so a second fill does not add and drop the same users again)."""
        return not self.max_users or len(self._key) < self.max_users or stamp > self._floor

    def update(
        self,
        user_id: str,
        embedding: np.ndarray | None,
        liked: list[str],
        stamp: float | None = None,
    ) -> None:
        """Move the user to the buckets of its new embedding (or drop it when it has none)."""
        key = self._keep(user_id, liked, stamp)
        if embedding is None:
            self._index.remove(key)
        else:
            self._index.upsert(key, unit(embedding))
            self._build_lsh_when_due()
        self._evict_if_full()

    def update_many(
        self, users: Iterable[tuple[str, np.ndarray | None, list[str], float | None]]
    ) -> None:
        """`update` for many users at once, their vectors indexed in one bulk upsert (a fill
        from stored states)."""
        keys: list[int] = []
        vectors: list[np.ndarray] = []
        for user_id, embedding, liked, stamp in users:
            if embedding is None:
                self.update(user_id, embedding, liked, stamp)
                continue
            keys.append(self._keep(user_id, liked, stamp))
            vectors.append(unit(embedding))
        if keys:
            self._index.upsert_many(keys, np.vstack(vectors))
            self._build_lsh_when_due()
        self._evict_if_full()

    def _keep(self, user_id: str, liked: list[str], stamp: float | None) -> int:
        """The user's key, its recent likes and stamp recorded."""
        key = self.key(user_id)
        if stamp is None:
            stamp = self._clock
        self._clock = max(self._clock, stamp)
        self._stamp[key] = stamp
        recent = liked[-self.recent :]
        if self.item_key is not None:
            # mapped to catalog keys once here, not by every list that reads them
            n = len(recent)
            item_key = self.item_key
            self._liked_keys[key, :n] = [-1 if (k := item_key(i)) is None else k for i in recent]
            self._liked_n[key] = n
        else:
            # interned: every user who liked an item shares one copy of its id
            self._liked[key] = tuple(sys.intern(i) for i in recent)
        return key

    def _grow(self, needed: int) -> None:
        cap = self._stamp.shape[0]
        if needed <= cap:
            return
        new_cap = max(needed, 2 * cap, 1024)
        stamp = np.zeros(new_cap, dtype=np.float64)
        stamp[:cap] = self._stamp
        liked = np.zeros((new_cap, self.recent), dtype=np.int32)
        liked[:cap] = self._liked_keys
        counts = np.zeros(new_cap, dtype=np.int16)
        counts[:cap] = self._liked_n
        self._stamp, self._liked_keys, self._liked_n = stamp, liked, counts

    def _evict_if_full(self) -> None:
        """Past `max_users` plus a slack of 1/32 of it, drop the least recently active users
        down to `max_users` (one pass over the stamps per slack's worth of new users)."""
        if not self.max_users or len(self._key) <= self.max_users + max(1, self.max_users // 32):
            return
        keys = np.fromiter(self._key.values(), dtype=np.int64, count=len(self._key))
        drop = len(keys) - self.max_users
        stamps = self._stamp[keys]
        oldest = keys[np.argpartition(stamps, drop - 1)[:drop]]
        self._floor = max(self._floor, float(self._stamp[oldest].max()))
        for key in oldest.tolist():
            user_id = self._ids[key]
            assert user_id is not None
            del self._key[user_id]
            self._ids[key] = None
            self._free.append(key)
            self._liked_n[key] = 0
            self._liked.pop(key, None)
            self._index.remove(key)
        self.evicted += drop

    def _build_lsh_when_due(self) -> None:
        exact = self._exact
        if exact is None or len(exact) < max(self.config.exact_below, 1):  # 0 = always LSH
            return
        lsh = LSHIndex(self.config.params_for(len(exact), self.dim))
        keys = exact.keys()
        lsh.upsert_many(keys, np.vstack([exact.vector(int(k)) for k in keys]))
        self._lsh, self._exact = lsh, None

    def similar(self, user_id: str, embedding: np.ndarray, n: int) -> list[tuple[str, float]]:
        """Up to n other users nearest to embedding, best first."""
        own = self._key.get(user_id)
        exclude = {own} if own is not None else None
        keys, scores = self._index.search(unit(embedding), n, exclude=exclude)
        ids = self._ids
        return [
            (ids[k], float(s))  # type: ignore[misc]
            for k, s in zip(keys.tolist(), scores.tolist(), strict=True)
        ]

    def similar_many(
        self, user_ids: list[str], embeddings: list[np.ndarray], n: int, threads: int = 1
    ) -> list[list[tuple[str, float]]]:
        """`similar` for several users, their searches in one call (`search_many`)."""
        if not user_ids:
            return []
        own = np.fromiter((self._key.get(u, -1) for u in user_ids), np.int64, len(user_ids))
        found = self._index.search_many(
            np.vstack([unit(e) for e in embeddings]),
            np.full(len(user_ids), n, np.int64),
            exclude_keys=own,
            threads=threads,
        )
        ids = self._ids
        return [
            [(ids[k], float(s)) for k, s in zip(keys.tolist(), scores.tolist(), strict=True)]  # type: ignore[misc]
            for keys, scores in found
        ]

    def liked(self, user_id: str) -> tuple[str, ...]:
        """The user's recent liked ids (kept only without `item_key`)."""
        key = self._key.get(user_id)
        return () if key is None else self._liked.get(key, ())

    def liked_newest_first(self, user_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """`liked_keys` of each user reversed (newest first), concatenated, and how many
        each user gave: what `liked_keys(u)[::-1]` for each gives, in one gather."""
        keys = np.fromiter((self._key.get(u, -1) for u in user_ids), np.int64, len(user_ids))
        if not len(self._liked_keys):
            return np.zeros(0, np.int32), np.zeros(len(user_ids), np.int64)
        known = keys >= 0
        counts = np.where(known, self._liked_n[np.maximum(keys, 0)], 0).astype(np.int64)
        recent = self._liked_keys.shape[1]
        rows = self._liked_keys[np.maximum(keys, 0), ::-1]
        # a row's likes are its first counts[i] columns: reversed, its last counts[i]
        take = np.arange(recent)[None, :] >= (recent - counts)[:, None]
        return rows[take], counts

    def liked_keys(self, user_id: str) -> np.ndarray:
        """Catalog keys (int32) of the user's recent likes as of its last update (-1: not in
        the catalog then); a view, valid until the user's next update."""
        key = self._key.get(user_id)
        if key is None:
            return _NO_KEYS
        return self._liked_keys[key, : self._liked_n[key]]
