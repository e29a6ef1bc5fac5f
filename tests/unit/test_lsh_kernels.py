"""Pieces of the compiled LSH query against plain numpy/Python references, on inputs large
enough to exercise every branch (hash-set collisions, repeated keys, empty cells)."""

from __future__ import annotations

import numpy as np
import pytest

from nearline_rec.core.lsh import kernels as lsh_kernels

RNG = np.random.default_rng(7)


@pytest.mark.parametrize("n", [0, 1, 37, 5000])
def test_cell_directory_equals_searchsorted(n):
    keys = np.sort(RNG.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32))
    if n:
        keys[n // 2 : n // 2 + n // 10] = keys[n // 2]  # a run of one repeated key
    for bits in (1, 4, 11):
        cells = np.arange(2**bits, dtype=np.uint64) << np.uint64(32 - bits)
        expected = np.append(np.searchsorted(keys, cells.astype(np.uint32)), n)
        np.testing.assert_array_equal(lsh_kernels.cell_directory(keys, bits), expected)


def _delta(keys, rows, epochs, tail):
    """A delta of one large run, one small run and the tail (keys, rows, epochs)."""
    order = np.argsort(keys, kind="stable")
    k, r, e = keys[order], rows[order], epochs[order]
    half = k.shape[0] // 2
    large_dir = lsh_kernels.cell_directory(k[:half], 6)
    small_dir = lsh_kernels.cell_directory(k[half:], 6)
    return (k[:half], r[:half], large_dir, k[half:], r[half:], e[half:], small_dir, *tail)


def test_delta_rows_equal_a_python_reference():
    n_rows = 4000
    pool = RNG.integers(0, 2**32, 800, dtype=np.uint64).astype(np.uint32)  # few keys: repeats
    probe = RNG.choice(pool, 500)  # may repeat a key, as probes on a hash collision do
    keys = RNG.choice(pool, 6000)
    rows = RNG.integers(0, n_rows, 6000).astype(np.int32)
    epochs = RNG.integers(2, 5, 6000).astype(np.int32)
    tail_keys = RNG.choice(pool, 1500)
    tail_rows = RNG.integers(0, n_rows, 1500).astype(np.int32)
    tail_epochs = RNG.integers(2, 5, 1500).astype(np.int32)
    epoch = RNG.integers(1, 5, n_rows).astype(np.int32)  # 1: live in the large run
    delta = _delta(keys, rows, epochs, (tail_keys, tail_rows, tail_epochs))

    wanted = set(probe.tolist())
    repeats = {k: int((probe == k).sum()) for k in wanted}
    large_keys, large_rows, _, small_keys, small_rows, small_epochs = delta[:6]
    # the runs give a probed key's live entries once per occurrence of the key in the probes
    expected_runs = [
        r
        for k, r in zip(large_keys, large_rows, strict=True)
        if k in wanted and epoch[r] == 1
        for _ in range(repeats[k])
    ] + [
        r
        for k, r, e in zip(small_keys, small_rows, small_epochs, strict=True)
        if k in wanted and epoch[r] == e
        for _ in range(repeats[k])
    ]
    # the tail gives each live entry once, however often its key was probed
    expected_tail = [
        r
        for k, r, e in zip(tail_keys, tail_rows, tail_epochs, strict=True)
        if k in wanted and epoch[r] == e
    ]
    got = lsh_kernels._delta_rows(probe, delta, epoch)
    assert len(expected_runs) > 100 and len(expected_tail) > 100  # every part is reached
    split = got.shape[0] - len(expected_tail)
    assert sorted(got[:split].tolist()) == sorted(expected_runs)
    assert sorted(got[split:].tolist()) == sorted(expected_tail)
