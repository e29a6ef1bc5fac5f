"""E2LSH over L2-normalised vectors: hashing, multi-probe queries and incremental updates."""

from __future__ import annotations

import copy
from collections.abc import Collection, Sequence

import numpy as np

from nearline_rec.core.lsh import kernels as lsh_kernels
from nearline_rec.core.lsh.batch import search_many
from nearline_rec.core.lsh.layout import _BucketLayout, _concat_ranges
from nearline_rec.core.lsh.params import LSHParams
from nearline_rec.core.lsh.store import (
    _EMPTY_KEYS,
    _EMPTY_SCORES,
    _NO_KEYS_ALLOWED,
    _as_keys,
    _as_matrix,
    _as_vector,
    _check_key,
    _top_k,
    _unique_sorted,
)


class LSHIndex(_BucketLayout):
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
        self._more_marks: list[np.ndarray] = []
        """More mark arrays like `_mark`, one per extra search thread (`thread_marks`)."""
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

    def remove(self, key: int) -> bool:
        """Delete `key` from its buckets and the store; False if it was absent."""
        row = self._key_to_row.get(key)
        if row is None:
            return False
        self._leave(np.array([row], dtype=np.int64))
        self._release(key)
        return True

    # -- queries -------------------------------------------------------------------------------

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
            self._delta_runs(),
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

    def _delta_runs(self) -> tuple[np.ndarray, ...]:
        """The updates not yet merged, as the compiled query reads them: the large and the
        small run with their cell directories, and the tail."""
        n = self._tail_n
        return (
            *self._large,
            self._large_dir,
            *self._small,
            self._small_dir,
            self._tail_keys[:n],
            self._tail_rows[:n],
            self._tail_epochs[:n],
        )

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
        """`search` of each row of `queries` with its own k (`ks[i]`), excluded key
        (`exclude_keys[i]`, -1 none) and allowed mask (row `allowed_of[i]` of the 2-D bool
        `allowed`, -1 none): the same answers, in one compiled call for all of them, split
        over `threads` threads (the compiled search releases the GIL). The index must not
        change until it returns."""
        return search_many(self, queries, ks, exclude_keys, allowed, allowed_of, threads)

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

    def table_memory_bytes(self) -> int:
        """Bytes of the bucket arrays and directory: the part that grows with the tables."""
        arrays = (self._entry_rows, self._bucket_keys, self._bucket_starts, self._directory)
        return sum(x.nbytes for x in arrays)

    def thread_marks(self, n: int) -> list[np.ndarray]:
        """The mark array and n - 1 more like it (all zero between queries): one per thread
        of a split `search_many`."""
        while len(self._more_marks) < n - 1:
            self._more_marks.append(np.zeros_like(self._mark))
        return [self._mark, *self._more_marks[: n - 1]]

    def memory_bytes(self) -> int:
        """Approximate bytes held: vectors, key map, bucket arrays, directory and delta."""
        total = self._store_memory_bytes() + self._epoch.nbytes + self._sketch.nbytes
        total += self._mark.nbytes + sum(m.nbytes for m in self._more_marks)
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
