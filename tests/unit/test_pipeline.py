"""Recommender end to end on planted data: cold start, personal lists, filters, taste recovery."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
import pytest

from nearline_rec.core.catalog import IndexConfig, ItemCatalog
from nearline_rec.core.events import ItemUpdate, UserEvent
from nearline_rec.core.pipeline import PipelineConfig, Recommender
from nearline_rec.core.rank import load_model
from nearline_rec.core.recall import ChannelConfig
from nearline_rec.core.user_state import UserState
from nearline_rec.data.loaders import read_embeddings, read_movies, read_ratings
from nearline_rec.data.sample import generate_sample
from tests.unit.factories import T0, event, item, two_clusters

DIM = 16
N_TASTES = 4


@dataclass
class Sample:
    truth: dict
    updates: list[ItemUpdate]
    ratings: list
    now: float

    def taste(self, item_id: str) -> int:
        return self.truth["items"][item_id]["taste"]

    def items_of(self, taste: int) -> list[str]:
        """Items of a taste, most popular first (the order users find them in)."""
        items = self.truth["items"]
        mine = [i for i, v in items.items() if v["taste"] == taste]
        return sorted(mine, key=lambda i: (items[i]["popularity_rank"], i))


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Sample:
    info = generate_sample(
        tmp_path_factory.mktemp("sample"),
        n_items=400,
        n_users=120,
        n_ratings=6000,
        dim=DIM,
        n_tastes=N_TASTES,
        seed=11,
    )
    truth = json.loads(info.truth_path.read_text(encoding="utf-8"))
    ids, mat = read_embeddings(info.embeddings_path, expected_dim=DIM)
    vectors = dict(zip(ids, mat, strict=True))
    updates = [
        ItemUpdate(
            m.item_id,
            "upsert",
            vectors[m.item_id],
            m.title,
            m.genres,
            m.year,
            True,
            float(truth["items"][m.item_id]["release"]),
        )
        for m in read_movies(info.movies_path)
    ]
    return Sample(truth, updates, read_ratings(info.ratings_path), truth["window"]["end"])


# Explicit knobs for the LSH path: this test is about the pipeline, not the default tuning
# (wide buckets, so LSH returns k candidates on this small, noisy catalog).
LSH = IndexConfig(exact_below=50, w=2.0, m=4, tables=16, seed=3)
EXACT = IndexConfig(exact_below=5000)


def replayed(sample: Sample, *, index: IndexConfig = EXACT, hidden: set[str] = frozenset()):
    """A recommender that has seen every rating of the sample, as the worker would have."""
    return replayed_states(sample, index=index, hidden=hidden)[0]


def replayed_states(
    sample: Sample, *, index: IndexConfig = EXACT, hidden: set[str] = frozenset()
) -> tuple[Recommender, dict[str, UserState]]:
    """`replayed`, with the users' states."""
    cat = ItemCatalog(DIM, index)
    cat.upsert_many([replace(u, recommendable=u.item_id not in hidden) for u in sample.updates])
    rec = Recommender(cat, load_model())
    states: dict[str, UserState] = {}
    for n, r in enumerate(sample.ratings):
        s = states.setdefault(r.user_id, UserState(r.user_id))
        rec.apply(s, UserEvent(f"r{n}", r.user_id, r.item_id, "rating", r.timestamp, r.rating), n)
    for s in states.values():
        rec.touch(s)
    return rec, states


def engage(rec: Recommender, state: UserState, items: list[str], t: float, offset: int) -> None:
    for n, item_id in enumerate(items):
        ev = UserEvent(f"{state.user_id}-{offset + n}", state.user_id, item_id, "rating", t, 5.0)
        rec.apply(state, ev, offset + n)
        rec.touch(state)


def test_user_without_history_gets_the_cold_start_list(sample):
    rec = replayed(sample)
    blank = rec.recommend(UserState("newcomer"))
    assert blank.mode == "cold_start" and not blank.degraded
    assert len(blank.items) == rec.config.top_n
    assert all(i.channel == "cold_start" for i in blank.items)
    assert len({i.item_id for i in blank.items}) == len(blank.items)
    # the same list for everyone without history
    shared = rec.cold_start_list()
    assert [i.item_id for i in shared.items] == [i.item_id for i in blank.items]
    assert shared.user_id == "__cold_start__" and blank.user_id == "newcomer"
    # led by the most engaged items of the stream
    top = [rec.catalog.item_id(k) for k in rec.stats.top_popular(rec.catalog, 3)]
    assert [i.item_id for i in blank.items[:3]] == top


def test_events_on_unknown_items_keep_the_user_cold(sample):
    rec = replayed(sample)
    s = UserState("lost")
    rec.apply(s, event("x", "not-an-item", user_id="lost", type="click", ts=sample.now), 0)
    assert rec.recommend(s).mode == "cold_start"


def test_cold_start_on_an_empty_stream_uses_newest_releases():
    cat, _, _ = two_clusters(n_per=5)
    rec = Recommender(cat, load_model(), config=PipelineConfig(top_n=3))
    out = rec.recommend(UserState("u"))
    assert out.mode == "cold_start"
    assert [i.item_id for i in out.items] == ["a0", "b0", "a1"]  # nothing trending yet


def test_after_events_the_list_is_personal_and_skips_seen(sample):
    rec = replayed(sample)
    me = UserState("me")
    liked = sample.items_of(0)[:3]
    engage(rec, me, liked, sample.now, 10_000)
    out = rec.recommend(me)
    assert out.mode == "personal" and not out.degraded
    assert 0 < len(out.items) <= rec.config.top_n
    got = [i.item_id for i in out.items]
    assert len(set(got)) == len(got)
    assert not set(got) & set(me.seen)
    assert out.event_time == sample.now
    assert out.model_version == rec.model.version
    scores = [i.score for i in out.items]
    assert all(np.isfinite(scores))


@pytest.mark.parametrize("index", [EXACT, LSH], ids=["exact", "lsh"])
@pytest.mark.parametrize("taste", range(N_TASTES))
def test_a_planted_taste_is_recovered(sample, taste, index):
    rec = replayed(sample, index=index)
    assert rec.catalog.uses_lsh == (index is LSH)
    me = UserState("me")
    engage(rec, me, sample.items_of(taste)[:8], sample.now, 10_000)
    out = rec.recommend(me)
    got = [i.item_id for i in out.items]
    assert len(got) == rec.config.top_n
    share = Counter(sample.taste(i) for i in got)[taste] / len(got)
    base = len(sample.items_of(taste)) / len(sample.truth["items"])
    # most of the list comes from the planted taste, far above its share of the catalog
    assert share >= 0.7 and share >= 2 * base, (share, base)


def test_non_recommendable_items_never_appear(sample):
    taste_items = sample.items_of(2)
    hidden = set(taste_items[8:40])  # the very items this user would be shown
    rec = replayed(sample, hidden=hidden)
    me = UserState("me")
    engage(rec, me, taste_items[:8], sample.now, 10_000)
    got = {i.item_id for i in rec.recommend(me).items}
    assert got and not got & hidden
    assert not got & hidden.union(me.seen)
    assert not {i.item_id for i in rec.cold_start_list().items} & hidden


def test_recommend_is_deterministic(sample):
    lists = []
    for _ in range(2):
        rec = replayed(sample)
        me = UserState("me")
        engage(rec, me, sample.items_of(1)[:5], sample.now, 10_000)
        lists.append(rec.recommend(me))
    assert lists[0] == lists[1]


def test_seen_items_are_excluded_on_a_tiny_catalog():
    cat, a_ids, _ = two_clusters(n_per=6)
    config = PipelineConfig(
        channels=(ChannelConfig("embedding", 50, 50), ChannelConfig("newest", 50, 50)),
        top_n=50,
        max_per_genre=50,
    )
    rec = Recommender(cat, load_model(), config=config)
    cat.apply(item("a5", cat.vector("a5"), genres=("Action",), recommendable=False))
    me = UserState("me")
    for n, item_id in enumerate(a_ids[:3]):
        rec.apply(me, event(f"e{n}", item_id, user_id="me", type="like", ts=T0), n)
    got = [i.item_id for i in rec.recommend(me).items]
    # everything admissible, nothing seen or hidden: 12 items - 3 seen - 1 hidden
    assert len(got) == 8
    assert not {"a0", "a1", "a2", "a5"} & set(got)
    assert got[:2] == ["a3", "a4"]  # the rest of the liked cluster leads


def test_variants_from_one_recall_equal_recommenders_configured_without_a_channel(sample):
    rec = replayed(sample)
    me = UserState("me")
    engage(rec, me, sample.items_of(3)[:4], sample.now, 10_000)
    names = [cfg.name for cfg, _ in rec.channels]
    variants = {f"without {n}": (frozenset([n]), None) for n in names}
    variants["all"] = (frozenset(), None)
    got = rec.recommend_variants(me, variants)
    assert got["all"] == rec.recommend(me)
    for n in names:
        config = replace(rec.config, channels=tuple(c for c in rec.config.channels if c.name != n))
        alone = rec.as_variant(rec.variant, config, rec.model).recommend(me)
        assert got[f"without {n}"] == alone, n
        assert n not in {i.channel for i in alone.items}
    other = replace(rec.model, version="other", weights={**rec.model.weights, "popularity": 0})
    ranked = rec.recommend_variants(me, {"x": (frozenset(), other)})["x"]
    assert ranked.model_version == "other"
    assert ranked == rec.as_variant(rec.variant, rec.config, other).recommend(me)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("index", [EXACT, LSH], ids=["exact", "lsh"])
def test_a_micro_batch_searched_at_once_gets_the_lists_made_one_by_one(sample, index, threads):
    rec, states = replayed_states(sample, index=index)
    users = sorted(states.values(), key=lambda s: s.user_id)
    alone = [rec.recommend(s) for s in users]
    cache = rec.catalog.neighbour_cache
    cache.clear()
    rec.search_threads = threads
    searched: list[int] = []
    one_search, one_similar = rec.catalog.search, rec.users.similar
    rec.catalog.search = lambda *a, **kw: searched.append(1) or one_search(*a, **kw)
    rec.users.similar = lambda *a, **kw: searched.append(2) or one_similar(*a, **kw)
    misses = cache.misses
    together = rec.recommend_many(users)
    assert together == alone
    # every search of the channels was made ahead, for the whole batch
    assert searched == []
    # each seed item of the batch searched once, ahead: no lookup of a channel missed
    seeds = {rec.catalog.key(i) for s in users for i in s.liked[-5:]} - {None}
    assert cache.misses - misses == len(seeds) > 0
