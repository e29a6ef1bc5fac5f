"""Compiled query path of `LSHIndex` (numba): hashing, probing, bucket lookup, gather,
dedupe, sketch cut, the exact re-rank and (small k) the top-k of one query, in one call.

The numpy version of this path ran ~40 vectorised calls per query, each paying its own
dispatch and temporaries, plus a sort of every candidate row; at 100k items that overhead was
most of a query's time, and at 1M the gather was. Here each phase is a loop over independent
reads, prefetched in a loop of their own first (so the CPU overlaps their cache misses):
directory cells, bucket keys, bucket offsets, entries, sketches, rows. Each candidate row is
marked once in a byte array (excluded rows are pre-marked, so they are never taken), and the
rows nearest by sign sketch are kept with a 65-bin histogram instead of a partition. Updated
rows not yet merged are found through the delta runs' cell directories and a hash set of the
probed keys (`_delta_rows`). The kept rows are those of the numpy path
(`LSHIndex._candidate_rows` + `_filter_rows`, still used for the "and"/"vote" rules and a
candidate cap); scores are float32 inner products summed in a vectorised order (they may
differ from numpy's in the last bit), ranked best first with ties by key.

Compiled on first use and cached next to this file (numba `cache=True`); `index.warm_up` does it
when a worker starts.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)


@intrinsic
def _prefetch(typingctx, array, index):  # type: ignore[no-untyped-def]
    """Hint the CPU to fetch `array[index]` into cache (LLVM's prefetch: read, high
    locality). It never faults and retires without waiting for the data, so a loop of them
    over a phase's addresses starts all their cache misses at once; the loads of the phase
    itself, behind mispredicted branches, would otherwise start only a few at a time."""
    sig = types.void(array, index)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        array_type = signature.args[0]
        view = context.make_array(array_type)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(
            context, builder, array_type, view, [args[1]], wraparound=False
        )
        byte_ptr = builder.bitcast(ptr, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [byte_ptr.type, i32, i32, i32])
        fn = builder.module.declare_intrinsic("llvm.prefetch", [byte_ptr.type], fnty)
        builder.call(fn, [byte_ptr, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True, inline="always")
def _popcount(x: np.uint64) -> int:
    x = x - ((x >> np.uint64(1)) & _M1)
    x = (x & _M2) + ((x >> np.uint64(2)) & _M2)
    x = (x + (x >> np.uint64(4))) & _M4
    return int((x * _H01) >> np.uint64(56))


@njit(cache=True, nogil=True, inline="always")
def _pair(scores, moves, steps, t, at, base, i, j, m):  # type: ignore[no-untyped-def]
    """Score and key step of the two-coordinate probe of single steps i and j of table t."""
    # both directions of one coordinate are not a perturbation
    if (i - m if i >= m else i) == (j - m if j >= m else j):
        scores[at] = np.inf
    else:
        scores[at] = scores[base + i] + scores[base + j]
    moves[at] = steps[t, i] + steps[t, j]


@njit(cache=True, nogil=True)
def _kth_smallest(scores, k):  # type: ignore[no-untyped-def]
    """The k-th smallest of non-negative scores (inf allowed): a 1,024-bin histogram over
    [0, 2) finds its bin, a sort of that bin finds it (np.partition was ~13 us here, slowed
    by the many equal inf scores)."""
    bins = 1024
    hist = np.zeros(bins + 1, np.int64)
    for v in scores:
        hist[min(int(v * (bins / 2.0)), bins) if v < 2.0 else bins] += 1
    below = 0
    b = 0
    while below + hist[b] < k:
        below += hist[b]
        b += 1
    inside = np.empty(hist[b], np.float64)
    n = 0
    for v in scores:
        if (min(int(v * (bins / 2.0)), bins) if v < 2.0 else bins) == b:
            inside[n] = v
            n += 1
    inside.sort()
    return inside[k - below - 1]


@njit(cache=True, nogil=True)
def probe_keys(codes, frac, probes, steps, table_tags, shift):  # type: ignore[no-untyped-def]
    """Layout keys (uint32, unsorted, may repeat on a hash collision) of each table's bucket
    and of the `probes` x L lowest-scored neighbouring buckets (`LSHIndex._probe_keys`)."""
    L = frac.shape[0]
    m = frac.shape[1]
    total = probes * L
    out = np.empty(L + total, np.uint32)
    for t in range(L):
        out[t] = np.uint32(codes[t] >> shift) | table_tags[t]
    if total == 0:
        return out
    per = 2 * m + 6
    scores = np.empty(L * per, np.float64)
    moves = np.empty(L * per, np.uint64)
    for t in range(L):
        base = t * per
        # the squared distance to each of the 2m boundaries (down: frac, up: 1 - frac), and
        # the 4 nearest kept sorted in registers
        v0 = v1 = v2 = v3 = np.inf
        i0 = i1 = i2 = i3 = 0
        for s in range(2 * m):
            d = frac[t, s] if s < m else 1.0 - frac[t, s - m]
            v = d * d
            scores[base + s] = v
            moves[base + s] = steps[t, s]
            if v < v3:
                if v < v1:
                    v3, i3, v2, i2 = v2, i2, v1, i1
                    if v < v0:
                        v1, i1, v0, i0 = v0, i0, v, s
                    else:
                        v1, i1 = v, s
                elif v < v2:
                    v3, i3, v2, i2 = v2, i2, v, s
                else:
                    v3, i3 = v, s
        # the 6 pairs of them (np.triu_indices(4, 1) order)
        at = base + 2 * m
        _pair(scores, moves, steps, t, at, base, i0, i1, m)
        _pair(scores, moves, steps, t, at + 1, base, i0, i2, m)
        _pair(scores, moves, steps, t, at + 2, base, i0, i3, m)
        _pair(scores, moves, steps, t, at + 3, base, i1, i2, m)
        _pair(scores, moves, steps, t, at + 4, base, i1, i3, m)
        _pair(scores, moves, steps, t, at + 5, base, i2, i3, m)
    cut = _kth_smallest(scores, total)
    n = L
    ties = 0
    for t in range(L):  # every score below the cut, then ties at it until full
        code = codes[t]
        tag = table_tags[t]
        for c in range(t * per, (t + 1) * per):
            if scores[c] < cut:
                out[n] = np.uint32((code + moves[c]) >> shift) | tag
                n += 1
            elif scores[c] == cut:
                ties += 1
    if ties:
        for t in range(L):
            for c in range(t * per, (t + 1) * per):
                if n < L + total and scores[c] == cut:
                    out[n] = np.uint32((codes[t] + moves[c]) >> shift) | table_tags[t]
                    n += 1
    return out


@njit(cache=True, nogil=True, inline="always")
def _lower(a, key, lo, hi):  # type: ignore[no-untyped-def]
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True)
def cell_directory(sorted_keys, bits):  # type: ignore[no-untyped-def]
    """int32 directory of uint32 `sorted_keys` on their top `bits` bits: entry c is the
    first position of a key whose top bits are >= c, the last is len(sorted_keys), so the
    keys of cell c are [directory[c], directory[c + 1]). One pass over cells and keys."""
    cells = 1 << bits
    shift = np.uint32(32 - bits)
    out = np.empty(cells + 1, np.int32)
    n = sorted_keys.shape[0]
    j = 0
    for c in range(cells):
        while j < n and np.int64(sorted_keys[j] >> shift) < c:
            j += 1
        out[c] = j
    out[cells] = n
    return out


@njit(cache=True, nogil=True, inline="always")
def _shift_of(directory):  # type: ignore[no-untyped-def]
    """The key shift of a `cell_directory` (its length is 2^bits + 1)."""
    bits = 0
    while (1 << bits) < directory.shape[0] - 1:
        bits += 1
    return np.uint32(32 - bits)


@njit(cache=True, nogil=True)
def _run_ranges(keys, run_keys, directory, lo, hi):  # type: ignore[no-untyped-def]
    """[lo, hi) in the sorted `run_keys` of each of `keys` (empty where absent), through the
    run's cell directory; phase by phase with prefetches, as in `query`."""
    shift = _shift_of(directory)
    for i in range(keys.shape[0]):
        _prefetch(directory, np.int64(keys[i] >> shift))
    for i in range(keys.shape[0]):
        c = np.int64(keys[i] >> shift)
        lo[i] = directory[c]
        hi[i] = directory[c + 1]
    for i in range(keys.shape[0]):
        if lo[i] < hi[i]:
            _prefetch(run_keys, lo[i])
    for i in range(keys.shape[0]):
        # a cell holds ~8 sorted keys: count those below and up to the key (no branches to
        # mispredict, unlike a binary search)
        key = keys[i]
        below = 0
        upto = 0
        for e in range(lo[i], hi[i]):
            below += run_keys[e] < key
            upto += run_keys[e] <= key
        hi[i] = lo[i] + upto
        lo[i] += below


_NO_KEY = np.uint64(1 << 32)  # an empty slot: no uint32 key equals it
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, nogil=True, inline="always")
def _slot(key, bits):  # type: ignore[no-untyped-def]
    """Fibonacci hashing of a uint64 key to `bits` bits."""
    return np.int64((key * _GOLDEN) >> np.uint64(64 - bits))


@njit(cache=True, nogil=True)
def _delta_rows(keys, delta, epoch):  # type: ignore[no-untyped-def]
    """Live rows of the delta runs in the buckets of `keys` (`LSHIndex._delta_candidates`).
    `delta`: (large keys, large rows, large directory, small keys, small rows, small epochs,
    small directory, tail keys, tail rows, tail epochs); directories by `cell_directory`."""
    large_keys, large_rows, large_dir = delta[:3]
    small_keys, small_rows, small_epochs, small_dir = delta[3:7]
    tail_keys, tail_rows, tail_epochs = delta[7:]
    if not (large_keys.shape[0] or small_keys.shape[0] or tail_keys.shape[0]):
        return np.empty(0, np.int32)
    out = []
    lo = np.empty(keys.shape[0], np.int64)
    hi = np.empty(keys.shape[0], np.int64)
    if large_keys.shape[0]:
        _run_ranges(keys, large_keys, large_dir, lo, hi)
        for i in range(keys.shape[0]):
            for e in range(lo[i], hi[i]):
                r = large_rows[e]
                if epoch[r] == 1:
                    out.append(r)
    if small_keys.shape[0]:
        _run_ranges(keys, small_keys, small_dir, lo, hi)
        for i in range(keys.shape[0]):
            for e in range(lo[i], hi[i]):
                r = small_rows[e]
                if epoch[r] == small_epochs[e]:
                    out.append(r)
    if tail_keys.shape[0]:
        # The tail is unsorted: each of its keys is looked up in a small open-addressing set
        # of the probed keys (a binary search each, with its mispredicted branches, cost ~35 us
        # a query for a tail of ~750 entries at L = 24).
        bits = 1
        while (1 << bits) < 2 * keys.shape[0]:
            bits += 1
        mask = (1 << bits) - 1
        slots = np.full(mask + 1, _NO_KEY, np.uint64)
        for i in range(keys.shape[0]):
            key = np.uint64(keys[i])
            h = _slot(key, bits)
            while slots[h] != _NO_KEY and slots[h] != key:
                h = (h + 1) & mask
            slots[h] = key
        for e in range(tail_keys.shape[0]):
            key = np.uint64(tail_keys[e])
            h = _slot(key, bits)
            while slots[h] != _NO_KEY:
                if slots[h] == key:
                    r = tail_rows[e]
                    if epoch[r] == tail_epochs[e]:
                        out.append(r)
                    break
                h = (h + 1) & mask
    return np.array(out, dtype=np.int32) if out else np.empty(0, np.int32)


@njit(cache=True, nogil=True)
def query(  # type: ignore[no-untyped-def]
    keys,  # uint32 layout keys to read (probe_keys)
    bucket_keys,  # uint32 distinct keys, sorted
    bucket_starts,  # int32 offsets into entry_rows (len = buckets + 1)
    directory,  # int32 cell -> first bucket (len = cells + 1)
    dir_shift,  # uint32
    entry_rows,  # int32
    epoch,  # int32 per row; entries of the arrays are live while 0
    check_epoch,  # bool: some rows of the arrays are dead
    extra,  # int32 live rows found in the delta, may repeat
    excluded,  # int64 rows never to return
    mark,  # uint8 per row, all 0 on entry and on return
    sketches,  # uint64 per row
    query_sketch,  # uint64
    keep,  # re-rank only the `keep` nearest by sketch (every tie kept); 0 = all
    vectors,  # float32 (rows, dim)
    q,  # float32 (dim,)
    row_keys,  # int64 key of each row
    allowed,  # bool per key: only these keys may be returned (when use_allowed)
    use_allowed,  # bool
):
    """(rows int32, scores float32) of the candidates of one query under the "or" rule.

    Each phase's reads are prefetched in a loop of their own before the phase runs (the
    phases before them computed the addresses): at 1M x 64 this took a query from ~125 to
    ~95 us, as the binary searches, bucket ranges and the dedupe branch otherwise keep only a
    few misses in flight."""
    n_probe = keys.shape[0]
    nb = bucket_keys.shape[0]
    start = np.empty(n_probe, np.int64)
    stop = np.empty(n_probe, np.int64)
    for i in range(n_probe):
        _prefetch(directory, np.int64(keys[i] >> dir_shift))
    for i in range(n_probe):
        c = np.int64(keys[i] >> dir_shift)
        start[i] = directory[c]
        stop[i] = directory[c + 1]
    for i in range(n_probe):
        if start[i] < stop[i]:
            _prefetch(bucket_keys, start[i])
    total = extra.shape[0]
    for i in range(n_probe):
        key = keys[i]
        at = _lower(bucket_keys, key, start[i], stop[i])
        start[i] = at if at < nb and bucket_keys[at] == key else -1
    for i in range(n_probe):
        if start[i] >= 0:
            _prefetch(bucket_starts, start[i])
    for i in range(n_probe):
        b = start[i]
        if b >= 0:
            start[i] = bucket_starts[b]
            stop[i] = bucket_starts[b + 1]
            total += stop[i] - start[i]
        else:
            start[i] = 0
            stop[i] = 0
    for i in range(n_probe):
        if start[i] < stop[i]:
            _prefetch(entry_rows, start[i])
            _prefetch(entry_rows, stop[i] - 1)
    rows = np.empty(total, np.int32)
    n = 0
    for i in range(n_probe):
        for e in range(start[i], stop[i]):
            rows[n] = entry_rows[e]
            n += 1
    for j in range(extra.shape[0]):
        rows[n] = extra[j]
        n += 1
    if check_epoch:
        for j in range(n):
            _prefetch(epoch, rows[j])
    if keep > 0 and n > keep:
        for j in range(n):
            _prefetch(sketches, rows[j])
    for r in excluded:
        mark[r] = 1
    m = 0
    first_extra = n - extra.shape[0]
    if not use_allowed:
        # Branch-free dedupe: every row is written at m, and m advances only for a row not
        # marked yet. Whether a row repeats is a coin toss where the tables overlap, so the
        # branch it replaces was often mispredicted (paired A/B: the gather, dedupe and
        # re-rank took 0.89-0.95x as long on few-large 100k x 64, 0.98x on wide-powerlaw).
        for j in range(n):
            r = rows[j]
            take = np.uint8(1) - mark[r]
            # an extra row is live by construction; a row of the arrays only while its epoch
            # is 0 (mostly true: a predictable branch)
            if check_epoch and j < first_extra and epoch[r] != 0:
                take = np.uint8(0)
            rows[m] = r
            m += take
            mark[r] |= take
        n = 0
    for j in range(n):
        r = rows[j]
        if mark[r] == 0 and (j >= first_extra or not check_epoch or epoch[r] == 0):
            key = row_keys[r]
            if key >= allowed.shape[0] or not allowed[key]:
                continue
            mark[r] = 1
            rows[m] = r
            m += 1
    for j in range(m):
        mark[rows[j]] = 0
    for r in excluded:
        mark[r] = 0
    if keep > 0 and m > keep:
        dist = np.empty(m, np.int64)
        for j in range(m):
            dist[j] = _popcount(sketches[rows[j]] ^ query_sketch)
        hist = np.zeros(65, np.int64)
        for j in range(m):
            hist[dist[j]] += 1
        cut = 64
        seen = 0
        for d in range(65):
            seen += hist[d]
            if seen >= keep:
                cut = d
                break
        kept = 0
        for j in range(m):
            if dist[j] <= cut:
                rows[kept] = rows[j]
                kept += 1
        m = kept
    out = rows[:m].copy()
    return out, _dots(vectors, out, q)


@njit(cache=True, nogil=True, fastmath=True)
def _dots(vectors, rows, q):  # type: ignore[no-untyped-def]
    """float32 inner products of the rows with q (reassociated, so vectorised)."""
    scores = np.empty(rows.shape[0], np.float32)
    for j in range(rows.shape[0]):
        for c in range(0, q.shape[0], 16):  # a 64-byte cache line is 16 float32
            _prefetch(vectors[rows[j]], c)
    for j in range(rows.shape[0]):
        r = rows[j]
        s = np.float32(0.0)
        for c in range(q.shape[0]):
            s += vectors[r, c] * q[c]
        scores[j] = s
    return scores


@njit(cache=True, nogil=True)
def top_small(scores, keys, k):  # type: ignore[no-untyped-def]
    """`store._top_k` for a small k (insertion into a sorted list of k): best score first,
    ties by key ascending."""
    k = min(k, scores.shape[0])
    best_s = np.empty(k, np.float32)
    best_k = np.empty(k, np.int64)
    n = 0
    for j in range(scores.shape[0]):
        s = scores[j]
        key = keys[j]
        if n == k and (s < best_s[k - 1] or (s == best_s[k - 1] and key > best_k[k - 1])):
            continue
        at = n if n < k else k - 1
        while at > 0 and (s > best_s[at - 1] or (s == best_s[at - 1] and key < best_k[at - 1])):
            if at < k:
                best_s[at] = best_s[at - 1]
                best_k[at] = best_k[at - 1]
            at -= 1
        best_s[at] = s
        best_k[at] = key
        if n < k:
            n += 1
    return best_k, best_s


@njit(cache=True, nogil=True, inline="always")
def _from_projections(raw, b, w, mult, sketch_bits):  # type: ignore[no-untyped-def]
    """(L,) uint64 bucket keys, (L, m) fractional positions and the uint64 sign sketch
    (numpy.packbits bit order) of a vector's float64 projections `raw` (x . a): the same
    IEEE operations as `LSHIndex._hash`, so the same keys for the same `raw`."""
    L = mult.shape[0]
    m = mult.shape[1]
    codes = np.empty(L, np.uint64)
    frac = np.empty((L, m), np.float64)
    for t in range(L):
        acc = np.uint64(0)
        for i in range(m):
            j = t * m + i
            p = (raw[j] + b[j]) / w
            f = np.floor(p)
            frac[t, i] = p - f
            acc += np.uint64(np.int64(f)) * mult[t, i]  # wraps mod 2^64, as the hash requires
        codes[t] = acc
    sketch = np.uint64(0)
    for i in range(sketch_bits):
        if raw[i] > 0:
            sketch |= np.uint64(1) << np.uint64(8 * (i // 8) + 7 - i % 8)
    return codes, frac, sketch


@njit(cache=True, nogil=True)
def hash_query(q, a, b, w, mult, sketch_bits):  # type: ignore[no-untyped-def]
    """`LSHIndex._hash` of one query: (L,) uint64 bucket keys, (L, m) fractional positions
    and the sign sketch. The projections are summed in another order than numpy's product: a
    floor can differ only for a projection within ~1e-16 of a boundary, which moves a query's
    probes, never a stored row (stored rows are hashed from numpy's product, see
    `stored_keys`)."""
    dim = a.shape[0]
    n_proj = a.shape[1]
    raw = np.zeros(n_proj, np.float64)
    for c in range(dim):
        qc = np.float64(q[c])
        for j in range(n_proj):
            raw[j] += qc * a[c, j]
    return _from_projections(raw, b, w, mult, sketch_bits)


@njit(cache=True, nogil=True)
def stored_keys(raw, b, w, mult, sketch_bits, shift, table_tags):  # type: ignore[no-untyped-def]
    """(L,) uint32 layout keys and the sign sketch of one stored row from its projections
    `raw` (numpy's `x @ a`, as `LSHIndex._hash` computes them): `_hash` + `_tagged` in one
    call, for the single-row update path."""
    codes, _, sketch = _from_projections(raw, b, w, mult, sketch_bits)
    tagged = np.empty(codes.shape[0], np.uint32)
    for t in range(codes.shape[0]):
        tagged[t] = np.uint32(codes[t] >> shift) | table_tags[t]
    return tagged, sketch


@njit(cache=True, nogil=True)
def search_one(  # type: ignore[no-untyped-def]
    q,
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
    excluded,
    mark,
    sketches,
    keep,
    vectors,
    row_keys,
    allowed,
    use_allowed,
    k,
):
    """One query end to end under the "or" rule: hash, probe, gather, cut, re-rank. Returns
    (keys, scores, final): the top k, best first, when k <= SMALL_K (final); else every
    re-ranked candidate, for `store._top_k`."""
    codes, frac, sketch = hash_query(q, a, b, w, mult, sketch_bits)
    keys = probe_keys(codes, frac, probes, steps, table_tags, shift)
    extra = _delta_rows(keys, delta, epoch)
    rows, scores = query(
        keys,
        bucket_keys,
        bucket_starts,
        directory,
        dir_shift,
        entry_rows,
        epoch,
        check_epoch,
        extra,
        excluded,
        mark,
        sketches,
        sketch,
        keep,
        vectors,
        q,
        row_keys,
        allowed,
        use_allowed,
    )
    found = np.empty(rows.shape[0], np.int64)
    for j in range(rows.shape[0]):
        found[j] = row_keys[rows[j]]
    if k <= SMALL_K:
        best_keys, best_scores = top_small(scores, found, k)
        return best_keys, best_scores, True
    return found, scores, False


# Up to this k the insertion top-k (`top_small`) beats `store._top_k`'s partition and sort.
SMALL_K = 32
