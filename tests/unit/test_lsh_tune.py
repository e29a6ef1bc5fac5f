"""Unit tests of LSH tuning: the recall metric, the p-stable formula, the sweep and the pick."""

from __future__ import annotations

import numpy as np
import pytest

from nearline_rec.core.lsh import LSHParams
from nearline_rec.core.lsh_tune import (
    TuneResult,
    clustered_vectors,
    collision_probability,
    default_grid,
    recall_at_k,
    recommend,
    tune,
)


def result(recall: float, qps: float, name: int) -> TuneResult:
    return TuneResult(
        params=LSHParams(dim=4, seed=name),
        recall=recall,
        qps=qps,
        mean_candidates=10.0,
        build_seconds=0.1,
    )


def test_recall_at_k_known_inputs():
    approx = [np.array([1, 2, 3]), np.array([4, 5, 6])]
    exact = [np.array([1, 2, 9]), np.array([7, 8, 6])]
    assert recall_at_k(approx, exact, 3) == pytest.approx((2 / 3 + 1 / 3) / 2)
    # Only the first k of each list count.
    assert recall_at_k([np.array([9, 1])], [np.array([1, 9])], 1) == 0.0
    assert recall_at_k([np.array([1, 9])], [np.array([1, 9])], 1) == 1.0
    # A short exact answer (small catalogue) is the whole truth.
    assert recall_at_k([np.array([3, 4, 5])], [np.array([3, 4])], 10) == 1.0
    # Nothing to find: skipped.
    assert recall_at_k([np.array([1]), np.array([])], [np.array([1]), np.array([])], 5) == 1.0


def test_recall_at_k_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="queries"):
        recall_at_k([np.array([1])], [], 1)
    with pytest.raises(ValueError, match="k"):
        recall_at_k([np.array([1])], [np.array([1])], 0)


def test_recommend_picks_fastest_meeting_target():
    results = [result(0.99, 100.0, 1), result(0.96, 900.0, 2), result(0.80, 5000.0, 3)]
    assert recommend(results, target_recall=0.95).params.seed == 2
    assert recommend(results, target_recall=0.98).params.seed == 1


def test_recommend_falls_back_to_highest_recall():
    results = [result(0.70, 100.0, 1), result(0.85, 50.0, 2), result(0.85, 80.0, 3)]
    assert recommend(results, target_recall=0.95).params.seed == 3
    with pytest.raises(ValueError):
        recommend([])


def test_collision_probability_matches_simulation():
    rng = np.random.default_rng(0)
    w = 2.0
    for distance in (0.3, 0.8, 1.4):
        # a.(u - v) ~ N(0, distance^2) for a ~ N(0, I); the shared offset b ~ U[0, w).
        proj = rng.standard_normal(200_000) * distance
        b = rng.uniform(0, w, proj.shape[0])
        simulated = np.mean(np.floor(b / w) == np.floor((proj + b) / w))
        assert collision_probability(distance, w) == pytest.approx(simulated, abs=0.006)
    p = collision_probability(np.array([0.2, 0.6, 1.0, 1.4]), w)
    assert np.all(np.diff(p) < 0) and np.all((p > 0) & (p < 1))
    assert collision_probability(0.6, 3.0) > collision_probability(0.6, 2.0)


def test_clustered_vectors_are_unit_and_seeded():
    x = clustered_vectors(300, 8, seed=3)
    assert x.shape == (300, 8) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(x, clustered_vectors(300, 8, seed=3))
    assert not np.array_equal(x, clustered_vectors(300, 8, seed=4))


def test_tune_measures_each_grid_entry_in_order():
    x = clustered_vectors(800, 16, seed=5)
    grid = [
        LSHParams(dim=16, w=2.0, m=8, L=4),
        LSHParams(dim=16, w=2.0, m=8, L=16),
        LSHParams(dim=16, w=2.0, m=8, L=16, probes=4),
        LSHParams(dim=16, w=2.0, m=8, L=4, combine="and"),
    ]
    calls = []
    results = tune(x, k=10, n_queries=60, grid=grid, progress=lambda i, n: calls.append((i, n)))
    assert [r.params for r in results] == grid
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    for r in results:
        assert 0.0 <= r.recall <= 1.0 and r.qps > 0 and r.build_seconds >= 0
        assert 0 < r.mean_candidates < len(x)
    # Same seed: 16 tables extend the 4, and probes extend the 16, so recall cannot drop.
    assert results[0].recall <= results[1].recall <= results[2].recall
    assert results[0].mean_candidates < results[1].mean_candidates < results[2].mean_candidates
    assert results[2].recall >= 0.9
    # AND over 4 tables keeps fewer candidates than OR.
    assert results[3].mean_candidates < results[0].mean_candidates
    # Entries differing only in query-time fields shared one build, even when not adjacent.
    assert results[1].build_seconds == results[2].build_seconds
    assert results[0].build_seconds == results[3].build_seconds


def test_tune_rejects_a_grid_of_another_dimension():
    with pytest.raises(ValueError, match="dim"):
        tune(clustered_vectors(100, 8), grid=[LSHParams(dim=16)], n_queries=5)


@pytest.mark.parametrize("n_items", [1_000, 20_000, 100_000, 2_000_000])
def test_default_grid_is_valid_and_distinct(n_items):
    grid = default_grid(n_items, 32)
    assert grid and all(p.dim == 32 for p in grid)
    assert len(set(grid)) == len(grid)
