"""Keys to rows and the float32 rows themselves: what the exact and the LSH index share."""

from __future__ import annotations

import operator
from collections.abc import Collection, Sequence

import numpy as np

_EMPTY_KEYS = np.empty(0, dtype=np.int64)
_EMPTY_SCORES = np.empty(0, dtype=np.float32)
_NO_KEYS_ALLOWED = np.zeros(0, dtype=np.bool_)


def _check_key(key: int) -> int:
    key = operator.index(key)
    if not 0 <= key < 2**63:
        raise ValueError(f"keys must be non-negative int64, got {key}")
    return key


def _as_keys(keys: Sequence[int] | np.ndarray) -> np.ndarray:
    arr = np.asarray(keys)
    if arr.size == 0:
        return _EMPTY_KEYS.copy()
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"keys must be a 1-D integer array, got shape {arr.shape} {arr.dtype}")
    out = arr.astype(np.int64, copy=False)
    # Checked after the cast so that uint64 keys >= 2^63 (negative as int64) are caught too.
    if (out < 0).any():
        raise ValueError("keys must be non-negative int64")
    return out


def _as_vector(vector: Sequence[float] | np.ndarray, dim: int) -> np.ndarray:
    v = np.ascontiguousarray(vector, dtype=np.float32)
    if v.shape != (dim,):
        raise ValueError(f"vector must have shape ({dim},), got {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError("vector has non-finite values")
    return v


def _as_matrix(matrix: Sequence[Sequence[float]] | np.ndarray, dim: int) -> np.ndarray:
    x = np.ascontiguousarray(matrix, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"matrix must have shape (n, {dim}), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("matrix has non-finite values")
    return x


def _top_k(scores: np.ndarray, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k by score, ties broken by key ascending so that every replica returns the same list."""
    n = scores.shape[0]
    if k <= 0 or n == 0:
        return _EMPTY_KEYS.copy(), _EMPTY_SCORES.copy()
    if n > k:
        # argpartition splits ties at the k-th score arbitrarily; keep every tied score so the
        # key tie-break below decides.
        part = np.argpartition(scores, n - k)[n - k :]
        idx = np.flatnonzero(scores >= scores[part].min())
    else:
        idx = np.arange(n)
    order = np.lexsort((keys[idx], -scores[idx]))[:k]
    sel = idx[order]
    return keys[sel].astype(np.int64, copy=False), scores[sel].astype(np.float32, copy=False)


def _unique_sorted(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values ascending, their counts); np.unique's Python layer costs more than the
    work itself on the few thousand values of one query."""
    a = np.sort(a)
    n = a.shape[0]
    first = np.empty(n, dtype=bool)
    first[:1] = True
    np.not_equal(a[1:], a[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    counts = np.empty(starts.shape[0], dtype=np.int64)
    counts[:-1] = starts[1:] - starts[:-1]
    counts[-1:] = n - starts[-1:]
    return a[starts], counts


class _KeyMap:
    """key -> row. Keys below a bound that grows with the map live in an int32 array (4 B a
    key: the catalog and the user directory use dense keys 0, 1, 2, ...); other keys in a dict
    (~100 B an entry, which at 1M keys was as much as the LSH buckets)."""

    # A key is stored densely when below max(_DENSE_MIN, 4 x the keys held) at insertion.
    _DENSE_MIN = 1 << 16

    def __init__(self) -> None:
        self._dense = np.full(0, -1, dtype=np.int32)
        self._sparse: dict[int, int] = {}
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None  # type: ignore[arg-type]

    def get(self, key: int) -> int | None:
        if not isinstance(key, int | np.integer):
            return None
        key = int(key)
        if 0 <= key < self._dense.shape[0]:
            row = int(self._dense[key])
            if row >= 0:
                return row
        return self._sparse.get(key) if self._sparse else None

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Rows of int64 `keys` (-1 where absent), vectorised."""
        rows = np.full(keys.shape[0], -1, dtype=np.int64)
        inside = (keys >= 0) & (keys < self._dense.shape[0])
        rows[inside] = self._dense[keys[inside]]
        if self._sparse:
            get = self._sparse.get
            for i in np.flatnonzero(rows < 0).tolist():
                rows[i] = get(int(keys[i]), -1)
        return rows

    def add(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Insert keys known to be absent."""
        if keys.shape[0] == 0:
            return
        self._n += keys.shape[0]
        bound = max(self._DENSE_MIN, 4 * self._n)
        dense = keys < bound
        if dense.any():
            top = int(keys[dense].max()) + 1
            if top > self._dense.shape[0]:
                grown = np.full(min(bound, max(top, 2 * self._dense.shape[0])), -1, np.int32)
                grown[: self._dense.shape[0]] = self._dense
                self._dense = grown
            self._dense[keys[dense]] = rows[dense]
        if not dense.all():
            self._sparse.update(zip(keys[~dense].tolist(), rows[~dense].tolist(), strict=True))

    def pop(self, key: int) -> int | None:
        if not isinstance(key, int | np.integer):
            return None
        key = int(key)
        if 0 <= key < self._dense.shape[0] and self._dense[key] >= 0:
            row = int(self._dense[key])
            self._dense[key] = -1
        else:
            row = self._sparse.pop(key, None)  # type: ignore[assignment]
        if row is not None:
            self._n -= 1
        return row

    def memory_bytes(self) -> int:
        return self._dense.nbytes + 100 * len(self._sparse)


class _VectorStore:
    """Growable float32 matrix with a key -> row map and a free list of rows."""

    def __init__(self, dim: int, capacity: int = 1024) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be > 0, got {dim}")
        self.dim = dim
        self._vectors = np.zeros((0, dim), dtype=np.float32)
        self._row_keys = np.full(0, -1, dtype=np.int64)  # -1 marks a free row
        self._key_to_row = _KeyMap()
        self._free: list[int] = []
        self._high = 0  # rows >= _high were never used, so scans stop there
        self._grow(capacity)

    def __len__(self) -> int:
        return len(self._key_to_row)

    def __contains__(self, key: object) -> bool:
        return key in self._key_to_row

    def keys(self) -> np.ndarray:
        """Stored keys, ascending."""
        keys = self._row_keys[: self._high]
        return np.sort(keys[keys >= 0])

    def vector(self, key: int) -> np.ndarray:
        """A copy of the stored float32 vector; KeyError if absent."""
        row = self._key_to_row.get(key)
        if row is None:
            raise KeyError(key)
        return self._vectors[row].copy()

    def _grow(self, needed: int) -> None:
        cap = self._row_keys.shape[0]
        if needed <= cap:
            return
        # Doubling keeps a stream of single inserts amortised O(1).
        new_cap = max(needed, 2 * cap)
        vectors = np.zeros((new_cap, self.dim), dtype=np.float32)
        vectors[:cap] = self._vectors
        row_keys = np.full(new_cap, -1, dtype=np.int64)
        row_keys[:cap] = self._row_keys
        self._vectors, self._row_keys = vectors, row_keys
        self._grow_extra(cap, new_cap)

    def _grow_extra(self, old_cap: int, new_cap: int) -> None:
        """Hook for subclasses keeping per-row arrays."""

    def _new_rows(self, count: int) -> list[int]:
        take = min(count, len(self._free))
        rows = [self._free.pop() for _ in range(take)]
        fresh = count - take
        if fresh:
            self._grow(self._high + fresh)
            rows.extend(range(self._high, self._high + fresh))
            self._high += fresh
        return rows

    def _place(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows for unique `keys`, allocating for new ones; returns (rows, existed)."""
        if keys.shape[0] == 1:  # the streaming case: skip the vectorised path's overhead
            key = int(keys[0])
            found = self._key_to_row.get(key)
            if found is not None:
                return np.array([found], dtype=np.int64), np.ones(1, dtype=bool)
            row = self._new_rows(1)[0]
            self._key_to_row.add(keys, np.array([row], dtype=np.int64))
            self._row_keys[row] = key
            return np.array([row], dtype=np.int64), np.zeros(1, dtype=bool)
        rows = self._key_to_row.lookup(keys)
        existed = rows >= 0
        fresh = ~existed
        n_new = int(fresh.sum())
        if n_new:
            rows[fresh] = self._new_rows(n_new)
            self._key_to_row.add(keys[fresh], rows[fresh])
            self._row_keys[rows[fresh]] = keys[fresh]
        return rows, existed

    def _release(self, key: int) -> int | None:
        row = self._key_to_row.pop(key)
        if row is not None:
            self._row_keys[row] = -1
            self._vectors[row] = 0.0
            self._free.append(row)
        return row

    def _excluded_rows(self, exclude: Collection[int] | None) -> np.ndarray:
        # len(), not truthiness: exclude may be a numpy array.
        if exclude is None or len(exclude) == 0:
            return _EMPTY_KEYS
        keys = np.fromiter(exclude, dtype=np.int64, count=len(exclude))
        rows = self._key_to_row.lookup(keys)
        return rows[rows >= 0]

    @staticmethod
    def _dedupe_last(keys: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # A batch repeating a key behaves like sequential upserts: the last vector wins.
        if np.unique(keys).shape[0] == keys.shape[0]:
            return keys, matrix
        _, first_from_end = np.unique(keys[::-1], return_index=True)
        keep = np.sort(keys.shape[0] - 1 - first_from_end)
        return keys[keep], matrix[keep]

    def _store_memory_bytes(self) -> int:
        # ~100 B a dict entry (entry + int objects) for the key map.
        return (
            self._vectors.nbytes
            + self._row_keys.nbytes
            + self._key_to_row.memory_bytes()
            + 8 * len(self._free)
        )
