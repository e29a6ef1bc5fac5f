"""Item catalog and user directory: upsert/remove/reindex, stable keys, exact vs LSH path."""

from __future__ import annotations

import numpy as np
import pytest

from nearline_rec.core.catalog import IndexConfig, ItemCatalog
from nearline_rec.core.events import ItemUpdate
from nearline_rec.core.users import UserDirectory
from tests.unit.factories import T0, cluster_vectors, item, two_clusters

DIM = 16


def ids(cat: ItemCatalog, keys: np.ndarray) -> list[str]:
    return [cat.item_id(int(k)) for k in keys]


def test_upsert_stores_unit_vectors_and_metadata():
    cat = ItemCatalog(4)
    cat.apply(item("i1", [3.0, 0.0, 4.0, 0.0], genres=("Drama",), year=1999, title="One"))
    assert len(cat) == 1 and "i1" in cat and "nope" not in cat
    np.testing.assert_allclose(cat.vector("i1"), [0.6, 0.0, 0.8, 0.0], rtol=1e-6)
    meta = cat.meta(cat.key("i1"))
    assert (meta.title, meta.genres, meta.year) == ("One", ("Drama",), 1999)
    assert meta.recommendable


def test_keys_are_dense_and_stable_across_update_remove_and_return():
    cat = ItemCatalog(4)
    cat.upsert_many([item(f"i{n}", [1.0, n, 0.0, 0.0]) for n in range(3)])
    keys = {i: cat.key(i) for i in ("i0", "i1", "i2")}
    assert sorted(keys.values()) == [0, 1, 2]
    cat.apply(item("i1", [0.0, 0.0, 1.0, 0.0]))  # move
    assert cat.key("i1") == keys["i1"]
    assert cat.remove("i1")
    assert cat.key("i1") is None and cat.vector("i1") is None and "i1" not in cat
    assert len(cat) == 2
    cat.apply(item("i1", [0.0, 1.0, 0.0, 0.0]))  # comes back under its old key
    assert cat.key("i1") == keys["i1"]
    assert cat.item_id(keys["i1"]) == "i1"
    cat.apply(item("i3", [1.0, 1.0, 1.0, 1.0]))
    assert cat.key("i3") == 3 and cat.capacity == 4


def test_remove_unknown_and_delete_update():
    cat = ItemCatalog(4)
    assert not cat.remove("ghost")
    assert not cat.apply(ItemUpdate("ghost", "delete"))
    cat.apply(item("x", [1, 0, 0, 0]))
    v = cat.version
    assert cat.apply(ItemUpdate("x", "delete"))
    assert len(cat) == 0 and cat.version > v
    keys, scores = cat.search(np.array([1, 0, 0, 0], np.float32), 5)
    assert len(keys) == 0 and len(scores) == 0


def test_later_duplicate_in_one_batch_wins():
    cat = ItemCatalog(4)
    cat.upsert_many(
        [
            item("d", [1, 0, 0, 0], title="old", recommendable=True),
            item("d", [0, 1, 0, 0], title="new", recommendable=False),
        ]
    )
    assert len(cat) == 1
    np.testing.assert_allclose(cat.vector("d"), [0, 1, 0, 0])
    assert cat.meta(cat.key("d")).title == "new"
    assert not cat.recommendable_mask[cat.key("d")]


def test_non_recommendable_flag_is_kept_and_flips_back():
    cat = ItemCatalog(4)
    cat.upsert_many([item("hidden", [1, 0, 0, 0], recommendable=False), item("ok", [0, 1, 0, 0])])
    mask = cat.recommendable_mask
    assert not mask[cat.key("hidden")] and mask[cat.key("ok")]
    # still indexed: its neighbours are found, and it can be searched for
    keys, _ = cat.search(np.array([1, 0, 0, 0], np.float32), 1)
    assert ids(cat, keys) == ["hidden"]
    cat.apply(item("hidden", [1, 0, 0, 0], recommendable=True))
    assert cat.recommendable_mask[cat.key("hidden")]
    cat.remove("ok")
    assert not cat.recommendable_mask[cat.key("hidden") + 1]


def test_release_time_falls_back_to_the_year():
    cat = ItemCatalog(4)
    cat.upsert_many(
        [
            item("ts", [1, 0, 0, 0], release_ts=123.0, year=2001),
            item("yr", [0, 1, 0, 0], year=2001),
            item("none", [0, 0, 1, 0]),
        ]
    )
    rel = cat.release_ts
    assert rel[cat.key("ts")] == 123.0
    assert rel[cat.key("none")] == 0.0
    y2001 = rel[cat.key("yr")]
    assert 978_307_200 <= y2001 < 1_009_843_200  # inside 2001 (UTC)


def test_exact_search_finds_the_planted_cluster_and_respects_exclude():
    cat, a_ids, b_ids = two_clusters(n_per=20, dim=DIM)
    assert not cat.uses_lsh
    keys, scores = cat.search(cat.vector("a3"), 20)
    assert set(ids(cat, keys)) == set(a_ids)
    assert ids(cat, keys)[0] == "a3"
    assert np.all(np.diff(scores) <= 1e-7)  # best first
    excl = {cat.key("a3"), cat.key("a4")}
    keys, _ = cat.search(cat.vector("a3"), 40, exclude=excl)
    assert len(keys) == 38 and not excl & set(keys.tolist())


def test_small_exact_below_switches_to_lsh_which_agrees_with_exact():
    cat, a_ids, b_ids = two_clusters(n_per=30, dim=DIM, exact_below=10)
    assert cat.uses_lsh and cat.lsh_params is not None and cat.lsh_params.seed == 0
    recalls = []
    for q in a_ids + b_ids:
        lsh_keys, lsh_scores = cat.search(cat.vector(q), 10)
        ex_keys, _ = cat.search(cat.vector(q), 10, exact=True)
        cluster = a_ids if q.startswith("a") else b_ids
        assert set(ids(cat, lsh_keys)) <= set(cluster)  # never crosses to the other cluster
        assert ids(cat, lsh_keys)[0] == q  # an item is its own nearest neighbour
        np.testing.assert_allclose(lsh_scores[0], 1.0, atol=1e-5)
        recalls.append(len(set(lsh_keys.tolist()) & set(ex_keys.tolist())) / 10)
    # inside a tight cluster the order is noise; on average LSH still finds most of the top 10
    assert np.mean(recalls) >= 0.8


def test_lsh_follows_incremental_upsert_move_and_remove():
    cat, a_ids, b_ids = two_clusters(n_per=30, dim=DIM, exact_below=10)
    rng = np.random.default_rng(5)
    probe = np.zeros(DIM, np.float32)
    probe[2] = 1.0
    fresh = cluster_vectors(rng, probe, 5, spread=0.02)
    cat.upsert_many([item(f"c{n}", v) for n, v in enumerate(fresh)])  # a third cluster
    keys, _ = cat.search(probe, 5)
    assert set(ids(cat, keys)) == {f"c{n}" for n in range(5)}
    cat.apply(item("a0", probe))  # a0 moves into the new cluster
    keys, _ = cat.search(probe, 1)
    assert ids(cat, keys) == ["a0"]
    cat.remove("a0")
    keys, _ = cat.search(probe, 6)
    assert "a0" not in ids(cat, keys)


def test_lsh_search_is_deterministic_per_seed():
    a, _, _ = two_clusters(n_per=30, dim=DIM, exact_below=10, seed=3)
    b, _, _ = two_clusters(n_per=30, dim=DIM, exact_below=10, seed=3)
    q = a.vector("b5")
    ka, sa = a.search(q, 12)
    kb, sb = b.search(q, 12)
    np.testing.assert_array_equal(ka, kb)
    np.testing.assert_array_equal(sa, sb)


def test_reindex_goes_back_to_exact_when_the_catalog_shrinks():
    cat, a_ids, b_ids = two_clusters(n_per=10, dim=DIM, exact_below=15)
    assert cat.uses_lsh
    for i in a_ids:
        cat.remove(i)
    assert cat.uses_lsh  # no rebuild on every remove...
    cat.reindex()
    assert not cat.uses_lsh  # ...but an explicit reindex picks the path for the new size
    keys, _ = cat.search(cat.vector("b0"), 3)
    assert set(ids(cat, keys)) <= set(b_ids)


def test_explicit_lsh_knobs_are_used():
    cfg = IndexConfig(w=1.5, m=3, tables=4, probes=1, exact_below=5, seed=9)
    cat = ItemCatalog(DIM, cfg)
    rng = np.random.default_rng(0)
    cat.upsert_many([item(f"i{n}", v) for n, v in enumerate(rng.standard_normal((8, DIM)))])
    p = cat.lsh_params
    assert (p.w, p.m, p.L, p.probes, p.seed) == (1.5, 3, 4, 1, 9)


def test_search_with_k_zero_or_empty_catalog():
    cat = ItemCatalog(4)
    q = np.array([1, 0, 0, 0], np.float32)
    assert len(cat.search(q, 3)[0]) == 0
    cat.apply(item("x", q))
    assert len(cat.search(q, 0)[0]) == 0


# --- users ------------------------------------------------------------------------------


def _users(n: int, exact_below: int, seed: int = 1) -> tuple[UserDirectory, list[str], list[str]]:
    rng = np.random.default_rng(seed)
    ea = np.zeros(DIM)
    ea[0] = 1
    eb = np.zeros(DIM)
    eb[1] = 1
    d = UserDirectory(DIM, IndexConfig(exact_below=exact_below, seed=seed), recent=3)
    ua, ub = [f"ua{n_}" for n_ in range(n)], [f"ub{n_}" for n_ in range(n)]
    for uid, v in zip(ua, cluster_vectors(rng, ea, n), strict=True):
        d.update(uid, v, [f"liked-by-{uid}"])
    for uid, v in zip(ub, cluster_vectors(rng, eb, n), strict=True):
        d.update(uid, v, [f"liked-by-{uid}"])
    return d, ua, ub


@pytest.mark.parametrize("exact_below", [5000, 8])
def test_similar_users_are_from_the_same_cluster_and_never_self(exact_below):
    d, ua, ub = _users(15, exact_below)
    assert (d.lsh is not None) == (exact_below == 8)
    me = "ua0"
    query = np.zeros(DIM, np.float32)
    query[0] = 1
    similar = d.similar(me, query, 10)
    assert 0 < len(similar) <= 10
    assert me not in {u for u, _ in similar}
    assert {u for u, _ in similar} <= set(ua)
    sims = [s for _, s in similar]
    assert sims == sorted(sims, reverse=True)


def test_user_keys_are_stable_and_liked_is_bounded():
    d = UserDirectory(4, recent=2)
    d.update("u1", np.array([1, 0, 0, 0], np.float32), ["a", "b", "c"])
    k = d.key("u1")
    assert d.liked("u1") == ("b", "c") and d.liked("nobody") == ()
    d.update("u2", np.array([0, 1, 0, 0], np.float32), [])
    d.update("u1", np.array([0, 0, 1, 0], np.float32), ["d"])
    assert d.key("u1") == k and d.user_id(k) == "u1" and len(d) == 2


def test_user_without_embedding_leaves_the_index():
    d, ua, _ = _users(6, 4)
    q = np.zeros(DIM, np.float32)
    q[0] = 1
    assert "ua1" in {u for u, _ in d.similar("ua0", q, 20)}
    d.update("ua1", None, [])
    assert "ua1" not in {u for u, _ in d.similar("ua0", q, 20)}
    assert len(d) == 11


def test_exact_below_zero_means_lsh_from_the_first_item():
    cat = ItemCatalog(4, IndexConfig(exact_below=0))
    cat.apply(item("x", [1, 0, 0, 0]))
    assert cat.uses_lsh
    assert ids(cat, cat.search(np.array([1, 0, 0, 0], np.float32), 1)[0]) == ["x"]
    users = UserDirectory(4, IndexConfig(exact_below=0))
    users.update("u", np.array([1, 0, 0, 0], np.float32), [])
    assert users.lsh is not None


def test_newest_order_kept_item_by_item_equals_a_fresh_sort():
    """New, re-dated, retired, returning and deleted items (many sharing a release time):
    the order kept up to date equals sorting every item again."""
    rng = np.random.default_rng(4)
    cat = ItemCatalog(4)
    cat.upsert_many(
        [
            item(f"i{k}", rng.standard_normal(4), year=int(rng.integers(1990, 1995)))
            for k in range(50)
        ]
    )
    cat.newest_order()  # built once; every change below updates it in place
    for step in range(200):
        k = int(rng.integers(0, 80))
        op = int(rng.integers(0, 3))
        if op == 0:
            cat.remove(f"i{k}")
        else:
            cat.upsert_many(
                [
                    item(
                        f"i{k}",
                        rng.standard_normal(4),
                        year=int(rng.integers(1990, 1995)),
                        recommendable=bool(rng.random() < 0.8),
                        release_ts=None if op == 1 else T0 - float(rng.integers(0, 5)) * 86400,
                    )
                ]
            )
        keys, neg = cat.newest_order()
        live = np.flatnonzero(cat.recommendable_mask[: cat.capacity])
        order = np.lexsort((live, -cat.release_ts[live]))
        assert keys.tolist() == live[order].tolist(), f"step {step}"
        assert neg.tolist() == (-cat.release_ts[live][order]).tolist()


def test_ranking_version_moves_only_when_rules_could_answer_differently():
    cat = ItemCatalog(4)
    cat.upsert_many([item("a", [1, 0, 0, 0], genres=("X",)), item("b", [0, 1, 0, 0])])
    v = cat.ranking_version
    cat.upsert_many([item("c", [0, 0, 1, 0])])  # brand new: no statistics yet
    cat.upsert_many([item("a", [0, 0, 0, 1], genres=("X",))])  # a moved vector
    assert cat.ranking_version == v
    for change in (
        lambda: cat.upsert_many([item("a", [0, 0, 0, 1], genres=("Y",))]),
        lambda: cat.upsert_many([item("b", [0, 1, 0, 0], recommendable=False)]),
        lambda: cat.remove("c"),
        lambda: cat.upsert_many([item("c", [0, 0, 1, 0])]),  # returns
    ):
        change()
        assert cat.ranking_version == v + 1
        v += 1


def _no_vector(item_id: str, genres: tuple[str, ...] = ("Drama",), year: int = 2001) -> ItemUpdate:
    return ItemUpdate(item_id=item_id, op="upsert", genres=genres, year=year, title=item_id)


@pytest.mark.parametrize("exact_below", [5000, 10])
def test_item_without_vector_is_in_the_catalogue_but_not_the_index(exact_below):
    cat, a_ids, _ = two_clusters(n_per=20, dim=DIM, exact_below=exact_below)
    assert cat.upsert_many([_no_vector("plain", ("Action",), 2030)]) == 1
    key = cat.key("plain")
    assert key is not None and "plain" in cat and cat.vector("plain") is None
    assert not cat.has_vector(key) and key in cat.live_keys().tolist()
    assert key not in cat.indexed_keys().tolist()
    assert cat.genre_mask("Action")[key] and cat.newest_order()[0][0] == key  # rules see it
    for exact in (False, True):
        keys, _ = cat.search(cat.vector("a1"), 60, exact=exact)
        assert key not in keys.tolist()
    assert len(cat.neighbours(key, 5)[0]) == 0
    cat.reindex()
    assert key not in cat.search(cat.vector("a1"), 60)[0].tolist()


def test_item_gains_and_loses_its_vector():
    cat, a_ids, _ = two_clusters(n_per=20, dim=DIM, exact_below=10)
    cat.upsert_many([_no_vector("x")])
    probe = np.zeros(DIM, np.float32)
    probe[3] = 1.0
    cat.upsert_many([item("x", probe)])
    assert cat.has_vector(cat.key("x"))
    assert ids(cat, cat.search(probe, 1)[0]) == ["x"]
    cat.upsert_many([_no_vector("x")])  # the vector is withdrawn: out of the index, still known
    assert cat.vector("x") is None and "x" in cat
    assert "x" not in ids(cat, cat.search(probe, 60)[0])
    # in one batch the later update wins, with or without a vector
    cat.upsert_many([_no_vector("x"), item("x", probe)])
    assert ids(cat, cat.search(probe, 1)[0]) == ["x"]
    cat.upsert_many([item("x", probe), _no_vector("x")])
    assert cat.vector("x") is None
    assert cat.remove("x") and "x" not in cat
