"""`LSHIndex.search_many`: the searches of many queries (a micro-batch's users) in one
compiled call, or split over a few threads, each with its own scratch marks (the compiled
search releases the GIL)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from nearline_rec.core.lsh import batch_kernels
from nearline_rec.core.lsh.store import _as_matrix

if TYPE_CHECKING:
    from nearline_rec.core.lsh.index import LSHIndex

_NO_MASKS = np.zeros((1, 0), dtype=np.bool_)
"""No allowed masks (the kernel takes a 2-D array either way)."""

_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(threads: int) -> ThreadPoolExecutor:
    """One pool per thread count, for the life of the process."""
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="lsh-search")
    return _POOLS[threads]


def search_many(
    index: LSHIndex,
    queries: np.ndarray,
    ks: np.ndarray,
    exclude_keys: np.ndarray | None,
    allowed: np.ndarray | None,
    allowed_of: np.ndarray | None,
    threads: int,
) -> list[tuple[np.ndarray, np.ndarray]]:
    qs = _as_matrix(queries, index.dim)
    nq = qs.shape[0]
    ks = np.asarray(ks, dtype=np.int64)
    ex_keys = np.full(nq, -1, np.int64) if exclude_keys is None else np.asarray(exclude_keys)
    of = np.full(nq, -1, np.int64) if allowed_of is None else np.asarray(allowed_of, np.int64)
    if len(ks) != nq or len(ex_keys) != nq or len(of) != nq:
        raise ValueError(f"ks, exclude_keys and allowed_of need one entry per query ({nq})")
    if allowed is None and (of >= 0).any():
        raise ValueError("allowed_of names masks but no allowed masks were given")
    if not index._compiled:
        return [
            index.search(
                qs[i],
                int(ks[i]),
                exclude=None if ex_keys[i] < 0 else (int(ex_keys[i]),),
                allowed=None if of[i] < 0 or allowed is None else allowed[of[i]],
            )
            for i in range(nq)
        ]
    p = index.params
    probes = index._check_probes(None)
    excluded = np.full(nq, -1, np.int64)
    has = ex_keys >= 0
    if has.any():
        excluded[has] = index._key_to_row.lookup(ex_keys[has].astype(np.int64))
    keep = np.maximum(p.sketch_keep, 4 * ks) if p.sketch_keep else np.zeros(nq, np.int64)
    width = max(int(ks.max()), 1) if nq else 1
    out_keys = np.empty((nq, width), np.int64)
    out_scores = np.empty((nq, width), np.float32)
    counts = np.zeros(nq, np.int64)
    delta = index._delta_runs()
    todo = np.flatnonzero(ks > 0)  # k = 0 finds nothing

    def run(first: int, stop: int, mark: np.ndarray) -> None:
        batch_kernels.search_many(
            qs,
            todo,
            first,
            stop,
            index._a,
            index._b,
            float(p.w),
            index._mult,
            index._sketch_bits,
            probes,
            index._steps,
            index._table_tags,
            index._key_shift,
            index._bucket_keys,
            index._bucket_starts,
            index._directory,
            index._dir_shift,
            index._entry_rows,
            index._epoch,
            index._dead_in_main > 0,
            delta,
            excluded,
            mark,
            index._sketch,
            keep,
            index._vectors,
            index._row_keys,
            _NO_MASKS if allowed is None else allowed,
            of,
            ks,
            out_keys,
            out_scores,
            counts,
        )

    m = len(todo)
    threads = max(1, min(threads, m))
    if threads == 1:
        run(0, m, index._mark)
    else:
        bounds = np.linspace(0, m, threads + 1).astype(int).tolist()
        pool = _pool(threads)
        done = [
            pool.submit(run, bounds[t], bounds[t + 1], mark)
            for t, mark in enumerate(index.thread_marks(threads))
        ]
        for f in done:
            f.result()
    return [(out_keys[i, : counts[i]], out_scores[i, : counts[i]]) for i in range(nq)]
