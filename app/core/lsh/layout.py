"""The bucket arrays of an LSH index: the merged main layout and the delta runs of rows
updated since (a log-structured merge), with their directories. Part of `LSHIndex`, split
out by concern: `LSHIndex` hashes, updates and queries; this class keeps its entries."""

from __future__ import annotations

import numpy as np

from nearline_rec.core.lsh import kernels as lsh_kernels
from nearline_rec.core.lsh.store import _EMPTY_KEYS, _VectorStore


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


class _BucketLayout(_VectorStore):
    """Entries of every (table, bucket) and their liveness: see `LSHIndex` for the layout."""

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
        self._more_marks = []  # made again at the new size when needed

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

    def compact(self) -> None:
        """Fold the delta into the sorted arrays now (updates do it once the delta holds more
        than 1/8 of the rows); queries then read the arrays only."""
        self._merge(_EMPTY_KEYS, np.empty((0, self.params.L), dtype=np.uint32))

    def merge_rows(self) -> int:
        """Rows' worth of delta entries at which updates fold the delta into the arrays."""
        return max(self._SMALL_ROWS, len(self) // self._MAIN_FRACTION)

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
