"""Stream statistics: decayed popularity, shrunk rating averages, per-genre tops, recency."""

from __future__ import annotations

import numpy as np
import pytest

from nearline_rec.core.catalog import ItemCatalog
from nearline_rec.core.popularity import ItemCount, ItemStats, log_scaled, recency
from tests.unit.factories import DAY, T0, item

HOUR = 3600.0


def catalog(n: int = 6, genres=("Drama",)) -> ItemCatalog:
    cat = ItemCatalog(4)
    cat.upsert_many([item(f"i{k}", np.eye(4)[k % 4] + 0.01 * k, genres=genres) for k in range(n)])
    return cat


def test_popularity_halves_every_half_life():
    s = ItemStats(half_life_seconds=HOUR)
    s.add(0, 1.0, T0)
    s.add(1, 1.0, T0 + 2 * HOUR)
    pop = s.popularity(2)
    np.testing.assert_allclose(pop, [0.25, 1.0], rtol=1e-9)


def test_negative_weights_do_not_count_as_popularity():
    s = ItemStats(HOUR)
    s.add(0, -2.0, T0)
    s.add(1, 0.5, T0)
    np.testing.assert_allclose(s.popularity(2), [0.0, 0.5])


def test_long_streams_do_not_overflow():
    s = ItemStats(half_life_seconds=1.0)
    for n in range(200):
        s.add(n % 3, 1.0, T0 + n * 10.0)  # 2000 half-lives in all
    pop = s.popularity(3)
    assert np.all(np.isfinite(pop))
    # the newest event dominates: weight 1.0 now, the previous one 2^-10
    assert pop[199 % 3] >= 1.0 and pop.max() < 1.01


def test_out_of_order_event_adds_its_decayed_weight():
    s = ItemStats(HOUR)
    s.add(0, 1.0, T0 + HOUR)
    s.add(1, 1.0, T0)  # an hour older than the clock
    np.testing.assert_allclose(s.popularity(2), [1.0, 0.5])
    assert s.now == T0 + HOUR


def test_top_popular_orders_by_score_then_key_and_skips_non_recommendable():
    cat = catalog()
    cat.apply(item("i2", [0, 0, 1, 0], recommendable=False))
    s = ItemStats(DAY)
    for key, n in [(0, 2), (1, 5), (2, 9), (3, 2), (4, 1)]:
        for _ in range(n):
            s.add(key, 1.0, T0)
    top = s.top_popular(cat, 10)
    assert top.tolist() == [1, 0, 3, 4]  # 2 is hidden, 5 never engaged, 0 and 3 tie by key
    assert s.top_popular(cat, 2).tolist() == [1, 0]


def test_bayes_rating_shrinks_toward_the_global_mean():
    s = ItemStats(DAY, prior_count=5.0)
    s.add(0, 1.0, T0, rating=5.0)  # one 5-star rating
    for _ in range(10):
        s.add(1, 1.0, T0, rating=4.5)  # ten 4.5-star ratings
    s.add(2, 1.0, T0, rating=1.0)
    r = s.bayes_rating(4)
    assert r[1] > r[0]  # many good ratings beat one perfect rating
    mean = (5.0 + 45.0 + 1.0) / 12
    np.testing.assert_allclose(r[3], mean)  # an unrated item gets the global mean
    np.testing.assert_allclose(r[0], (5.0 + 5 * mean) / 6)
    assert s.rating_count(4).tolist() == [1, 10, 1, 0]


def test_genre_top_needs_min_ratings_and_the_genre():
    cat = ItemCatalog(4)
    cat.upsert_many(
        [
            item("d1", [1, 0, 0, 0], genres=("Drama",)),
            item("d2", [0, 1, 0, 0], genres=("Drama", "Crime")),
            item("d3", [0, 0, 1, 0], genres=("Drama",)),
            item("c1", [0, 0, 0, 1], genres=("Comedy",)),
        ]
    )
    s = ItemStats(DAY)
    for key, ratings in [(0, [3, 3, 3]), (1, [5, 5, 4]), (2, [5, 5]), (3, [5, 5, 5])]:
        for r in ratings:
            s.add(key, 1.0, T0, rating=float(r))
    assert s.genre_top(cat, "Drama", 3, 10).tolist() == [1, 0]  # d3 has too few ratings
    assert s.genre_top(cat, "Crime", 3, 10).tolist() == [1]
    assert s.genre_top(cat, "Comedy", 3, 10).tolist() == [3]
    # a lower bar admits d3, whose two 5-star ratings outrank d2 (cached per bar, not per genre)
    assert s.genre_top(cat, "Drama", 2, 10).tolist() == [2, 1, 0]


def test_recency_and_log_scaled():
    now = T0
    rel = np.array([now, now - 365 * DAY, now + DAY])
    np.testing.assert_allclose(recency(rel, now), [1.0, 0.5, 0.0])
    out = log_scaled(np.array([0.0, 1.0, 9.0]))
    np.testing.assert_allclose(out, [0.0, np.log(2) / np.log(10), 1.0])
    assert log_scaled(np.zeros(3)).tolist() == [0.0, 0.0, 0.0]


def test_derived_arrays_are_shared_until_the_next_event_and_agree_with_a_fresh_sort():
    """popularity/rating/top lists are computed once per statistics version: every k is a
    prefix of one sort, an event or a catalog change recomputes, and the arrays are read-only."""
    from nearline_rec.core.popularity import top_keys

    cat = catalog(n=600)
    s = ItemStats(HOUR)
    rng = np.random.default_rng(1)
    for step in range(40):
        s.add(int(rng.integers(0, 600)), float(rng.random()), T0 + step, float(rng.integers(1, 6)))
        pop = s.popularity(cat.capacity)
        assert s.popularity(cat.capacity) is pop
        assert not pop.flags.writeable
        for k in (3, 300, 10, 500):
            fresh = top_keys(pop, cat.recommendable_mask[: cat.capacity], k, positive=True)
            assert s.top_popular(cat, k).tolist() == fresh.tolist()
        assert s.bayes_rating(cat.capacity) is s.bayes_rating(cat.capacity)
    before = s.top_popular(cat, 5).tolist()
    cat.remove(cat.item_id(before[0]))  # a catalog change: the top list is made again
    assert s.top_popular(cat, 5).tolist() == before[1:] + s.top_popular(cat, 5).tolist()[4:]


def test_genre_popular_lists_are_each_genres_most_popular_recommendable_items():
    from nearline_rec.core.pipeline import Recommender
    from nearline_rec.core.rank import load_model

    cat = ItemCatalog(4)
    genres = [("A",), ("B",), ("A", "B"), ("C",)]
    cat.upsert_many(
        [item(f"i{k}", np.eye(4)[k % 4] + 0.01 * k, genres=genres[k % 4]) for k in range(40)]
    )
    cat.upsert_many([item("i2", np.eye(4)[2], genres=("A", "B"), recommendable=False)])
    rec = Recommender(cat, load_model())
    rng = np.random.default_rng(3)
    for _ in range(300):
        rec.stats.add(int(rng.integers(0, 36)), float(rng.random()), T0)  # i36..i39: no events
    lists = rec.genre_popular_lists(5)
    pop = rec.stats.popularity(cat.capacity)
    for g in ("A", "B", "C"):
        members = [
            k
            for k in range(40)
            if g in cat.meta(k).genres and cat.recommendable_mask[k] and pop[k] > 0
        ]
        best = sorted(members, key=lambda k: (-pop[k], k))[:5]
        assert [i.item_id for i in lists[g].items] == [cat.item_id(k) for k in best]
    assert "i2" not in {i.item_id for lst in lists.values() for i in lst.items}


@pytest.mark.parametrize("spread_days", [1.0, 400.0])  # 400 days: past the renormalisation
def test_set_items_equals_set_item_one_by_one(spread_days):
    rng = np.random.default_rng(5)
    keys = rng.permutation(300)[:200].tolist()
    counts = [
        ItemCount(
            float(rng.random() * 10), T0 + float(rng.random()) * spread_days * 86400, 4.0, 1.0
        )
        for _ in keys
    ]
    one, many = ItemStats(86400.0), ItemStats(86400.0)
    one.add(7, 1.0, T0 - 3600.0, 5.0)
    many.add(7, 1.0, T0 - 3600.0, 5.0)
    for key, count in zip(keys, counts, strict=True):
        one.set_item(key, count)
    many.set_items(keys, counts)
    assert many.now == one.now
    np.testing.assert_allclose(many.popularity(300), one.popularity(300), rtol=1e-9)
    np.testing.assert_allclose(many.bayes_rating(300), one.bayes_rating(300), rtol=1e-12)
    np.testing.assert_array_equal(many.rating_count(300), one.rating_count(300))
    many.set_items([], [])  # nothing to set
