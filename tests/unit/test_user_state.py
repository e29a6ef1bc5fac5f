"""User state: idempotent per event id and per offset, bounded, and the embedding follows taste."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nearline_rec.core.user_state import (
    UpdatePolicy,
    UserState,
    apply_event,
    directory_entry,
    policy_from_settings,
)
from nearline_rec.settings import EmbeddingUpdateSettings, WorkerSettings
from tests.unit.factories import DAY, T0, cosine, event

DIM = 8


def basis(i: int) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[i] = 1.0
    return v


# Item "x<i>" sits on axis i; "mix" is halfway between axes 0 and 1.
VECTORS = {f"x{i}": basis(i) for i in range(DIM)}
VECTORS["mix"] = (basis(0) + basis(1)) / np.sqrt(2)


def vector(item_id: str) -> np.ndarray | None:
    return VECTORS.get(item_id)


POLICY = UpdatePolicy()


def apply(state, ev, offset, policy=POLICY):
    return apply_event(state, ev, offset, vector, policy)


def test_first_event_sets_history_seen_and_embedding():
    s = UserState("u1")
    assert s.embedding is None
    assert apply(s, event("e1", "x2", type="like"), 0)
    assert s.history == [("x2", "like", T0, 2.0)]
    assert list(s.seen) == ["x2"]
    assert s.liked == ["x2"]
    assert (s.n_events, s.last_offset, s.last_event_time) == (1, 0, T0)
    np.testing.assert_allclose(s.embedding, basis(2), atol=1e-6)
    assert s.embedding.dtype == np.float32


def test_same_event_id_twice_changes_nothing_but_the_offset():
    s = UserState("u1")
    apply(s, event("e1", "x0"), 5)
    before = s.to_bytes()
    assert not apply(s, event("e1", "x0"), 6)  # producer duplicate at a new offset
    after = UserState.from_bytes(s.to_bytes())
    assert after.n_events == 1 and after.history == UserState.from_bytes(before).history
    np.testing.assert_array_equal(after.taste, UserState.from_bytes(before).taste)
    assert after.last_offset == 6  # the duplicate's offset is consumed, not re-applied


@pytest.mark.parametrize("offset", [3, 4])
def test_redelivery_at_or_below_last_offset_changes_nothing(offset):
    s = UserState("u1")
    apply(s, event("e1", "x0"), 3)
    apply(s, event("e2", "x1", type="like"), 4)
    before = s.to_bytes()
    # even with a new event id: after a crash the table can be ahead of the committed offset
    assert not apply(s, event("e-new", "x5", type="purchase"), offset)
    assert s.to_bytes() == before


def test_offsetless_events_still_dedupe_by_id():
    s = UserState("u1")
    assert apply(s, event("e1", "x0"), -1)
    before = s.to_bytes()
    assert not apply(s, event("e1", "x0"), -1)
    assert s.to_bytes() == before
    assert apply(s, event("e2", "x0"), -1)


def test_history_seen_and_dedupe_are_bounded():
    policy = UpdatePolicy(history_size=5, seen_size=4, dedupe_size=3, liked_size=2)
    s = UserState("u1")
    for n in range(12):
        apply(s, event(f"e{n}", f"i{n}", type="like", ts=T0 + n), n, policy)
    assert [h[0] for h in s.history] == [f"i{n}" for n in range(7, 12)]
    assert list(s.seen) == [f"i{n}" for n in range(8, 12)]
    assert list(s.recent_event_ids) == ["e9", "e10", "e11"]
    assert s.liked == ["i10", "i11"]
    assert s.n_events == 12


def test_seen_keeps_the_most_recently_touched_items():
    policy = UpdatePolicy(seen_size=2)
    s = UserState("u1")
    for n, item_id in enumerate(["a", "b", "a", "c"]):
        apply(s, event(f"e{n}", item_id, ts=T0 + n), n, policy)
    assert list(s.seen) == ["a", "c"]  # "a" was touched again, so "b" is the oldest


def test_embedding_moves_toward_liked_items():
    s = UserState("u1")
    apply(s, event("e1", "x0", type="like"), 0)
    before = cosine(s.embedding, VECTORS["mix"])
    apply(s, event("e2", "x1", type="purchase", ts=T0 + 60), 1)
    assert cosine(s.embedding, basis(1)) > 0.5
    assert cosine(s.embedding, VECTORS["mix"]) > before
    assert s.liked == ["x0", "x1"]


@pytest.mark.parametrize(
    ("kind", "rating"), [("rating", 4.5), ("rating", 5.0), ("like", None), ("click", None)]
)
def test_positive_signals_increase_cosine_to_the_item(kind, rating):
    s = UserState("u1")
    apply(s, event("e1", "x0", type="like"), 0)
    apply(s, event("e2", "x1", type="like"), 1)
    before = cosine(s.embedding, VECTORS["x1"])
    apply(s, event("e3", "x1", type=kind, rating=rating, ts=T0 + 1), 2)
    assert cosine(s.embedding, VECTORS["x1"]) > before


@pytest.mark.parametrize(
    ("kind", "rating"), [("rating", 1.0), ("rating", 2.0), ("dislike", None), ("skip", None)]
)
def test_negative_signals_decrease_cosine_to_the_item(kind, rating):
    s = UserState("u1")
    apply(s, event("e1", "x0", type="like"), 0)
    apply(s, event("e2", "mix", type="like"), 1)
    before = cosine(s.embedding, VECTORS["x1"])
    apply(s, event("e3", "x1", type=kind, rating=rating, ts=T0 + 1), 2)
    assert cosine(s.embedding, VECTORS["x1"]) < before


def test_low_rating_unlikes_and_high_rating_likes():
    s = UserState("u1")
    apply(s, event("e1", "x3", type="rating", rating=4.0), 0)
    assert s.liked == ["x3"] and s.ratings == {"x3": 4.0}
    apply(s, event("e2", "x3", type="rating", rating=1.5, ts=T0 + 1), 1)
    assert s.liked == [] and s.ratings == {"x3": 1.5}


def test_neutral_rating_does_not_move_the_embedding():
    s = UserState("u1")
    apply(s, event("e1", "x0", type="like"), 0)
    taste = s.taste.copy()
    apply(s, event("e2", "x1", type="rating", rating=POLICY.rating_center, ts=T0 + 1), 1)
    np.testing.assert_array_equal(s.taste, taste)
    assert "x1" in s.seen


def test_unknown_item_is_remembered_but_moves_nothing():
    s = UserState("u1")
    assert apply(s, event("e1", "not-in-catalog", type="like"), 0)
    assert s.embedding is None and "not-in-catalog" in s.seen and s.n_events == 1


def test_an_old_signal_weighs_less_than_a_new_one():
    half_life = POLICY.half_life_seconds
    s = UserState("u1")
    apply(s, event("e1", "x0", type="like", ts=T0), 0)
    apply(s, event("e2", "x1", type="like", ts=T0 + 2 * half_life), 1)
    # two half-lives later the first like counts a quarter as much as the second
    e = s.embedding
    assert cosine(e, basis(1)) > cosine(e, basis(0))
    np.testing.assert_allclose(e[0] / e[1], 0.25, rtol=1e-4)


def test_out_of_order_event_is_discounted_not_rewinding_the_clock():
    half_life = POLICY.half_life_seconds
    s = UserState("u1")
    apply(s, event("e1", "x1", type="like", ts=T0 + half_life), 0)
    apply(s, event("e2", "x0", type="like", ts=T0), 1)  # arrives late, happened earlier
    assert s.taste_time == T0 + half_life
    np.testing.assert_allclose(s.embedding[0] / s.embedding[1], 0.5, rtol=1e-4)


def test_same_events_same_state_regardless_of_wall_clock():
    def build() -> bytes:
        s = UserState("u1")
        for n, item_id in enumerate(["x0", "x1", "mix", "x2"]):
            apply(s, event(f"e{n}", item_id, type="like", ts=T0 + n * DAY), n)
        return s.to_bytes()

    assert build() == build()


def test_to_bytes_from_bytes_round_trip_is_exact():
    s = UserState("ü-42")
    for n, (item_id, kind, rating) in enumerate(
        [("x0", "like", None), ("x1", "rating", 4.5), ("mix", "skip", None), ("zz", "view", None)]
    ):
        apply(s, event(f"e{n}", item_id, type=kind, rating=rating, ts=T0 + n * 1.25), 10 + n)
    raw = s.to_bytes()
    back = UserState.from_bytes(raw)
    assert back.to_bytes() == raw
    assert back.history == s.history
    assert back.seen == s.seen and back.liked == s.liked and back.ratings == s.ratings
    assert back.recent_event_ids == s.recent_event_ids
    assert (back.last_offset, back.n_events, back.last_event_time, back.taste_time) == (
        s.last_offset,
        s.n_events,
        s.last_event_time,
        s.taste_time,
    )
    np.testing.assert_array_equal(back.taste, s.taste)
    assert back.taste.dtype == np.float32
    # a restored state keeps deduplicating
    assert not apply(back, event("e1", "x0", type="like"), 99)


def test_round_trip_without_embedding():
    s = UserState("u9")
    back = UserState.from_bytes(s.to_bytes())
    assert back.taste is None and back.embedding is None and back.to_bytes() == s.to_bytes()


def test_policy_from_settings_maps_every_weight():
    emb = EmbeddingUpdateSettings(weight_click=0.5, weight_dislike=-4.0, half_life_seconds=10)
    worker = WorkerSettings(history_size=3, seen_size=4, dedupe_size=5)
    p = policy_from_settings(emb, worker)
    assert p.weight(event("e", "i", type="click")) == 0.5
    assert p.weight(event("e", "i", type="dislike")) == -4.0
    assert p.weight(event("e", "i", type="rating", rating=4.5)) == 4.5 - emb.rating_center
    assert (p.half_life_seconds, p.history_size, p.seen_size, p.dedupe_size) == (10, 3, 4, 5)
    assert p.is_like(event("e", "i", type="rating", rating=emb.like_threshold))
    assert not p.is_like(event("e", "i", type="rating", rating=emb.like_threshold - 0.5))


def test_events_from_a_new_partition_apply_and_the_position_keeps_growing():
    """A user's events move to a partition of lower offsets (the topic grew, or a producer
    with another partitioner): they are new events, not redeliveries, and the position the
    list versions come from keeps growing. Failed before: every one of them was dropped as
    a redelivery (offset at or below the last one applied, from another partition)."""
    s = UserState("u1")
    assert apply_event(s, event("e1", "x0"), 100, vector, POLICY, partition=2)
    assert apply_event(s, event("e2", "x1"), 101, vector, POLICY, partition=2)
    positions = [s.last_offset]
    for n, off in enumerate((3, 4, 9)):
        assert apply_event(s, event(f"m{n}", "x2"), off, vector, POLICY, partition=5)
        positions.append(s.last_offset)
    assert s.n_events == 5 and positions == [101, 102, 103, 104]
    assert s.offsets == {2: 101, 5: 9}
    # redeliveries from either partition change nothing
    before = s.to_bytes()
    assert not apply_event(s, event("new", "x3"), 4, vector, POLICY, partition=5)
    assert not apply_event(s, event("new", "x3"), 100, vector, POLICY, partition=2)
    assert s.to_bytes() == before
    again = UserState.from_bytes(before)
    assert again.offsets == {2: 101, 5: 9} and again.last_offset == 104


def test_a_state_stored_before_per_partition_offsets_reads_its_one_partition():
    s = UserState("u1")
    apply_event(s, event("e1", "x0"), 40, vector, POLICY, partition=3)
    s.partition = 3
    doc = json.loads(s.to_bytes())
    del doc["po"]  # the layout before
    old = UserState.from_bytes(json.dumps(doc).encode())
    assert old.offsets == {3: 40} and old.last_offset == 40
    assert not apply_event(old, event("e-new", "x1"), 40, vector, POLICY, partition=3)
    assert apply_event(old, event("e-new", "x1"), 41, vector, POLICY, partition=3)


def _stored(position: int, n: int) -> bytes:
    s = UserState("u")
    s.last_offset, s.n_events = position, n
    return s.to_bytes()


def test_recovery_keeps_the_newest_copy_of_a_state_whatever_the_partition_order():
    """A user's state on two changelog partitions (its events moved when the topic grew):
    read in either order, the newer copy (higher position) is the one applied."""
    from nearline_rec.core.user_state import newest_states

    old, new = _stored(500, 6), _stored(503, 9)
    for batch in ([(b"u", old), (b"u", new)], [(b"u", new), (b"u", old)]):
        keep = newest_states(batch, {}.get)
        assert [batch[i][1] for i in keep] == [new]
    # across batches: the stored copy is newer than the one arriving now
    assert newest_states([(b"u", old)], {b"u": new}.get) == set()
    assert newest_states([(b"u", new)], {b"u": old}.get) == {0}
    # other keys and tombstones pass
    assert newest_states([(b"a", old), (b"b", None)], {}.get) == {0, 1}


def test_a_topic_made_again_starts_its_offsets_afresh_and_ids_still_dedupe():
    """Failed before: user-events deleted and made again restarts at offset 0, and every
    event of a known user was taken for a redelivery of the old topic's offsets."""
    s = UserState("u1")
    for i in range(5):
        assert apply_event(s, event(f"old{i}", "x0"), 100 + i, vector, POLICY, 0, "topic-a")
    assert apply_event(s, event("new0", "x1"), 0, vector, POLICY, 0, "topic-b")
    assert s.source == "topic-b" and s.offsets == {0: 0}
    assert not apply_event(s, event("new0", "x1"), 0, vector, POLICY, 0, "topic-b")  # redelivery
    assert not apply_event(s, event("old4", "x0"), 1, vector, POLICY, 0, "topic-b")  # same id
    assert apply_event(s, event("new1", "x2"), 2, vector, POLICY, 0, "topic-b")
    assert s.n_events == 7 and s.last_offset > 104  # list versions keep growing
    again = UserState.from_bytes(s.to_bytes())
    assert again.source == "topic-b" and again.offsets == {0: 2}
    # a state kept before topic ids adopts the id without forgetting its offsets
    legacy = UserState("u2", offsets={0: 9})
    assert not apply_event(legacy, event("z", "x0"), 9, vector, POLICY, 0, "topic-a")
    assert legacy.source == "topic-a"


def test_directory_entry_reads_what_the_whole_state_holds():
    s = UserState("u1")
    apply(s, event("e1", "x2", type="like"), 0)
    apply(s, event("e2", "mix", type="like", ts=T0 + 60), 1)
    user_id, embedding, liked, last = directory_entry(s.to_bytes())
    full = UserState.from_bytes(s.to_bytes())
    assert (
        (user_id, liked, last)
        == ("u1", full.liked, full.last_event_time)
        == (
            "u1",
            ["x2", "mix"],
            T0 + 60,
        )
    )
    np.testing.assert_array_equal(embedding, full.embedding)
    assert directory_entry(UserState("u2").to_bytes())[1] is None
