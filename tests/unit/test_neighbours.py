"""Item-to-item neighbour cache: a cached answer is always what a fresh search would give."""

from __future__ import annotations

import numpy as np
import pytest

from nearline_rec.core.catalog import IndexConfig, ItemCatalog
from nearline_rec.core.neighbours import NeighbourCache
from tests.unit.factories import item


def _catalog(n: int, dim: int, *, exact_below: int, cache: int, seed: int = 0) -> ItemCatalog:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(n // 25, 2), dim))
    vecs = centres[rng.integers(0, len(centres), n)] + 0.3 * rng.standard_normal((n, dim))
    cat = ItemCatalog(
        dim,
        IndexConfig(exact_below=exact_below, neighbour_cache=cache, w=2.0, m=4, tables=12, seed=3),
    )
    cat.upsert_many([item(f"i{k}", v) for k, v in enumerate(vecs)])
    return cat


def _fresh(cat: ItemCatalog, key: int, m: int) -> tuple[list[int], list[float]]:
    keys, scores = cat.search(cat.vectors(np.array([key]))[0], m, exclude={key})
    return keys.tolist(), scores.tolist()


def _assert_same_answer(
    got: tuple[list[int], list[float]], want: tuple[list[int], list[float]], where: str
) -> None:
    """Same neighbours with the same scores, up to float32 rounding: the cached answer and a
    fresh search may sum a dot product in another order (another BLAS kernel), so a score
    can differ in its last bit and two items whose scores tie to that bit may swap places."""
    (got_keys, got_scores), (want_keys, want_scores) = got, want
    assert len(got_keys) == len(want_keys), where
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-6, err_msg=where)
    tol = 1e-5 * max(1.0, max((abs(s) for s in want_scores), default=1.0))
    want_score = dict(zip(want_keys, want_scores, strict=True))
    last = want_scores[-1] if want_scores else 0.0
    for k, s in zip(got_keys, got_scores, strict=True):
        if k in want_score:
            assert abs(want_score[k] - s) <= tol, f"{where}: key {k}"
        else:  # only a near-tie at the cut may differ
            assert abs(s - last) <= tol, f"{where}: key {k} ({s}) not in {want_keys}"


@pytest.mark.parametrize("exact_below", [10_000, 50], ids=["exact", "lsh"])
def test_cached_answers_equal_fresh_searches_through_changes(exact_below: int) -> None:
    """Random item inserts, moves and deletes between lookups of a few hot seeds: every
    answer (cached or not) equals a fresh search on the catalog as it is then."""
    dim, m = 8, 15
    cat = _catalog(400, dim, exact_below=exact_below, cache=64)
    assert cat.uses_lsh == (exact_below == 50)
    rng = np.random.default_rng(7)
    next_id = 400
    for step in range(300):
        op = rng.integers(0, 4)
        if op == 0:  # a new item, near an existing one half the time
            base = cat.vectors(np.array([int(rng.integers(0, 400))]))[0]
            v = base + 0.05 * rng.standard_normal(dim) if step % 2 else rng.standard_normal(dim)
            cat.upsert_many([item(f"i{next_id}", v)])
            next_id += 1
        elif op == 1:  # an item moves
            cat.upsert_many([item(f"i{int(rng.integers(0, next_id))}", rng.standard_normal(dim))])
        elif op == 2:  # an item goes
            cat.remove(f"i{int(rng.integers(0, next_id))}")
        for seed_id in (f"i{int(s)}" for s in rng.integers(0, 40, 3)):  # hot seeds repeat
            key = cat.key(seed_id)
            if key is None:
                continue
            keys, scores = cat.neighbours(key, m)
            _assert_same_answer(
                (keys.tolist(), scores.tolist()), _fresh(cat, key, m), f"step {step}"
            )
    cache = cat.neighbour_cache
    assert cache.hits > 100 and cache.dropped > 0  # it served answers and it invalidated


def test_a_moved_seed_and_a_deleted_neighbour_are_not_served_stale() -> None:
    cat = _catalog(200, 6, exact_below=10_000, cache=16)
    seed = cat.key("i0")
    keys, _ = cat.neighbours(seed, 5)
    gone = cat.item_id(int(keys[0]))
    cat.remove(gone)
    after, _ = cat.neighbours(seed, 5)
    assert cat.key(gone) is None and int(keys[0]) not in after.tolist()
    cat.upsert_many([item("i0", -cat.vectors(np.array([seed]))[0])])  # the seed itself moves
    assert cat.neighbours(seed, 5)[0].tolist() == _fresh(cat, seed, 5)[0]


def test_smaller_requests_share_an_entry_and_larger_ones_search_again() -> None:
    cat = _catalog(200, 6, exact_below=10_000, cache=16)
    seed = cat.key("i3")
    big = cat.neighbours(seed, 20)[0].tolist()
    assert cat.neighbours(seed, 5)[0].tolist() == big[:5]
    assert cat.neighbour_cache.hits == 1
    assert cat.neighbours(seed, 30)[0].tolist() == _fresh(cat, seed, 30)[0]
    assert cat.neighbour_cache.misses == 2


def test_capacity_bounds_the_cache_least_recently_used_first() -> None:
    cache = NeighbourCache(dim=2, capacity=2)
    keys, scores = np.array([5, 6]), np.array([0.9, 0.8], dtype=np.float32)
    for seed in (1, 2):
        cache.put(seed, np.array([1.0, 0.0]), 2, keys, scores)
    assert cache.get(1, 2) is not None  # 1 is now the most recent
    cache.put(3, np.array([0.0, 1.0]), 2, keys, scores)
    assert len(cache) == 2 and cache.get(2, 2) is None and cache.get(1, 2) is not None


def test_a_change_below_every_threshold_keeps_the_entry() -> None:
    cache = NeighbourCache(dim=2, capacity=4)
    cache.put(1, np.array([1.0, 0.0]), 2, np.array([5, 6]), np.array([0.9, 0.8]))
    cache.changed(np.array([[0.5, 0.866]]))  # cosine 0.5 < 0.8: cannot enter the top 2
    assert cache.get(1, 2) is not None
    cache.changed(np.array([[0.85, 0.527]]))  # 0.85 >= 0.8: it would
    assert cache.get(1, 2) is None


def test_zero_capacity_caches_nothing() -> None:
    cat = _catalog(100, 6, exact_below=10_000, cache=0)
    cat.neighbours(cat.key("i1"), 5)
    cat.neighbours(cat.key("i1"), 5)
    assert len(cat.neighbour_cache) == 0 and cat.neighbour_cache.hits == 0
    with pytest.raises(ValueError, match="capacity"):
        NeighbourCache(dim=2, capacity=-1)
