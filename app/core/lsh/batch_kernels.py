"""Compiled search of many queries in one call (`LSHIndex.search_many`): `kernels.search_one`
for each, with its own k, excluded row and allowed mask, and the top k of every query ranked
in compiled code."""

from __future__ import annotations

import numpy as np
from numba import njit

from nearline_rec.core.lsh.kernels import search_one


@njit(cache=True, nogil=True)
def _top_sorted(keys, scores, k):  # type: ignore[no-untyped-def]
    """`store._top_k` in compiled code for any k: by score, best first, ties by key ascending
    (keys are distinct: a stable sort by score of the candidates ordered by key)."""
    by_key = np.argsort(keys)
    ordered = scores[by_key]
    by_score = np.argsort(-ordered, kind="mergesort")[:k]
    pick = by_key[by_score]
    return keys[pick], scores[pick]


@njit(cache=True, nogil=True)
def search_many(  # type: ignore[no-untyped-def]
    qs,  # float32 (nq, dim), unit rows
    todo,  # int64: the queries to answer (those with k > 0)
    first,  # first of `todo` this call answers
    stop,  # one past its last
    a,
    b,
    w,
    mult,
    sketch_bits,
    probes,
    steps,
    table_tags,
    shift,
    bucket_keys,
    bucket_starts,
    directory,
    dir_shift,
    entry_rows,
    epoch,
    check_epoch,
    delta,
    excluded,  # int64 (nq,): a row query i never returns, -1 none
    mark,  # uint8 per row, all 0: this call's own scratch
    sketches,
    keep,  # (nq,) re-rank cut of each query (its k decides it)
    vectors,
    row_keys,
    allowed,  # bool (n_masks, keys): the keys each mask admits
    allowed_of,  # int64 (nq,): the mask of query i, -1 none
    ks,  # int64 (nq,): how many query i wants
    out_keys,  # int64 (nq, max k)
    out_scores,  # float32 (nq, max k)
    counts,  # int64 (nq,): how many query i found
):
    """`search_one` for queries todo[first:stop] of `qs`, each with its own k, excluded row and
    allowed mask, the top k of each written to its row of `out_keys` / `out_scores` (best
    first, ties by key ascending, as `store._top_k` orders them). Queries of one call share
    `mark`, so calls that run at once need their own; the index must not change meanwhile."""
    none = np.empty(0, np.int64)
    for t in range(first, stop):
        i = todo[t]
        ex = none if excluded[i] < 0 else excluded[i : i + 1]
        use = allowed_of[i] >= 0
        mask = allowed[allowed_of[i] if use else 0]
        found, scores, final = search_one(
            qs[i],
            a,
            b,
            w,
            mult,
            sketch_bits,
            probes,
            steps,
            table_tags,
            shift,
            bucket_keys,
            bucket_starts,
            directory,
            dir_shift,
            entry_rows,
            epoch,
            check_epoch,
            delta,
            ex,
            mark,
            sketches,
            keep[i],
            vectors,
            row_keys,
            mask,
            use,
            ks[i],
        )
        if not final:
            found, scores = _top_sorted(found, scores, ks[i])
        n = found.shape[0]
        out_keys[i, :n] = found
        out_scores[i, :n] = scores
        counts[i] = n
