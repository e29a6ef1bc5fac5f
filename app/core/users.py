"""Users hashed into LSH buckets as their embeddings move, for the similar-users channel."""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np

from nearline_rec.core.catalog import IndexConfig, unit
from nearline_rec.core.lsh import ExactIndex, LSHIndex

_NO_KEYS = np.zeros(0, dtype=np.int32)


class UserDirectory:
    """User embeddings and recent likes of the users this worker owns.

    Users get dense int keys (stable per user id). Below `exact_below` users the
    search is exact; past it an LSH index over the same measured parameters as
    the item index is built once and updated incrementally from then on.
    """

    def __init__(
        self,
        dim: int,
        config: IndexConfig | None = None,
        recent: int = 20,
        item_key: Callable[[str], int | None] | None = None,
    ) -> None:
        self.dim = dim
        self.item_key = item_key
        """Item id -> catalog key, for `liked_keys` (None: not kept)."""
        self.config = config or IndexConfig()
        self.recent = recent
        self._key: dict[str, int] = {}
        self._ids: list[str] = []
        self._liked: dict[int, tuple[str, ...]] = {}
        self._liked_keys: dict[int, np.ndarray] = {}
        self._exact = ExactIndex(dim)
        self._lsh: LSHIndex | None = None

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._key

    def __len__(self) -> int:
        return len(self._exact)

    def key(self, user_id: str) -> int:
        key = self._key.get(user_id)
        if key is None:
            key = len(self._ids)
            self._key[user_id] = key
            self._ids.append(user_id)
        return key

    def user_id(self, key: int) -> str:
        return self._ids[key]

    @property
    def lsh(self) -> LSHIndex | None:
        return self._lsh

    def update(self, user_id: str, embedding: np.ndarray | None, liked: list[str]) -> None:
        """Move the user to the buckets of its new embedding (or drop it when it has none)."""
        key = self.key(user_id)
        # interned: every user who liked an item shares one copy of its id
        recent = tuple(sys.intern(i) for i in liked[-self.recent :])
        self._liked[key] = recent
        if self.item_key is not None:
            # mapped to catalog keys once here, not by every list that reads them
            self._liked_keys[key] = np.array(
                [-1 if (k := self.item_key(i)) is None else k for i in recent], dtype=np.int32
            )
        if embedding is None:
            self._exact.remove(key)
            if self._lsh is not None:
                self._lsh.remove(key)
            return
        vec = unit(embedding)
        self._exact.upsert(key, vec)
        if self._lsh is not None:
            self._lsh.upsert(key, vec)
        elif len(self._exact) >= max(self.config.exact_below, 1):  # 0 = always LSH
            self._build_lsh()

    def _build_lsh(self) -> None:
        params = self.config.params_for(len(self._exact), self.dim)
        self._lsh = LSHIndex(params)
        keys = self._exact.keys()
        self._lsh.upsert_many(keys, np.vstack([self._exact.vector(int(k)) for k in keys]))

    def similar(self, user_id: str, embedding: np.ndarray, n: int) -> list[tuple[str, float]]:
        """Up to n other users nearest to embedding, best first."""
        own = self._key.get(user_id)
        exclude = {own} if own is not None else None
        index = self._lsh if self._lsh is not None else self._exact
        keys, scores = index.search(unit(embedding), n, exclude=exclude)
        return [
            (self._ids[k], float(s)) for k, s in zip(keys.tolist(), scores.tolist(), strict=True)
        ]

    def liked(self, user_id: str) -> tuple[str, ...]:
        key = self._key.get(user_id)
        return () if key is None else self._liked.get(key, ())

    def liked_keys(self, user_id: str) -> np.ndarray:
        """Catalog keys (int32) of `liked` as of the user's last update (-1: unknown then)."""
        key = self._key.get(user_id)
        hit = None if key is None else self._liked_keys.get(key)
        return _NO_KEYS if hit is None else hit
