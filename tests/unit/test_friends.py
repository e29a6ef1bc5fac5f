"""The friends channel and the friend graph as events (pure core): known answers on a tiny
graph, filters and quotas, last-writer-wins relations, and the work a user with ten
thousand friends (or followers) costs, counted rather than timed."""

from __future__ import annotations

import json

import pytest

from nearline_rec.core import social
from nearline_rec.core.channels.friends import DEFAULT_HALF_LIFE, friends_recall
from nearline_rec.core.events import InvalidRecord, ItemUpdate
from nearline_rec.core.pipeline import PipelineConfig, Recommender
from nearline_rec.core.rank import load_model
from nearline_rec.core.recall import ChannelConfig
from nearline_rec.core.social import (
    Activity,
    Relation,
    SocialPolicy,
    edge_key,
    split_relation,
)
from nearline_rec.core.user_state import UserState
from nearline_rec.processing import BatchProcessor, RawRecord
from nearline_rec.records import decode_activity, decode_relation
from tests.unit.factories import DAY, T0, event, item, two_clusters


def follow(user: str, friend: str, ts: float = T0 - DAY, action: str = "add") -> Activity:
    return Activity("follow", user, friend, ts, f"r-{user}-{friend}-{action}-{ts}", action)


def like(user: str, friend: str, item_id: str, ts: float = T0) -> Activity:
    return Activity("like", user, friend, ts, f"l-{friend}-{item_id}", "add", item_id)


@pytest.fixture
def rec() -> Recommender:
    cat, _, _ = two_clusters(n_per=10)
    return Recommender(cat, load_model())


def me_with_friends(rec: Recommender) -> UserState:
    """`me` clicked a0; f1 liked b1 now and b2 a half-life ago; f2 liked b1 and a0 now."""
    s = UserState("me")
    rec.apply(s, event("e0", "a0", user_id="me"), 0)
    for f in ("f1", "f2"):
        rec.apply_social(s, follow("me", f))
    rec.apply_social(s, like("me", "f1", "b1"))
    rec.apply_social(s, like("me", "f1", "b2", T0 - DEFAULT_HALF_LIFE))
    rec.apply_social(s, like("me", "f2", "b1"))
    rec.apply_social(s, like("me", "f2", "a0"))
    return s


def count_calls(monkeypatch, owner, name: str) -> dict[str, int]:
    """Counts the calls of owner.name from now on (the work done, not the time taken)."""
    calls = {"n": 0}
    real = getattr(owner, name)

    def counting(*args):
        calls["n"] += 1
        return real(*args)

    monkeypatch.setattr(owner, name, counting)
    return calls


def named(ctx, cands) -> list[tuple[str, float]]:
    return [(ctx.catalog.item_id(c.key), round(c.score, 9)) for c in cands]


def test_known_answer_on_a_tiny_graph(rec):
    ctx = rec.context(me_with_friends(rec))
    assert ctx.now == T0
    # closeness: f1 shares none of its likes with me (1.0), f2 one of two (1.5);
    # b1 = 1.0 + 1.5 (two friends, now), b2 = 1.0 * 0.5 (one half-life old); a0 is seen
    assert named(ctx, friends_recall(ctx, 10)) == [("b1", 2.5), ("b2", 0.5)]
    assert named(ctx, friends_recall(ctx, 1)) == [("b1", 2.5)]
    assert all(c.channel == "friends" for c in friends_recall(ctx, 10))


def test_no_friends_no_candidates_and_unfollow_takes_the_likes_away(rec):
    assert friends_recall(rec.context(UserState("alone")), 10) == []
    s = me_with_friends(rec)
    change = rec.apply_social(s, follow("me", "f2", T0 + 1, "remove"))
    assert change.changed and change.list_changed
    ctx = rec.context(s)
    assert named(ctx, friends_recall(ctx, 10)) == [("b1", 1.0), ("b2", 0.5)]
    # a like of f2 still on its way when the unfollow came is dropped
    assert not rec.apply_social(s, like("me", "f2", "b5", T0 + 2)).changed
    # an older follow, replayed, does not bring f2 back; a newer one does
    assert not rec.apply_social(s, follow("me", "f2", T0)).changed
    assert rec.apply_social(s, follow("me", "f2", T0 + 3)).changed


def test_redelivered_records_change_nothing(rec):
    s = me_with_friends(rec)
    before = s.to_bytes()
    for act in (follow("me", "f1"), like("me", "f1", "b1"), like("me", "f1", "b2", T0 - 9 * DAY)):
        assert not rec.apply_social(s, act).changed
    assert s.to_bytes() == before
    assert UserState.from_bytes(before).friend_likes == s.friend_likes


def test_seen_and_retired_items_are_left_out(rec):
    s = me_with_friends(rec)
    rec.apply_social(s, like("me", "f1", "b3"))
    rec.apply_social(s, like("me", "f1", "b4"))
    rec.catalog.upsert_many([item("b3", rec.catalog.vector("b3"), recommendable=False)])
    rec.catalog.apply(ItemUpdate("b4", "delete"))
    rec.apply(s, event("e1", "b2", user_id="me"), 1)  # now seen
    ctx = rec.context(s)
    assert [i for i, _ in named(ctx, friends_recall(ctx, 10))] == ["b1"]


def test_the_quota_holds_in_the_full_pipeline(rec):
    config = PipelineConfig(
        channels=(ChannelConfig("friends", 10, 2), ChannelConfig("embedding", 10, 10)),
        top_n=20,
    )
    pipe = Recommender(rec.catalog, load_model(), config=config)
    s = UserState("me")
    pipe.apply(s, event("e0", "a0", user_id="me", type="like"), 0)
    pipe.apply_social(s, follow("me", "f1"))
    for n in range(6):
        pipe.apply_social(s, like("me", "f1", f"b{n}", T0 - n))
    got = pipe.recommend(s)
    assert got.mode == "personal"
    from_friends = [i.item_id for i in got.items if i.channel == "friends"]
    assert sorted(from_friends) == ["b0", "b1"]  # the quota: the two newest likes
    assert "a0" not in [i.item_id for i in got.items]


def test_a_user_with_only_friends_gets_a_personal_list(rec):
    s = UserState("new")
    rec.apply_social(s, follow("new", "f1"))
    rec.apply_social(s, like("new", "f1", "b7"))
    got = rec.recommend(s)
    assert got.mode == "personal"
    assert ("b7", "friends") in [(i.item_id, i.channel) for i in got.items]


def test_ten_thousand_friends_cost_a_bounded_amount_of_work(rec, monkeypatch):
    """The work per list is bounded by `likes_kept`, the state by `friends_max`, whatever
    the number of friends: counted (catalog lookups, ranks computed), not timed."""
    policy = SocialPolicy(friends_max=1000, likes_kept=200)
    rec.social = policy
    s = UserState("popular")
    ranks = count_calls(monkeypatch, social, "_rank")
    for n in range(10_000):
        rec.apply_social(s, follow("popular", f"f{n}", T0 - DAY + n))
    # bulk trimming: at most cap + cap/4 + 1 edges; a trim ranks those once every cap/4
    # new edges, so at most 5 ranks per relation whatever the number of friends (linear)
    assert len(s.friends) <= policy.friends_max + policy.friends_max // 4 + 1
    assert ranks["n"] <= 5 * 10_000
    for n in range(10_000):  # unfollows of users never followed: tombstones stay bounded
        rec.apply_social(s, follow("popular", f"g{n}", T0 + n, "remove"))
    assert len(s.friends) <= policy.friends_max + policy.friends_max // 4 + 1
    kept = social.standing(s.friends)
    for n, f in enumerate(kept * 2):  # two likes of every kept friend: 2,000 likes
        rec.apply_social(s, like("popular", f, f"b{n % 10}", T0 + n))
    assert len(s.friend_likes) == policy.likes_kept
    ctx = rec.context(s)
    lookups = count_calls(monkeypatch, rec.catalog, "key")
    assert friends_recall(ctx, 30)
    assert lookups["n"] <= policy.likes_kept  # one lookup per kept like, not per friend


def test_ten_thousand_followers_get_a_sample_of_each_like(rec, monkeypatch):
    policy = SocialPolicy(followers_max=1000, fanout_per_like=100)
    rec.social = policy
    star = UserState("star")
    for n in range(10_000):
        rec.apply_social(star, Activity("follower", "star", f"u{n}", T0 + n, f"r{n}"))
    assert len(star.followers) <= policy.followers_max + policy.followers_max // 4 + 1
    ranks = count_calls(monkeypatch, social, "_rank")
    rec.apply(star, event("e1", "b1", user_id="star", type="like"), 1)
    first = rec.like_forwards(star, event("e1", "b1", user_id="star", type="like"))
    second = rec.like_forwards(star, event("e2", "b2", user_id="star", type="like"))
    assert len(first) == len(second) == policy.fanout_per_like
    assert ranks["n"] <= 2 * len(star.followers)  # one rank per kept follower per like
    assert {a.user for a in first} != {a.user for a in second}  # a fresh sample per like
    assert all(a.kind == "like" and a.other == "star" for a in first)
    assert rec.like_forwards(star, event("e3", "b3", user_id="star", type="view")) == []


def test_a_new_follower_gets_the_recent_likes_as_backfill(rec):
    b = UserState("b")
    rec.apply(b, event("e1", "a1", user_id="b", type="like", ts=T0), 0)
    rec.apply(b, event("e2", "a2", user_id="b", type="click", ts=T0 + 1), 1)
    rec.apply(b, event("e3", "a3", user_id="b", type="rating", rating=5.0, ts=T0 + 2), 2)
    change = rec.apply_social(b, Activity("follower", "b", "a", T0 + 3, "r1"))
    assert [(f.user, f.other, f.item_id, f.timestamp) for f in change.forwards] == [
        ("a", "b", "a1", T0),
        ("a", "b", "a3", T0 + 2),
    ]
    assert not change.list_changed
    gone = rec.apply_social(b, Activity("follower", "b", "a", T0 + 4, "r2", "remove"))
    assert gone.changed and gone.forwards == ()
    assert rec.like_forwards(b, event("e4", "a4", user_id="b", type="like")) == []


def test_relation_records_decode_or_say_why_not():
    rel = Relation("r1", "2", "275", "add", T0)
    assert decode_relation(rel.key(), rel.encode()) == rel
    assert rel.key() == b"2\t275"
    ints = json.dumps({**rel.to_json(), "follower": 2, "followee": 275}).encode()
    assert decode_relation(edge_key("2", "275"), ints) == rel
    cases = [
        (rel.key(), b"{", "not_json"),
        (rel.key(), b"[]", "not_object"),
        (rel.key(), json.dumps({**rel.to_json(), "action": "poke"}).encode(), "schema"),
        (b"2", rel.encode(), "bad_key"),
        (None, rel.encode(), "bad_key"),
        (b"2\t2", Relation("r", "2", "2", "add", T0).encode(), "schema"),
    ]
    for key, raw, reason in cases:
        with pytest.raises(InvalidRecord) as err:
            decode_relation(key, raw)
        assert err.value.reason == reason, (key, raw)
    a, b = split_relation(rel)
    assert (a.kind, a.user, a.other, b.kind, b.user, b.other) == (
        "follow", "2", "275", "follower", "275", "2",
    )  # fmt: skip
    for act in (a, b, like("2", "275", "51")):
        assert decode_activity(act.user.encode(), act.encode()) == act
    with pytest.raises(InvalidRecord) as err:
        decode_activity(b"275", a.encode())
    assert err.value.reason == "bad_key"


def _processor(rec: Recommender) -> BatchProcessor:
    return BatchProcessor(rec, max_event_bytes=65536, source_topic="user-events")


def _raw(topic: str, offset: int, key: bytes | None, value: bytes) -> RawRecord:
    return RawRecord(topic, 0, offset, key, value, T0)


def test_the_batch_processor_splits_relations_and_dead_letters_bad_ones(rec):
    proc = _processor(rec)
    good = Relation("r1", "a", "b", "add", T0)
    forwards, letters = proc.relations(
        [
            _raw("user-relations", 0, good.key(), good.encode()),
            _raw("user-relations", 1, b"a", b"{"),
        ]
    )
    assert [(f.kind, f.user) for f in forwards] == [("follow", "a"), ("follower", "b")]
    assert [dl.value["reason"] for dl in letters] == ["not_json"]
    assert letters[0].value["source"]["topic"] == "user-relations"


def test_a_friends_like_reaches_the_followers_list_through_the_processor(rec):
    """a follows b; b likes b7: b's batch forwards the like to a, a's batch makes a's list
    with b7 from the friends channel; a's unfollow takes it out again."""
    proc = _processor(rec)
    states: dict[str, UserState] = {}
    rel = Relation("r1", "a", "b", "add", T0 - DAY)
    forwards, _ = proc.relations([_raw("user-relations", 0, rel.key(), rel.encode())])

    def run(records):
        out = proc.process(records, states.get, now=T0)
        states.update(out.states)
        return out

    def as_records(acts, start):
        return [
            _raw("friend-activity", start + n, a.user.encode(), a.encode())
            for n, a in enumerate(acts)
        ]

    out = run(as_records(forwards, 0))
    assert set(out.states) == {"a", "b"} and out.lists == []  # no like yet: no list
    again = run(as_records(forwards, 0))  # redelivered: nothing new, a list with a version
    assert all(w.version >= 0 for _, w, _ in again.lists)
    liked = event("e1", "b7", user_id="b", type="like")
    out = run([_raw("user-events", 0, b"b", liked.encode())])
    assert [(f.kind, f.user, f.item_id) for f in out.forwards] == [("like", "a", "b7")]
    out = run(as_records(out.forwards, 2))
    (rec_list, write, _), = out.lists  # fmt: skip
    assert rec_list.user_id == "a" and ("b7", "friends") in [
        (i.item_id, i.channel) for i in rec_list.items
    ]
    first_version = write.version
    again = run(as_records([like("a", "b", "b7")], 3))  # redelivered: the list again,
    assert again.lists[0][1].version == first_version  # same version (Redis keeps one)
    unfollow = Relation("r2", "a", "b", "remove", T0)
    forwards, _ = proc.relations([_raw("user-relations", 1, unfollow.key(), unfollow.encode())])
    out = run(as_records(forwards, 4))
    (rec_list, write, _), = out.lists  # fmt: skip
    assert "b7" not in [i.item_id for i in rec_list.items if i.channel == "friends"]
    assert write.version > first_version
    bad = run([_raw("friend-activity", 9, b"x", b'{"kind":"poke"}')])
    assert [dl.value["reason"] for dl in bad.dead_letters] == ["schema"]


def test_a_like_that_changes_nothing_the_channel_gives_makes_no_list(rec):
    config = PipelineConfig(channels=(ChannelConfig("friends", 2, 2),), top_n=10)
    pipe = Recommender(rec.catalog, load_model(), config=config)
    proc = _processor(pipe)
    states: dict[str, UserState] = {}

    def lists_after(*acts: Activity) -> int:
        records = [
            _raw("friend-activity", n, a.user.encode(), a.encode()) for n, a in enumerate(acts)
        ]
        out = proc.process(records, states.get, now=T0)
        states.update(out.states)
        return len(out.lists)

    assert lists_after(*(follow("me", f) for f in ("f1", "f2", "f3"))) == 0
    assert lists_after(like("me", "f1", "b1")) == 1
    # b1's score moves but not its place: the merge and the ranking (which reads the place
    # within the channel, not the score) see the same, so no list
    assert lists_after(like("me", "f2", "b1")) == 0
    assert lists_after(like("me", "f1", "b2")) == 1  # b2 enters the top 2
    assert lists_after(like("me", "f3", "b3")) == 0  # ties b2, which wins by key
    assert lists_after(like("me", "f2", "b3")) == 1  # now it enters
    assert ("f3", "b3", T0) in states["me"].friend_likes  # kept all the same
    off = _processor(
        Recommender(rec.catalog, load_model(), config=PipelineConfig((ChannelConfig("embedding"),)))
    )
    out = off.process(
        [
            _raw("friend-activity", 0, b"you", follow("you", "f1").encode()),
            _raw("friend-activity", 1, b"you", like("you", "f1", "b4").encode()),
        ],
        {}.get,
        now=T0,
    )
    assert out.lists == [] and out.applied == 2  # the channel is off: applied, no list
