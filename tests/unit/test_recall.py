"""Recall channels on tiny planted data: each finds the known answer, respects k and filters."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from nearline_rec.core.catalog import IndexConfig
from nearline_rec.core.channels import CHANNELS, build_channels
from nearline_rec.core.channels.embedding import embedding_recall
from nearline_rec.core.channels.friends import friends_recall
from nearline_rec.core.channels.genre import genre_recall
from nearline_rec.core.channels.item2item import item2item_recall
from nearline_rec.core.channels.newest import newest_recall
from nearline_rec.core.channels.short_term import short_term_recall
from nearline_rec.core.channels.similar_users import similar_users_recall
from nearline_rec.core.channels.trending import trending_recall
from nearline_rec.core.pipeline import Recommender
from nearline_rec.core.rank import load_model
from nearline_rec.core.recall import Candidate, ChannelConfig, RecallContext, liked_genres, merge
from nearline_rec.core.social import Activity
from nearline_rec.core.user_state import UserState
from tests.unit.factories import DAY, T0, cluster_vectors, event, item, two_clusters

N_PER = 20
DIM = 16

RECALL = {
    "embedding": embedding_recall,
    "item2item": item2item_recall,
    "similar_users": similar_users_recall,
    "genre": genre_recall,
    "trending": trending_recall,
    "newest": newest_recall,
    "short_term": short_term_recall,
    "friends": friends_recall,
}


def make_world(exact_below: int = 5000) -> tuple[Recommender, list[str], list[str]]:
    """Two clusters (A = Action near e0, B = Romance near e1) plus planted stream statistics.

    - ratings by others: a10 (5,5,5), a11 (4,4,4), a12 (2,2,2), b10 (5,5,5);
    - engagement: b15 x20 clicks, b16 x12, a15 x8 (trending order b15, b16, a15);
    - a "future" A item released after the stream's clock, the newest released is a0;
    - a6 and b6 are not recommendable;
    - similar users: six near e0 who liked a16/a17, six near e1 who liked b17.
    """
    cat, a_ids, b_ids = two_clusters(n_per=N_PER, dim=DIM, exact_below=exact_below)
    e0 = np.eye(DIM)[0]
    cat.upsert_many(
        [
            item("future", e0, genres=("Action",), release_ts=T0 + 30 * DAY),
            item("a6", cat.vector("a6"), genres=("Action",), recommendable=False),
            item("b6", cat.vector("b6"), genres=("Romance",), recommendable=False),
        ]
    )
    rec = Recommender(cat, load_model(), user_index=IndexConfig(exact_below=exact_below))
    stats = rec.stats
    for item_id, ratings in [
        ("a10", [5, 5, 5]),
        ("a11", [4, 4, 4]),
        ("a12", [2, 2, 2]),
        ("b10", [5, 5, 5]),
    ]:
        for r in ratings:
            stats.add(cat.key(item_id), 0.0, T0, rating=float(r))
    for item_id, clicks in [("b15", 20), ("b16", 12), ("a15", 8)]:
        for _ in range(clicks):
            stats.add(cat.key(item_id), 1.0, T0)
    rng = np.random.default_rng(4)
    for n, v in enumerate(cluster_vectors(rng, e0, 6, spread=0.1)):
        rec.users.update(f"fan-a{n}", v, ["a16", "a17"] if n % 2 else ["a17"])
    for n, v in enumerate(cluster_vectors(rng, np.eye(DIM)[1], 6, spread=0.1)):
        rec.users.update(f"fan-b{n}", v, ["b17"])
    return rec, a_ids, b_ids


def action_fan(rec: Recommender) -> UserState:
    """A user who rated three A items 5 stars, with three friends whose likes include a
    seen item (a0) and non-recommendable ones (a6, b6)."""
    s = UserState("me")
    for n, item_id in enumerate(["a0", "a1", "a2"]):
        rec.apply(s, event(f"e{n}", item_id, user_id="me", type="rating", rating=5.0), n)
    for friend, items in {"f1": ["a0", "a6", "b3", "a4"], "f2": ["a4", "b6", "a5"],
                          "f3": ["a4", "b8"]}.items():  # fmt: skip
        rec.apply_social(s, Activity("follow", "me", friend, T0 - DAY, f"r-{friend}"))
        for item_id in items:
            rec.apply_social(s, Activity("like", "me", friend, T0, f"l-{friend}", "add", item_id))
    return s


@pytest.fixture
def world():
    return make_world()


@pytest.fixture
def ctx(world) -> RecallContext:
    rec, _, _ = world
    return rec.context(action_fan(rec))


def item_ids(ctx: RecallContext, cands: list[Candidate]) -> list[str]:
    return [ctx.catalog.item_id(c.key) for c in cands]


# --- properties every channel has -------------------------------------------------------


@pytest.mark.parametrize("name", CHANNELS)
@pytest.mark.parametrize("k", [0, 1, 3])
def test_channel_respects_k(ctx, name, k):
    cands = RECALL[name](ctx, k)
    assert len(cands) <= k
    if k:
        assert len(cands) == k, f"{name} found fewer than {k} on a catalog with plenty"
    assert all(c.channel == name for c in cands)


@pytest.mark.parametrize("name", CHANNELS)
def test_channel_never_returns_seen_or_non_recommendable(ctx, name):
    cands = RECALL[name](ctx, 100)
    assert cands
    keys = [c.key for c in cands]
    assert len(keys) == len(set(keys))
    assert not set(keys) & ctx.exclude
    assert all(ctx.catalog.recommendable_mask[k] for k in keys)
    assert not {"a0", "a1", "a2", "a6", "b6"} & set(item_ids(ctx, cands))


@pytest.mark.parametrize("name", CHANNELS)
def test_channel_is_deterministic(name):
    outs = []
    for _ in range(2):
        rec, _, _ = make_world()
        outs.append(RECALL[name](rec.context(action_fan(rec)), 10))
    assert outs[0] == outs[1]


@pytest.mark.parametrize("name", CHANNELS)
def test_channel_excludes_whatever_the_context_excludes(ctx, name):
    first = RECALL[name](ctx, 5)
    assert first
    banned = {c.key for c in first[:2]}
    narrower = dataclasses.replace(ctx, exclude=ctx.exclude | banned)
    again = RECALL[name](narrower, 5)
    assert not banned & {c.key for c in again}


# --- known answers ----------------------------------------------------------------------


@pytest.mark.parametrize("exact_below", [5000, 10])
def test_embedding_recall_finds_the_liked_cluster(exact_below):
    rec, a_ids, _ = make_world(exact_below)
    assert rec.catalog.uses_lsh == (exact_below == 10)
    ctx = rec.context(action_fan(rec))
    got = item_ids(ctx, embedding_recall(ctx, 10))
    assert len(got) == 10
    assert set(got) <= set(a_ids) | {"future"}
    scores = [c.score for c in embedding_recall(ctx, 10)]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("exact_below", [5000, 10])
def test_item2item_recall_finds_neighbours_of_liked_items(exact_below):
    rec, a_ids, _ = make_world(exact_below)
    ctx = rec.context(action_fan(rec))
    got = item2item_recall(ctx, 10, seeds=2)
    assert len(got) == 10
    assert set(item_ids(ctx, got)) <= set(a_ids) | {"future"}
    assert [c.score for c in got] == sorted((c.score for c in got), reverse=True)


def test_item2item_without_likes_is_empty(world):
    rec, _, _ = world
    s = UserState("clicker")
    rec.apply(s, event("c1", "b3", user_id="clicker"), 0)
    assert item2item_recall(rec.context(s), 10) == []


def test_similar_users_recall_returns_what_neighbours_liked(ctx):
    got = similar_users_recall(ctx, 10, n_users=6)
    # a17 is liked by all six A fans, a16 by three: more votes first; no B fan is that close
    assert item_ids(ctx, got) == ["a17", "a16"]
    wider = similar_users_recall(ctx, 10, n_users=20)
    assert item_ids(ctx, wider)[:2] == ["a17", "a16"]
    # far users may still vote, but with their tiny similarity
    assert all(c.score < 0.5 * got[1].score for c in wider[2:])


def test_similar_users_without_embedding_is_empty(world):
    rec, _, _ = world
    assert similar_users_recall(rec.context(UserState("new")), 10) == []


def test_genre_recall_returns_best_rated_items_of_the_liked_genre(ctx):
    assert dict(liked_genres(ctx)) == {"Action": 3}
    got = item_ids(ctx, genre_recall(ctx, 3, min_ratings=3))
    assert got == ["a10", "a11", "a12"]  # b10 is as well rated but Romance


def test_genre_recall_splits_k_between_liked_genres(world):
    rec, _, _ = world
    s = action_fan(rec)
    rec.apply(s, event("r", "b0", user_id="me", type="rating", rating=4.5), 10)
    ctx = rec.context(s)
    assert dict(liked_genres(ctx)) == {"Action": 3, "Romance": 1}
    got = item_ids(ctx, genre_recall(ctx, 4, min_ratings=3))
    assert set(got) == {"a10", "a11", "a12", "b10"}


def test_genre_recall_ignores_low_ratings(world):
    rec, _, _ = world
    s = UserState("critic")
    rec.apply(s, event("r", "b0", user_id="critic", type="rating", rating=2.0), 0)
    assert genre_recall(rec.context(s), 5) == []


def test_trending_returns_the_most_engaged_items(ctx):
    got = item_ids(ctx, trending_recall(ctx, 3))
    assert got == ["b15", "b16", "a15"]
    scores = [c.score for c in trending_recall(ctx, 3)]
    assert scores[0] > scores[1] > scores[2] > 0


def test_newest_returns_released_items_newest_first(ctx):
    got = item_ids(ctx, newest_recall(ctx, 4))
    # released a0 -1d (seen), b0 -1.5d, a1 -2d (seen), b1 -2.5d, a2 -3d (seen), b2 -3.5d,
    # a3 -4d; "future" is released 30 days after the stream's clock
    assert got == ["b0", "b1", "b2", "a3"]
    cat = ctx.catalog
    assert all(cat.release_ts[cat.key(i)] <= ctx.now for i in got)


def test_newest_waits_for_the_release(world):
    rec, _, _ = world
    ctx = rec.context(action_fan(rec))
    later = dataclasses.replace(ctx, now=T0 + 31 * DAY)
    assert item_ids(later, newest_recall(later, 1)) == ["future"]


# --- composition ------------------------------------------------------------------------


def test_build_channels_keeps_order_and_drops_disabled():
    built = build_channels(
        [
            ChannelConfig("newest", 5, 2),
            ChannelConfig("embedding", 5, 2),
            ChannelConfig("genre", 5, 0),
            ChannelConfig("trending", 5, 2, enabled=False),
            ChannelConfig("item2item", 0, 2),
        ]
    )
    assert [cfg.name for cfg, _ in built] == ["newest", "embedding"]
    with pytest.raises(ValueError, match="unknown recall channel 'bogus'"):
        build_channels([ChannelConfig("bogus")])


def test_built_channels_pass_their_knobs(ctx):
    built = dict(
        (cfg.name, fn)
        for cfg, fn in build_channels([ChannelConfig("genre", 3, 3)], {"genre_min_ratings": 4})
    )
    assert built["genre"](ctx, 3) == []  # nothing has four ratings


def cands(channel: str, keys: list[int]) -> list[Candidate]:
    return [Candidate(k, 1.0 - 0.01 * n, channel) for n, k in enumerate(keys)]


def test_merge_applies_quotas_and_keeps_the_first_channel():
    merged = merge(
        [
            (ChannelConfig("embedding", quota=3), cands("embedding", [1, 2, 3, 4, 5])),
            (ChannelConfig("genre", quota=2), cands("genre", [2, 9, 10])),
            (ChannelConfig("trending", quota=5), cands("trending", [9, 4, 11])),
        ]
    )
    assert [(c.key, c.channel) for c in merged] == [
        (1, "embedding"),
        (2, "embedding"),
        (3, "embedding"),
        (9, "genre"),  # 2 was already taken; the genre quota counts it all the same
        (4, "trending"),  # embedding's quota stopped at 3, so 4 comes from trending
        (11, "trending"),
    ]


def test_merge_of_nothing():
    assert merge([]) == []
    assert merge([(ChannelConfig("embedding"), [])]) == []


def test_merge_keeps_the_first_channel_of_each_item_in_order():
    rng = np.random.default_rng(4)
    per_channel = []
    for n, name in enumerate(["a", "b", "c", "d"]):
        keys = rng.integers(0, 40, 30).tolist()
        per_channel.append(
            (
                ChannelConfig(name, quota=int(rng.integers(0, 31))),
                [Candidate(k, float(n), name) for k in keys],
            )
        )
    seen: set[int] = set()
    expected = []
    for cfg, cands in per_channel:
        for cand in cands[: cfg.quota]:
            if cand.key not in seen:
                seen.add(cand.key)
                expected.append(cand)
    assert merge(per_channel) == expected and len(expected) > 10
    assert merge([]) == []
