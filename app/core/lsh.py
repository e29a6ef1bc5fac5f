"""Embedding recall core: E2LSH over L2-normalised vectors, with its exact brute-force twin."""

from __future__ import annotations

import copy
import operator
import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from app.core import lsh_kernels

COMBINE_RULES = ("or", "and", "vote")

_EMPTY_KEYS = np.empty(0, dtype=np.int64)
_EMPTY_SCORES = np.empty(0, dtype=np.float32)
_NO_KEYS_ALLOWED = np.zeros(0, dtype=np.bool_)


@dataclass(frozen=True)
class LSHParams:
    """Hashing and query settings of an `LSHIndex`.

    `dim`, `w`, `m`, `L` and `seed` fix the buckets; `probes`, `combine`, `vote_threshold` and
    `max_candidates` only change how a query reads them.
    """

    dim: int
    w: float = 2.0
    """Bucket width of each projection; vectors are expected L2-normalised."""
    m: int = 12
    """Hash functions per table; a table matches only if all m agree (AND)."""
    L: int = 64
    """Tables; a candidate needs a match in one table (OR), or see `combine`. The defaults
    (w, m, L) reach recall@10 0.94-0.98 without probes; `default_params` uses probes instead of
    tables, for half the memory."""
    probes: int = 0
    """Multi-probe: extra neighbouring buckets read per table (0 = the exact bucket only)."""
    combine: str = "or"
    """"or": found in >= 1 table, "and": in all L tables, "vote": in >= vote_threshold tables."""
    vote_threshold: int = 2
    """Tables a candidate must be found in under combine="vote"."""
    max_candidates: int = 0
    """Cap on candidates re-ranked, keeping those found in most tables; 0 = no cap."""
    sketch_keep: int = 0
    """Re-rank only the max(sketch_keep, 4 k) candidates nearest to the query by a 64-bit sign
    sketch (Hamming distance, every tie at the cut kept), exactly as before; 0 = re-rank all.
    Most candidates of a large catalogue are far points that merely share a bucket: at 1M x 64
    keeping 400 of ~4,700 lost no recall and skipped most of the gather."""
    seed: int = 42
    """Seed of the projections: equal seeds hash alike on every replica."""

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise ValueError(f"dim must be > 0, got {self.dim}")
        if not self.w > 0:
            raise ValueError(f"w must be > 0, got {self.w}")
        if self.m < 1:
            raise ValueError(f"m must be >= 1, got {self.m}")
        if self.L < 1:
            raise ValueError(f"L must be >= 1, got {self.L}")
        # Only single-coordinate steps are probed, and a table has 2*m of them.
        if not 0 <= self.probes <= 2 * self.m:
            raise ValueError(f"probes must be in [0, 2*m={2 * self.m}], got {self.probes}")
        if self.combine not in COMBINE_RULES:
            raise ValueError(f"combine must be one of {COMBINE_RULES}, got {self.combine!r}")
        # The upper bound is checked only when the rule is used, so that LSHParams(dim, L=1)
        # stays valid with the default vote_threshold.
        if self.vote_threshold < 1 or (self.combine == "vote" and self.vote_threshold > self.L):
            raise ValueError(
                f"vote_threshold must be in [1, L={self.L}], got {self.vote_threshold}"
            )
        if self.max_candidates < 0:
            raise ValueError(f"max_candidates must be >= 0, got {self.max_candidates}")
        if self.sketch_keep < 0:
            raise ValueError(f"sketch_keep must be >= 0, got {self.sketch_keep}")

    @property
    def structure(self) -> tuple[int, float, int, int, int]:
        """The fields that decide the buckets; indexes agreeing on them hold identical tables."""
        return (self.dim, float(self.w), self.m, self.L, self.seed)


# Defaults chosen by measurement: app.core.lsh_tune.tune over default_grid (144 settings) on
# lsh_tune.clustered_vectors(seed=1) (Gaussian mixture, n/50 clusters, spread 0.5,
# L2-normalised: 10th neighbour at distance ~0.57, a random pair ~1.41), then confirmed below on
# fresh data (seed=2) with 300 held-out catalogue rows as queries (each excludes its own row),
# top-10 by inner product, one query at a time on this 2-core machine. ms = best of 5 passes
# over the 300 queries, p99 from one pass; exact = ExactIndex on the same queries; MB =
# memory_bytes() (vectors, per-row codes, bucket arrays).
#
#        n   d    w   m   L probes recall@10 candidates (% of n)   ms    p99  exact ms  build s   MB
#    2,000  32  2.0  12  16   8     0.978         88 (4.4%)     0.085  0.13    0.019     0.01    1.2
#    2,000  64  2.0  12  16   8     0.964         78 (3.9%)     0.086  0.17    0.022     0.01    1.5
#   20,000  32  2.0  14  32   8     0.983        331 (1.7%)     0.151  0.27    0.060     0.21     18
#   20,000  64  2.0  14  32   8     0.979        267 (1.3%)     0.157  0.21    0.076     0.10     21
#  100,000  32  2.0  14  32   4     0.971        949 (0.95%)    0.212  0.29    0.249     0.54     83
#  100,000  64  2.0  14  32   8     0.980       1141 (1.1%)     0.268  0.42    0.578     0.56     98
#  300,000  32  2.0  14  32   4     0.966       2814 (0.94%)    0.397  0.79    1.24      2.17    231
#  300,000  32  2.0  16  32   8     0.933       1172 (0.39%)    0.261     -*   1.24*     3.07    262
#
# 1,000,000  64  2.0  16  32   8     0.914       2815 (0.28%)   (nearline bench lsh, held-out
# 1,000,000  64  2.0  15  32   8     0.960       5792 (0.58%)    queries of the same mixture,
#                                                                  fixed +-1 probes per table)
#
# The rows above were measured with 8 fixed single-coordinate probes per table. Probes are now
# shared out among all tables by boundary distance, with two-coordinate steps (`_probe_keys`),
# which re-ranks fewer candidates for the same recall at 1M x 64 (held-out queries, 500):
#
#        n   d    w   m   L probes recall@10 candidates   memory_bytes / raw vectors
# 1,000,000  64  2.0  15  32   8     0.953       5580       (sweep on the new probing)
# 1,000,000  64  2.0  16  32  12     0.962       4102       2.1x (too many distinct buckets)
# 1,000,000  64  2.0  16  24  20     0.956       4676       1.83x: the default past 300k
# 1,000,000  64  2.0  15  28  12     0.972       6926
# 1,000,000  64  2.0  17  32  20     0.956       3074       ~2.2x
# Fewer tables with more probes save memory (4 B an entry, ~9.5 B a bucket); larger m with
# more probes save candidates, at ~0.2 us a probe to look up.
#
# Re-checked after the probing change, old and new code in one process on the same data (300
# held-out queries, one BLAS thread, CPU time, median of 5 passes): at 100k x 64 m=14 L=32 8
# probes the old code gave 0.976 at 5,191 q/s and the new 0.985 at 5,237 (k=300: 4,925 and
# 4,941), so the new probing is no slower there; 2,083 q/s in one bench run was load. Retuned:
#
#        n   d    w   m   L probes keep recall@10 candidates q/s   (exact q/s)  memory/raw
#  100,000  64  2.0  14  32   8     -    0.985      1116      5,313  (1,022)     2.18x
#  100,000  64  2.0  14  24  10     -    0.975      1055      5,397              1.93x
#  100,000  64  2.0  15  24  16     -    0.978       788      5,435              2.01x  <- default
# (m=14 L=24 10 probes read 0.9698 on the bench's 500 queries: m=15 16 probes keeps >= 0.97
# with fewer candidates.)
# 1,000,000  64  2.0  16  24  20     -    0.955      4460      2,358  (86)        1.86x
# 1,000,000  64  2.0  16  24  20   400    0.955      4460      3,050              1.87x  <- default
# 1,000,000  64  2.0  15  24  20   400    0.975      9150      2,172              1.75x
# 1,000,000  32  2.0  16  32   8     -    0.950      3596      3,533  (152)       3.04x
# 1,000,000  32  2.0  16  32   8   400    0.949      3596      3,928
# 1,000,000  32  2.0  16  32  12   400    0.976      5053      3,301              <- 10 probes
#
# keep = `sketch_keep`: at 1M most candidates are far points sharing a bucket by chance (their
# rows are spread over ~4,400 distinct 4 KB pages for ~4,700 candidates; ordering the rows by
# table-0 bucket digits or by the nearest of 2,000 pivots changed that by < 3%, so a locality-
# preserving row order does not shorten the gather); a 64-bit sign sketch (8 B a row) drops
# them before the gather of their float32 rows. At 100k the candidates are few and, on the
# numpy query path, it gained nothing measurable (compiled, it does: see below).
#
# * measured while other jobs kept both cores busy: single-query p99 swung from 0.35 to 8 ms
#   between passes (different queries each time) and exact read 5.7-7.9 ms, so neither is
#   given; exact is from the quieter run of the row above.
#
# What the sweep showed: recall@10 >= 0.95 with the fewest candidates sits near m = 7-8 w;
# without probes, 64 tables are needed (the class defaults: w=2, m=12, L=64 gave 0.94-0.98 at
# 2k-100k), while 4-8 probes reach it with 32 tables at half the memory and build time. The
# scanned fraction stays ~1% as n grows, so candidates grow linearly: past 300k a larger m
# (measured at 300k x 32 only) halves them. Below ~50k items (d=32) exact search was faster
# than any of these while the query path was numpy (~80 us of fixed per-query overhead).
# Compiled (app/core/lsh_kernels.py), one query at a time, k=20, against ExactIndex (300
# held-out queries, best of 3, one BLAS thread):
#
#        n   d   exact q/s   LSH q/s   LSH/exact
#    5,000  32     29,842    22,733      0.76
#    5,000  64     22,919    22,737      0.99
#   10,000  32     20,395    16,426      0.81
#   10,000  64     15,398    15,335      1.00
#   20,000  32     12,779    13,999      1.10
#   20,000  64      9,157    13,514      1.48
#   50,000  32      5,994    11,436      1.91
#   50,000  64      3,761    11,088      2.95
#
# so the worker's `exact_below` default is 10,000.
#
# With the compiled query the exact re-rank of every candidate became a visible share of a
# query below 1M too, and a sketch cut of 200 costs no recall there (bench workload, 500
# held-out queries, k=10, one query at a time; keep 0 / 200):
#
#        n   d  recall@10 (keep 0 / 200)   q/s (keep 0 / 200)
#   50,000  64      0.984 / 0.984            14,730 / 15,596
#  100,000  32      0.958 / 0.957            16,589 / 18,330
#  100,000  64      0.974 / 0.974            11,814 / 14,034
#  300,000  64      0.978 / 0.978             5,621 / 10,154
#
# (1M x 64 keeps 400: 200 read 0.954, nearer the 0.95 floor, for +7% q/s.)
_DEFAULTS: tuple[tuple[int, dict[int, tuple[float, int, int, int, int]]], ...] = (
    # (largest n the row applies to, {measured dim: (w, m, L, probes, sketch_keep)})
    (5_000, {32: (2.0, 12, 16, 8, 0), 64: (2.0, 12, 16, 8, 0)}),
    (50_000, {32: (2.0, 14, 32, 8, 200), 64: (2.0, 14, 32, 8, 200)}),
    (150_000, {32: (2.0, 14, 32, 4, 200), 64: (2.0, 15, 24, 16, 200)}),
    (300_000, {32: (2.0, 14, 32, 4, 200), 64: (2.0, 14, 32, 8, 200)}),
    (sys.maxsize, {32: (2.0, 16, 32, 10, 400), 64: (2.0, 16, 24, 20, 400)}),
)


def default_params(n_items: int, dim: int) -> LSHParams:
    """Measured defaults for a catalogue of `n_items` vectors of `dim` (see the table above)."""
    if n_items < 0:
        raise ValueError(f"n_items must be >= 0, got {n_items}")
    by_dim = next(row for bound, row in _DEFAULTS if n_items <= bound)
    # Nearest measured dimension: the widths were tuned at 32 and 64 only.
    nearest = min(by_dim, key=lambda d: (abs(d - dim), d))
    w, m, tables, probes, keep = by_dim[nearest]
    return LSHParams(dim=dim, w=w, m=m, L=tables, probes=probes, sketch_keep=keep)


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


def _merge_sorted(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """Merge two runs of parallel arrays, each sorted by its first array (stable: a before b)."""
    if a[0].shape[0] == 0:
        return b
    if b[0].shape[0] == 0:
        return a
    at = np.searchsorted(a[0], b[0], side="right")
    return tuple(np.insert(x, at, y) for x, y in zip(a, b, strict=True))


def _sort_run(run: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    order = np.argsort(run[0], kind="stable")
    return tuple(x[order] for x in run)


def _run_directory(sorted_keys: np.ndarray) -> np.ndarray:
    """Cell directory of a delta run (`lsh_kernels.cell_directory`), ~8 entries a cell, so a
    query finds a key's entries with one directory read and a search inside a cache line or
    two instead of a binary search over the run (~20 dependent reads at a few million)."""
    bits = min(31, max(1, (sorted_keys.shape[0] // 8).bit_length()))
    return lsh_kernels.cell_directory(sorted_keys, bits)


def _ranges(sorted_keys: np.ndarray, probes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in `sorted_keys` of every occurrence of each key of sorted `probes`."""
    lo = np.searchsorted(sorted_keys, probes, side="left")
    hi = np.searchsorted(sorted_keys, probes, side="right")
    return lo, hi


def _concat_ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Indices of the ranges [start, end) one after another, without a Python loop."""
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return _EMPTY_KEYS
    offsets = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return offsets + np.arange(total)


class LSHIndex(_VectorStore):
    """E2LSH: h(v) = floor((a.v + b) / w), a ~ N(0, I), b ~ U[0, w); m functions per table
    combined into one bucket key; L tables.

    Layout: every (table, bucket) key is shortened to 32 bits, the table in the top bits and the
    top bits of the 64-bit bucket key below (27 bits a table at L = 17-32; see `_tagged`), so
    all tables share flat arrays: the distinct keys sorted (uint32), the offset of each bucket's
    rows (int32), and the rows (int32). A directory (int32) on the keys' top bits points at
    ~2-4 keys, so finding the buckets of all tables and probes costs one short vectorised scan.
    About 4 B an entry plus ~9.5 B a bucket.

    Liveness is an epoch per row: entries in the arrays are live while their row's epoch is 0.
    Rows upserted since the last merge get a fresh epoch and their entries go to a delta kept
    as numpy runs, sorted lazily like a log-structured merge tree: an unsorted tail (single
    upserts append to it), a small sorted run (entries with their epoch) and a large one
    (compacted: its rows get epoch 1, so it needs no per-entry epoch). A moved or removed row
    only changes its epoch; its old entries die where they are and are dropped at the next
    merge of their run. The large run is merged into the arrays once it holds more than 1/8 of
    the rows, so an update costs O(L) plus amortised sorting, all vectorised.
    """

    # Keys the directory scan reads per probe; a cell holding more falls back to searchsorted.
    _SCAN_WIDTH = 8
    # Delta levels: the tail holds up to _TAIL_ROWS rows' entries unsorted; the small run up to
    # _SMALL_ROWS rows; the large run up to max(_SMALL_ROWS, len / _MAIN_FRACTION) rows.
    _TAIL_ROWS = 64
    _SMALL_ROWS = 2048
    _MAIN_FRACTION = 8
    # Epochs: 0 = the row's entries are in the arrays, 1 = in the large run, >= 2 = in the
    # small run or the tail with that epoch, -1 = no entries (free row).
    _FIRST_EPOCH = 2
    _MAX_EPOCH = 2**31 - 2

    def __init__(self, params: LSHParams) -> None:
        self.params = params
        L, m = params.L, params.m
        self._table_bits = max(1, (L - 1).bit_length())
        self._sketch_bits = min(64, L * m)
        self._table_tags = np.arange(L, dtype=np.uint32) << np.uint32(32 - self._table_bits)
        self._key_shift = np.uint64(32 + self._table_bits)
        self._epoch = np.zeros(0, dtype=np.int32)
        self._sketch = np.zeros(0, dtype=np.uint64)
        # One byte a row, zero between queries: the compiled query marks rows it has taken.
        self._mark = np.zeros(0, dtype=np.uint8)
        super().__init__(params.dim)
        rng = np.random.default_rng(params.seed)
        # The draw order is part of the hash contract: changing it re-buckets every vector, and
        # the Redis mirror of the buckets would have to be rebuilt. Drawing table by table (a,
        # b, multipliers) makes an index with more tables extend one with fewer on the same
        # seed, so adding tables can only add candidates.
        a = np.empty((L, m, params.dim))
        b = np.empty((L, m))
        mult = np.empty((L, m), dtype=np.uint64)
        for t in range(L):
            a[t] = rng.standard_normal((m, params.dim))
            b[t] = rng.uniform(0.0, params.w, m)
            mult[t] = rng.integers(0, 2**64, size=m, dtype=np.uint64, endpoint=False) | 1
        self._a = np.ascontiguousarray(a.reshape(L * m, params.dim).T)
        self._b = b.reshape(L * m)
        # Bucket key of a table = sum_j h_j * r_j mod 2^64 with random odd r_j (`mult`). Two
        # different tuples collide iff sum_j d_j r_j == 0 mod 2^64 (d = their difference): if
        # 2^s is the largest power of two dividing some d_j, then for odd uniform r_j that has
        # probability <= 2^-(63-s), and |d_j| is at most a few dozen for unit vectors. The
        # layout keeps the top 32 - log2(L) bits of it (27 at L = 17-32), so two buckets of a
        # table share a layout key with probability ~2^-27: with ~400k buckets a table, a probe
        # reads a second bucket ~0.3% of the time. A collision only merges two buckets (a few
        # extra candidates, never a lost neighbour), is the same in every replica and rebuild,
        # and linearity lets multi-probe step a key by +-r_j without re-hashing.
        self._mult = mult
        # Probe steps per table: first "h_j - 1" for each j, then "h_j + 1".
        self._steps = np.concatenate([-self._mult, self._mult], axis=1)
        self._scan = np.arange(self._SCAN_WIDTH)
        # Pairs of the 4 nearest single steps of a table, for two-coordinate probes.
        self._pair_i, self._pair_j = np.triu_indices(4, 1)
        self._tables = np.arange(L)
        self._table_rows = self._tables[:, None]
        self._set_layout(np.empty(0, dtype=np.uint32), np.empty(0, dtype=np.int32))
        self._reset_delta()

    def _reset_delta(self) -> None:
        L = self.params.L
        self._tail_keys = np.empty(self._TAIL_ROWS * L, dtype=np.uint32)
        self._tail_rows = np.empty(self._TAIL_ROWS * L, dtype=np.int32)
        self._tail_epochs = np.empty(self._TAIL_ROWS * L, dtype=np.int32)
        self._tail_n = 0
        self._set_small(
            (np.empty(0, dtype=np.uint32), np.empty(0, dtype=np.int32), np.empty(0, dtype=np.int32))
        )
        self._set_large((np.empty(0, dtype=np.uint32), np.empty(0, dtype=np.int32)))
        self._next_epoch = self._FIRST_EPOCH
        # Rows whose entries in the arrays are dead (moved or removed since the last merge);
        # while 0, queries skip the liveness check of the arrays.
        self._dead_in_main = 0

    # -- hashing -------------------------------------------------------------------------------

    def _hash(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(n, L) int64 bucket keys of the rows of `x`, (n, L, m) fractional positions of
        their projections inside the buckets (for probing) and (n,) uint64 sign sketches."""
        # float64 so that the single-vector (gemv) and batch (gemm) paths agree: they sum in
        # different orders, and a ~1e-16 difference flips a floor only when a projection sits
        # within that of a boundary, so replicas and rebuilds bucket alike in practice.
        raw = x.astype(np.float64) @ self._a
        proj = (raw + self._b) / self.params.w
        floors = np.floor(proj)
        shape = (x.shape[0], self.params.L, self.params.m)
        # Viewing int64 as uint64 wraps negatives mod 2^64, as the hash requires.
        h = floors.astype(np.int64).view(np.uint64).reshape(shape)
        codes = (h * self._mult).sum(axis=2, dtype=np.uint64).view(np.int64)
        return codes, (proj - floors).reshape(shape), self._sketch_of(raw)

    def _sketch_of(self, raw: np.ndarray) -> np.ndarray:
        """SimHash of the first (up to) 64 hash projections: bit i = [a_i . x > 0], so the
        Hamming distance of two sketches estimates the angle between the vectors."""
        bits = np.packbits(raw[:, : self._sketch_bits] > 0, axis=1)
        if bits.shape[1] < 8:
            bits = np.pad(bits, ((0, 0), (0, 8 - bits.shape[1])))
        return np.ascontiguousarray(bits).view(np.uint64)[:, 0]

    def _codes_of(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        codes, frac, _ = self._hash(x)
        return codes, frac

    def _codes_bulk(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, L) bucket keys and (n,) sketches of the rows of `x`."""
        codes = np.empty((x.shape[0], self.params.L), dtype=np.int64)
        sketch = np.empty(x.shape[0], dtype=np.uint64)
        # Blocks bound the (rows, L*m) float64/uint64 intermediates: one pass over 100k rows
        # x 1024 projections allocates ~0.8 GB for each and took 2.7-9 s, blocks of 1024 rows ~2 s.
        for start in range(0, x.shape[0], 1024):
            block = self._hash(x[start : start + 1024])
            codes[start : start + 1024] = block[0]
            sketch[start : start + 1024] = block[2]
        return codes, sketch

    def _tagged(self, codes: np.ndarray) -> np.ndarray:
        """uint32 layout keys: table index in the top bits, the bucket key's top bits below."""
        # codes: (..., L); the last axis is the table.
        top = (codes.view(np.uint64) >> np.uint64(32 + self._table_bits)).astype(np.uint32)
        return top | self._table_tags

    def signature(self, vector: Sequence[float] | np.ndarray) -> np.ndarray:
        """(L,) int64 bucket keys of one vector, e.g. to mirror buckets as `lsh:{t}:{key}`."""
        v = _as_vector(vector, self.dim)
        return self._codes_of(v[None, :])[0][0]

    def _probe_keys(self, codes: np.ndarray, frac: np.ndarray, probes: int) -> np.ndarray:
        """Sorted layout keys of each table's bucket and of `probes` x L neighbouring buckets,
        shared out among the tables by how likely they are to hold near neighbours.

        Query-directed multi-probe (Lv et al. 2007): stepping coordinate j of a table down
        (up) crosses a boundary at distance frac_j (1 - frac_j), in units of w; a neighbour
        lies across a set of boundaries with probability falling with the sum of their squared
        distances. The candidates are each table's 2m single steps and the 6 pairs of its 4
        nearest ones; the `probes` x L of lowest score over all tables are read, so a table
        whose projections sit near boundaries gets more probes than one where they sit mid-
        bucket. They are the lowest scores, so more probes only add buckets.
        """
        if probes == 0:
            return np.sort(self._tagged(codes))
        L, m = self.params.L, self.params.m
        dist = np.concatenate([frac, 1.0 - frac], axis=1)  # (L, 2m)
        sq = dist * dist
        i, j = self._pair_i, self._pair_j
        near = np.argpartition(sq, 3, axis=1)[:, :4]  # the 4 nearest, in no particular order
        near_sq = np.take_along_axis(sq, near, axis=1)
        pair_sq = near_sq[:, i] + near_sq[:, j]
        # Both directions of one coordinate are not a perturbation.
        coord = near % m
        pair_sq[coord[:, i] == coord[:, j]] = np.inf
        scores = np.concatenate([sq, pair_sq], axis=1).ravel()  # (L, 2m + 6) flattened
        total = probes * L  # <= 2mL, so never an infinite score
        chosen = np.argpartition(scores, total)[:total]
        rows = self._table_rows
        steps = np.concatenate(
            [self._steps, self._steps[rows, near[:, i]] + self._steps[rows, near[:, j]]], axis=1
        )
        base = codes.view(np.uint64)
        tables = chosen // steps.shape[1]
        raw = np.concatenate([base, base[tables] + steps.ravel()[chosen]])
        top = (raw >> np.uint64(32 + self._table_bits)).astype(np.uint32)
        # Deduped: only a hash collision could repeat a key, and a row must count at most once
        # per table in the votes.
        return _unique_sorted(top | self._table_tags[np.concatenate([self._tables, tables])])[0]

    # -- layout --------------------------------------------------------------------------------

    def _grow_extra(self, old_cap: int, new_cap: int) -> None:
        if new_cap >= 2**31:
            raise ValueError("LSHIndex holds at most 2^31 - 1 rows (int32 row ids)")
        epoch = np.full(new_cap, -1, dtype=np.int32)
        epoch[:old_cap] = self._epoch
        self._epoch = epoch
        sketch = np.zeros(new_cap, dtype=np.uint64)
        sketch[:old_cap] = self._sketch
        self._sketch = sketch
        self._mark = np.zeros(new_cap, dtype=np.uint8)

    def _set_layout(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Install entries sorted by layout key: distinct keys, bucket offsets, directory."""
        n = keys.shape[0]
        if n >= 2**31:
            raise ValueError("LSHIndex holds at most 2^31 - 1 entries (int32 offsets)")
        first = np.empty(n, dtype=bool)
        first[:1] = True
        np.not_equal(keys[1:], keys[:-1], out=first[1:])
        starts = np.flatnonzero(first)
        self._bucket_keys = keys[starts]
        self._bucket_starts = np.append(starts, n).astype(np.int32)
        self._entry_rows = rows
        # 2^bits cells for D distinct keys: D/4 < 2^bits <= D/2 (at least 2 cells), so a cell
        # holds ~2-4 keys, since layout keys are spread evenly over each table's range (up to
        # twice that when L is not a power of two and some table tags go unused).
        bits = min(31, max(1, starts.shape[0].bit_length() - 2))
        self._dir_shift = np.uint32(32 - bits)
        self._directory = lsh_kernels.cell_directory(self._bucket_keys, bits)

    def _entry_keys(self) -> np.ndarray:
        return np.repeat(self._bucket_keys, np.diff(self._bucket_starts))

    def _bucket_ranges(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[start, end) in `_entry_rows` of the buckets of `keys` (sorted uint32) that exist."""
        n_buckets = self._bucket_keys.shape[0]
        cell = (keys >> self._dir_shift).astype(np.intp)
        lo = self._directory[cell]
        in_cell = self._directory[cell + 1] - lo
        # Position of each key among the distinct keys: its cell's start plus the cell's keys
        # below it, read in one (probes, _SCAN_WIDTH) gather.
        window = self._bucket_keys[np.minimum(lo[:, None] + self._scan, n_buckets - 1)]
        below = (window < keys[:, None]) & (self._scan < in_cell[:, None])
        pos = lo + below.sum(axis=1, dtype=np.int32)
        crowded = in_cell > self._SCAN_WIDTH
        if crowded.any():
            pos[crowded] = np.searchsorted(self._bucket_keys, keys[crowded])
        inside = pos < n_buckets
        pos, keys = pos[inside], keys[inside]
        pos = pos[self._bucket_keys[pos] == keys]
        return self._bucket_starts[pos], self._bucket_starts[pos + 1]

    def _row_codes(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), L) int64 bucket keys of stored rows, re-hashed from their vectors."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.shape[0] == 0:
            return np.zeros((0, self.params.L), dtype=np.int64)
        return self._codes_bulk(np.take(self._vectors, rows, axis=0))[0]

    def _leave(self, rows: np.ndarray) -> None:
        """Withdraw the rows' current entries: a new epoch makes them dead wherever they are."""
        if rows.shape[0]:
            self._dead_in_main += int(np.count_nonzero(self._epoch[rows] == 0))
            self._epoch[rows] = -1

    def delta_rows(self) -> int:
        """Rows' worth of entries in the delta (updates since the last merge), dead ones
        included (they go at run merges); the arrays hold the rest."""
        n = self._tail_n + self._small[0].shape[0] + self._large[0].shape[0]
        return n // self.params.L

    def _join(self, rows: np.ndarray, tagged: np.ndarray) -> None:
        """Enter rows (not in the delta or arrays) with their (n, L) layout keys."""
        n, L = rows.shape[0], self.params.L
        if self._next_epoch + n > self._MAX_EPOCH:
            self._merge(rows, tagged)
            return
        epochs = np.arange(self._next_epoch, self._next_epoch + n, dtype=np.int32)
        self._next_epoch += n
        self._epoch[rows] = epochs
        keys = tagged.ravel()
        if n <= self._TAIL_ROWS:
            if self._tail_n + n * L > self._tail_keys.shape[0]:
                self._flush_tail()
            at = slice(self._tail_n, self._tail_n + n * L)
            self._tail_keys[at] = keys
            self._tail_rows[at] = np.repeat(rows.astype(np.int32), L)
            self._tail_epochs[at] = np.repeat(epochs, L)
            self._tail_n += n * L
        else:
            run = _sort_run((keys, np.repeat(rows.astype(np.int32), L), np.repeat(epochs, L)))
            self._set_small(_merge_sorted(self._small, run))
        self._cascade()

    def _set_small(self, run: tuple[np.ndarray, ...]) -> None:
        """Install the small run (keys, rows, epochs) with its cell directory."""
        self._small = run
        self._small_dir = _run_directory(run[0])

    def _set_large(self, run: tuple[np.ndarray, ...]) -> None:
        """Install the large run (keys, rows) with its cell directory."""
        self._large = run
        self._large_dir = _run_directory(run[0])

    def _live(self, run: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        alive = self._epoch[run[1]] == run[2]
        return tuple(x[alive] for x in run)

    def _flush_tail(self) -> None:
        if self._tail_n:
            n = self._tail_n
            tail = (self._tail_keys[:n], self._tail_rows[:n], self._tail_epochs[:n])
            self._set_small(_merge_sorted(self._small, _sort_run(self._live(tail))))
            self._tail_n = 0

    def _cascade(self) -> None:
        L = self.params.L
        if self._small[0].shape[0] > self._SMALL_ROWS * L:
            small = self._live(self._small)
            large = self._large
            # Before the entering rows take epoch 1: rows that left the large run since (a new
            # epoch) must not revive their entries there.
            alive = self._epoch[large[1]] == 1
            self._epoch[small[1]] = 1
            self._set_large(_merge_sorted((large[0][alive], large[1][alive]), small[:2]))
            self._set_small((self._small[0][:0], self._small[1][:0], self._small[2][:0]))
        if self._large[0].shape[0] > self.merge_rows() * L:
            self.compact()

    def _merge(self, extra_rows: np.ndarray, extra_tagged: np.ndarray) -> None:
        """Fold the delta and `extra_rows` (with their layout keys; not in the delta) into the
        arrays and drop dead entries."""
        L = self.params.L
        self._flush_tail()
        small = self._live(self._small)
        large_alive = self._epoch[self._large[1]] == 1
        keep = self._epoch[self._entry_rows] == 0
        old_keys, old_rows = self._entry_keys()[keep], self._entry_rows[keep]
        delta = _merge_sorted((self._large[0][large_alive], self._large[1][large_alive]), small[:2])
        new_keys = np.concatenate([delta[0], extra_tagged.ravel()])
        new_rows = np.concatenate([delta[1], np.repeat(extra_rows.astype(np.int32), L)])
        order = np.argsort(new_keys, kind="stable")
        new_keys, new_rows = new_keys[order], new_rows[order]
        if old_keys.size:
            # Linear merge of two sorted runs instead of re-sorting everything.
            at = np.searchsorted(old_keys, new_keys, side="right")
            keys, rows = np.insert(old_keys, at, new_keys), np.insert(old_rows, at, new_rows)
        else:
            keys, rows = new_keys, new_rows
        self._set_layout(keys, rows)
        live = self._epoch[: self._high] >= 0
        if extra_rows.shape[0]:
            live[extra_rows] = True
        self._epoch[: self._high] = np.where(live, 0, -1)
        self._reset_delta()

    def _delta_entries(self) -> tuple[np.ndarray, np.ndarray]:
        """Live (keys, rows) of the delta."""
        n = self._tail_n
        tail = self._live((self._tail_keys[:n], self._tail_rows[:n], self._tail_epochs[:n]))
        small = self._live(self._small)
        alive = self._epoch[self._large[1]] == 1
        keys = np.concatenate([tail[0], small[0], self._large[0][alive]])
        rows = np.concatenate([tail[1], small[1], self._large[1][alive]])
        return keys, rows

    def buckets(self) -> list[dict[int, frozenset[int]]]:
        """Per table, {bucket key: keys in it}, read from the live layout (arrays and delta);
        for tests and for rebuilding a Redis mirror."""
        keep = self._epoch[self._entry_rows] == 0
        d_keys, d_rows = self._delta_entries()
        keys = np.concatenate([self._entry_keys()[keep], d_keys])
        rows = np.concatenate([self._entry_rows[keep], d_rows]).astype(np.int64)
        tables = (keys >> np.uint32(32 - self._table_bits)).astype(np.int64)
        distinct, at = np.unique(rows, return_inverse=True)
        codes = self._row_codes(distinct)[at, tables]
        # An entry whose key disagrees with its row's current code would be a layout bug, and
        # so would a row holding other than one entry per table.
        expected = (codes.view(np.uint64) >> np.uint64(32 + self._table_bits)).astype(np.uint32)
        expected |= self._table_tags[tables]
        if not np.array_equal(expected, keys) or rows.shape[0] != distinct.shape[0] * self.params.L:
            raise AssertionError("LSH layout out of sync with the stored codes")
        out: list[dict[int, set[int]]] = [{} for _ in range(self.params.L)]
        for t, code, key in zip(
            tables.tolist(), codes.tolist(), self._row_keys[rows].tolist(), strict=True
        ):
            out[t].setdefault(code, set()).add(key)
        return [{code: frozenset(ks) for code, ks in table.items()} for table in out]

    # -- updates -------------------------------------------------------------------------------

    def upsert(self, key: int, vector: Sequence[float] | np.ndarray) -> None:
        """Insert `key`, or move it: leave its old buckets, re-hash, join the new ones."""
        key = _check_key(key)
        v = _as_vector(vector, self.dim)
        self._upsert_rows(np.array([key], dtype=np.int64), v[None, :])

    def upsert_many(self, keys: Sequence[int] | np.ndarray, matrix: np.ndarray) -> None:
        """Vectorised bulk insert or move; a key repeated in the batch keeps its last vector."""
        keys = _as_keys(keys)
        x = _as_matrix(matrix, self.dim)
        if keys.shape[0] != x.shape[0]:
            raise ValueError(f"{keys.shape[0]} keys for {x.shape[0]} vectors")
        if keys.shape[0] == 0:
            return
        keys, x = self._dedupe_last(keys, x)
        self._upsert_rows(keys, x)

    def _upsert_rows(self, keys: np.ndarray, x: np.ndarray) -> None:
        if keys.shape[0] == 1:
            self._upsert_one(int(keys[0]), x[0])
            return
        rows, existed = self._place(keys)
        if existed.any():
            # An unchanged vector (e.g. a metadata-only update) keeps its buckets.
            same = existed & (self._vectors[rows] == x).all(axis=1)
            if same.any():
                rows, x, existed = rows[~same], x[~same], existed[~same]
                if rows.shape[0] == 0:
                    return
            self._leave(rows[existed])
        codes, sketch = self._codes_bulk(x)
        tagged = self._tagged(codes)
        self._vectors[rows] = x
        self._sketch[rows] = sketch
        if rows.shape[0] > max(self._TAIL_ROWS, len(self) // self._MAIN_FRACTION):
            # Large batch (e.g. the initial load): straight into the arrays.
            self._merge(rows, tagged)
        else:
            self._join(rows, tagged)

    def _upsert_one(self, key: int, v: np.ndarray) -> None:
        """The streaming case, without the vectorised path's per-call overhead."""
        row = self._key_to_row.get(key)
        if row is None:
            row = int(self._place(np.array([key], dtype=np.int64))[0][0])
        else:
            if not (self._vectors[row] != v).any():
                return  # same vector, same buckets
            if self._epoch[row] == 0:
                self._dead_in_main += 1
        # `_hash` + `_tagged` for one vector: numpy's product (so the same projections as
        # the batch path), the rest compiled (same operations, so the same keys and sketch).
        raw = v[None, :].astype(np.float64) @ self._a
        tagged, sketch = lsh_kernels.stored_keys(
            raw[0],
            self._b,
            float(self.params.w),
            self._mult,
            self._sketch_bits,
            self._key_shift,
            self._table_tags,
        )
        self._vectors[row] = v
        self._sketch[row] = sketch
        L = self.params.L
        epoch = self._next_epoch
        if epoch + 1 > self._MAX_EPOCH or self._tail_n + L > self._tail_keys.shape[0]:
            self._epoch[row] = -1
            self._join(np.array([row], dtype=np.int64), tagged[None, :])
            return
        self._next_epoch += 1
        self._epoch[row] = epoch
        n = self._tail_n
        self._tail_keys[n : n + L] = tagged
        self._tail_rows[n : n + L] = row
        self._tail_epochs[n : n + L] = epoch
        self._tail_n = n + L

    def compact(self) -> None:
        """Fold the delta into the sorted arrays now (updates do it once the delta holds more
        than 1/8 of the rows); queries then read the arrays only."""
        self._merge(_EMPTY_KEYS, np.empty((0, self.params.L), dtype=np.uint32))

    def merge_rows(self) -> int:
        """Rows' worth of delta entries at which updates fold the delta into the arrays."""
        return max(self._SMALL_ROWS, len(self) // self._MAIN_FRACTION)

    def remove(self, key: int) -> bool:
        """Delete `key` from its buckets and the store; False if it was absent."""
        row = self._key_to_row.get(key)
        if row is None:
            return False
        self._leave(np.array([row], dtype=np.int64))
        self._release(key)
        return True

    # -- queries -------------------------------------------------------------------------------

    def _delta_candidates(self, keys: np.ndarray) -> list[np.ndarray]:
        """Live rows of the delta (large run, small run, tail) in the buckets of `keys`."""
        parts: list[np.ndarray] = []
        if self._large[0].size:
            at = _concat_ranges(*_ranges(self._large[0], keys))
            rows = self._large[1][at]
            parts.append(rows[self._epoch[rows] == 1])
        if self._small[0].size:
            at = _concat_ranges(*_ranges(self._small[0], keys))
            rows = self._small[1][at]
            parts.append(rows[self._epoch[rows] == self._small[2][at]])
        if self._tail_n:
            tail = self._tail_keys[: self._tail_n]
            at = np.minimum(np.searchsorted(keys, tail), keys.shape[0] - 1)
            hit = np.flatnonzero(keys[at] == tail)
            rows = self._tail_rows[hit]
            parts.append(rows[self._epoch[rows] == self._tail_epochs[hit]])
        return parts

    def _check_probes(self, probes: int | None) -> int:
        p = self.params
        probes = p.probes if probes is None else probes
        if not 0 <= probes <= 2 * p.m:
            raise ValueError(f"probes must be in [0, 2*m={2 * p.m}], got {probes}")
        return probes

    def _candidate_rows(
        self, codes: np.ndarray, frac: np.ndarray, probes: int | None
    ) -> np.ndarray:
        p = self.params
        keys = self._probe_keys(codes, frac, self._check_probes(probes))
        parts: list[np.ndarray] = []
        if self._entry_rows.size:
            starts, ends = self._bucket_ranges(keys)
            rows = self._entry_rows[_concat_ranges(starts, ends)]
            if self._dead_in_main:
                rows = rows[self._epoch[rows] == 0]
            parts.append(rows)
        parts.extend(self._delta_candidates(keys))
        if not parts:
            return _EMPTY_KEYS
        # Rows stay int32 (half the bytes to sort) and come out ascending, which makes the
        # re-rank gather walk the matrix forwards and lets `_filter_rows` drop exclusions by
        # bisection.
        found = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if found.shape[0] == 0:
            return _EMPTY_KEYS
        rows, hits = _unique_sorted(found)
        if p.combine == "or" and not p.max_candidates:
            return rows
        # A row sits in one bucket per table and the probed keys are distinct, so its count is
        # the number of tables that found it.
        if p.combine == "and":
            keep = hits == p.L
            rows, hits = rows[keep], hits[keep]
        elif p.combine == "vote":
            keep = hits >= p.vote_threshold
            rows, hits = rows[keep], hits[keep]
        if p.max_candidates and rows.shape[0] > p.max_candidates:
            # Most table hits first (closest in expectation), key ascending for determinism.
            order = np.lexsort((self._row_keys[rows], -hits))[: p.max_candidates]
            rows = np.sort(rows[order])
        return rows

    def candidates(
        self, query: Sequence[float] | np.ndarray, *, probes: int | None = None
    ) -> np.ndarray:
        """Keys (int64, ascending) that the combine rule (and cap) selects for re-ranking."""
        q = _as_vector(query, self.dim)
        codes, frac = self._codes_of(q[None, :])
        rows = self._candidate_rows(codes[0], frac[0], probes)
        return np.sort(self._row_keys[rows])

    def _search_numpy(
        self,
        q: np.ndarray,
        codes: np.ndarray,
        frac: np.ndarray,
        sketch: np.uint64,
        k: int,
        exclude: Collection[int] | None,
        probes: int,
        allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of one hashed query with the vectorised numpy path: needed for the "and" and
        "vote" rules and a candidate cap, which count the tables that found each row."""
        p = self.params
        keep = max(p.sketch_keep, 4 * k) if p.sketch_keep else 0
        rows = self._filter_rows(
            self._candidate_rows(codes, frac, probes), exclude, sketch, keep, allowed
        )
        if rows.shape[0] == 0:
            return _EMPTY_KEYS.copy(), _EMPTY_SCORES.copy()
        # np.take, not fancy indexing: ~3x faster for a few thousand rows of a large matrix
        # (measured 83 vs 255 us for 3,000 rows of 1M x 64).
        scores = np.take(self._vectors, rows, axis=0) @ q
        return _top_k(scores, np.take(self._row_keys, rows), k)

    @property
    def _compiled(self) -> bool:
        """The "or" rule without a cap runs compiled; the others need per-row table counts."""
        return self.params.combine == "or" and not self.params.max_candidates

    def _search_compiled(
        self,
        q: np.ndarray,
        k: int,
        exclude: Collection[int] | None,
        probes: int,
        allowed: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One query under the "or" rule without a cap: hash, probe, gather, sketch cut,
        re-rank and (small k) top-k in one compiled call (lsh_kernels.search_one)."""
        p = self.params
        n = self._tail_n
        keys, scores, final = lsh_kernels.search_one(
            q,
            self._a,
            self._b,
            float(p.w),
            self._mult,
            self._sketch_bits,
            probes,
            self._steps,
            self._table_tags,
            self._key_shift,
            self._bucket_keys,
            self._bucket_starts,
            self._directory,
            self._dir_shift,
            self._entry_rows,
            self._epoch,
            self._dead_in_main > 0,
            (
                *self._large,
                self._large_dir,
                *self._small,
                self._small_dir,
                self._tail_keys[:n],
                self._tail_rows[:n],
                self._tail_epochs[:n],
            ),
            self._excluded_rows(exclude),
            self._mark,
            self._sketch,
            max(p.sketch_keep, 4 * k) if p.sketch_keep else 0,
            self._vectors,
            self._row_keys,
            _NO_KEYS_ALLOWED if allowed is None else allowed,
            allowed is not None,
            k,
        )
        return (keys, scores) if final else _top_k(scores, keys, k)

    def _filter_rows(
        self,
        rows: np.ndarray,
        exclude: Collection[int] | None,
        sketch: np.uint64,
        keep: int,
        allowed: np.ndarray | None = None,
    ) -> np.ndarray:
        """The rows `_search_numpy` re-ranks: candidates minus `exclude` and keys not `allowed`,
        cut to the `keep` nearest by sketch (every tie kept)."""
        if allowed is not None and rows.shape[0]:
            keys = self._row_keys[rows]
            inside = keys < allowed.shape[0]
            inside[inside] = allowed[keys[inside]]
            rows = rows[inside]
        if exclude is not None and len(exclude) and rows.shape[0]:
            ex = self._excluded_rows(exclude)
            at = np.searchsorted(rows, ex)  # rows are ascending
            inside = at < rows.shape[0]
            at, ex = at[inside], ex[inside]
            rows = np.delete(rows, at[rows[at] == ex])
        if keep and rows.shape[0] > keep:
            # 8 B a candidate instead of its 4 B x dim row; the cut keeps every tie, so the
            # kept set depends on the sketches only, not on the order rows were found in.
            hamming = np.bitwise_count(np.take(self._sketch, rows) ^ sketch)
            cut = np.partition(hamming, keep - 1)[keep - 1]
            rows = rows[hamming <= cut]
        return rows

    def search(
        self,
        query: Sequence[float] | np.ndarray,
        k: int,
        *,
        exclude: Collection[int] | None = None,
        probes: int | None = None,
        allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (keys int64, scores float32) by inner product among the candidates, best
        first, ties by key ascending; with `allowed` (a bool per key) only keys it marks True.
        May return fewer than k: fall back to `ExactIndex`."""
        q = _as_vector(query, self.dim)
        probes = self._check_probes(probes)
        if k <= 0:
            return _EMPTY_KEYS.copy(), _EMPTY_SCORES.copy()
        if self._compiled:
            return self._search_compiled(q, k, exclude, probes, allowed)
        codes, frac, sketch = self._hash(q[None, :])
        return self._search_numpy(q, codes[0], frac[0], sketch[0], k, exclude, probes, allowed)

    def search_batch(
        self,
        queries: np.ndarray,
        k: int,
        *,
        exclude: Sequence[Collection[int] | None] | None = None,
        probes: int | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """`search` for each row of `queries` (hashed in one product); `exclude[i]` applies to
        query i."""
        qs = _as_matrix(queries, self.dim)
        if exclude is not None and len(exclude) != qs.shape[0]:
            raise ValueError(f"{len(exclude)} exclude sets for {qs.shape[0]} queries")
        probes = self._check_probes(probes)
        if k <= 0:
            return [(_EMPTY_KEYS.copy(), _EMPTY_SCORES.copy()) for _ in range(qs.shape[0])]
        if self._compiled:
            return [
                self._search_compiled(
                    qs[i], k, exclude[i] if exclude is not None else None, probes, None
                )
                for i in range(qs.shape[0])
            ]
        codes, frac, sketches = self._hash(qs)
        return [
            self._search_numpy(
                qs[i],
                codes[i],
                frac[i],
                sketches[i],
                k,
                exclude[i] if exclude is not None else None,
                probes,
            )
            for i in range(qs.shape[0])
        ]

    def _query_view(self, params: LSHParams) -> LSHIndex:
        """A read-only view sharing this layout, answering with other query-time params
        (probes, combine, vote_threshold, max_candidates); tuning uses it to avoid rebuilds.
        Do not update either object while the view is in use."""
        if params.structure != self.params.structure:
            raise ValueError("a query view must keep dim, w, m, L and seed")
        view = copy.copy(self)
        view.params = params
        return view

    def memory_bytes(self) -> int:
        """Approximate bytes held: vectors, key map, bucket arrays, directory and delta."""
        total = self._store_memory_bytes() + self._epoch.nbytes + self._sketch.nbytes
        total += self._mark.nbytes
        total += self._entry_rows.nbytes + self._bucket_keys.nbytes
        total += self._bucket_starts.nbytes + self._directory.nbytes
        total += self._a.nbytes + self._b.nbytes + self._steps.nbytes + self._mult.nbytes
        total += self._tail_keys.nbytes + self._tail_rows.nbytes + self._tail_epochs.nbytes
        total += sum(x.nbytes for x in self._small) + sum(x.nbytes for x in self._large)
        total += self._small_dir.nbytes + self._large_dir.nbytes
        return total


def warm_up() -> None:
    """Compile (or load from the cache) every kernel with the types the index passes, so a
    worker pays it at start rather than in its first batch (~4 s uncached on this machine)."""
    rng = np.random.default_rng(0)
    index = LSHIndex(LSHParams(dim=8, m=4, L=4, probes=2, sketch_keep=8))
    index.upsert_many(np.arange(64), rng.standard_normal((64, 8)).astype(np.float32))
    index.upsert(64, rng.standard_normal(8).astype(np.float32))  # a delta entry
    index.search(np.ones(8), 4, exclude={1})
    index.search(np.ones(8), 40, allowed=np.ones(65, dtype=np.bool_))
