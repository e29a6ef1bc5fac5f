"""The exact brute-force twin of the LSH index: the reference and the small-catalogue path."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from nearline_rec.core.lsh.store import (
    _as_keys,
    _as_matrix,
    _as_vector,
    _check_key,
    _top_k,
    _VectorStore,
)


class ExactIndex(_VectorStore):
    """Brute-force twin of `LSHIndex` with the same interface: the ground truth for tests and
    the fallback when LSH returns too little."""

    def upsert(self, key: int, vector: Sequence[float] | np.ndarray) -> None:
        """Insert `key` or replace its vector."""
        key = _check_key(key)
        v = _as_vector(vector, self.dim)
        rows, _ = self._place(np.array([key], dtype=np.int64))
        self._vectors[rows[0]] = v

    def upsert_many(self, keys: Sequence[int] | np.ndarray, matrix: np.ndarray) -> None:
        """Bulk insert or replace; a key repeated in the batch keeps its last vector."""
        keys = _as_keys(keys)
        x = _as_matrix(matrix, self.dim)
        if keys.shape[0] != x.shape[0]:
            raise ValueError(f"{keys.shape[0]} keys for {x.shape[0]} vectors")
        keys, x = self._dedupe_last(keys, x)
        rows, _ = self._place(keys)
        self._vectors[rows] = x

    def remove(self, key: int) -> bool:
        """Delete `key`; False if it was absent."""
        return self._release(key) is not None

    def _scores_mask(self, exclude: Collection[int] | None) -> tuple[np.ndarray, int]:
        """Rows to blank out (free or excluded) and how many live rows remain."""
        ex = self._excluded_rows(exclude)
        invalid = np.concatenate([np.asarray(self._free, dtype=np.int64), ex])
        return invalid, len(self) - np.unique(ex).shape[0]

    def _top(
        self, scores: np.ndarray, invalid: np.ndarray, valid: int, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        if invalid.size:
            scores[invalid] = -np.inf
        return _top_k(scores, self._row_keys[: self._high], min(k, valid))

    def search(
        self,
        query: Sequence[float] | np.ndarray,
        k: int,
        *,
        exclude: Collection[int] | None = None,
        probes: int | None = None,
        allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k by inner product, best first, ties by key ascending; with `allowed`
        (a bool per key) only keys it marks True.

        `probes` is accepted, and ignored, so that this twin drops in for `LSHIndex`.
        """
        q = _as_vector(query, self.dim)
        invalid, valid = self._scores_mask(exclude)
        if allowed is not None:
            keys = self._row_keys[: self._high]
            ok = (keys >= 0) & (keys < allowed.shape[0])
            ok[ok] = allowed[keys[ok]]
            barred = np.flatnonzero(~ok)
            invalid = np.union1d(invalid, barred)
            valid = self._high - invalid.shape[0]
        scores = self._vectors[: self._high] @ q
        return self._top(scores, invalid, valid, k)

    def search_many(
        self,
        queries: np.ndarray,
        ks: np.ndarray,
        *,
        exclude_keys: np.ndarray | None = None,
        allowed: np.ndarray | None = None,
        allowed_of: np.ndarray | None = None,
        threads: int = 1,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """`LSHIndex.search_many`'s twin: `search` of each query with its own k, excluded key
        and allowed mask (one at a time; `threads` is accepted and ignored)."""
        qs = _as_matrix(queries, self.dim)
        out = []
        for i in range(qs.shape[0]):
            ex = -1 if exclude_keys is None else int(exclude_keys[i])
            of = -1 if allowed_of is None or allowed is None else int(allowed_of[i])
            out.append(
                self.search(
                    qs[i],
                    int(ks[i]),
                    exclude=None if ex < 0 else (ex,),
                    allowed=None if of < 0 else allowed[of],
                )
            )
        return out

    def search_batch(
        self,
        queries: np.ndarray,
        k: int,
        *,
        exclude: Sequence[Collection[int] | None] | None = None,
        probes: int | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """`search` for each row of `queries`; `exclude[i]` applies to query i."""
        qs = _as_matrix(queries, self.dim)
        if exclude is not None and len(exclude) != qs.shape[0]:
            raise ValueError(f"{len(exclude)} exclude sets for {qs.shape[0]} queries")
        out: list[tuple[np.ndarray, np.ndarray]] = []
        x = self._vectors[: self._high]
        # Blocks of 32 queries: the gemm gains and the (block, n) score matrix stays small
        # (ANN-FACTS: larger blocks were slower).
        for start in range(0, qs.shape[0], 32):
            block = qs[start : start + 32] @ x.T
            for i, scores in enumerate(block, start):
                invalid, valid = self._scores_mask(exclude[i] if exclude is not None else None)
                out.append(self._top(scores, invalid, valid, k))
        return out

    def memory_bytes(self) -> int:
        """Approximate bytes held."""
        return self._store_memory_bytes()
