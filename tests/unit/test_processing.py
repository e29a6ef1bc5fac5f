"""One micro-batch: dead letters keep the original bytes, each touched user gets one list, and
a redelivered batch changes nothing."""

from __future__ import annotations

import base64
import json

import pytest

from nearline_rec.core.events import UserEvent
from nearline_rec.core.pipeline import PipelineConfig, Recommender
from nearline_rec.core.rank import load_model
from nearline_rec.core.user_state import UserState
from nearline_rec.processing import BatchProcessor, RawRecord, dead_letter, list_version
from tests.unit.factories import T0, two_clusters

TOPIC = "user-events"


def processor(max_event_bytes: int = 2048) -> BatchProcessor:
    cat, _, _ = two_clusters(n_per=10)
    rec = Recommender(cat, load_model(), config=PipelineConfig(top_n=5))
    return BatchProcessor(rec, max_event_bytes=max_event_bytes, source_topic=TOPIC)


def ev(n: int, user: str, item: str, kind: str = "like", rating: float | None = None) -> bytes:
    return UserEvent(f"ev-{n}", user, item, kind, T0 + n, rating).encode()


def rec(offset: int, key: bytes | None, value: bytes | None, partition: int = 2) -> RawRecord:
    return RawRecord(TOPIC, partition, offset, key, value, T0 + offset)


class Store:
    """The table the agent keeps: states saved after a batch are what the next one loads."""

    def __init__(self) -> None:
        self.saved: dict[str, bytes] = {}
        self.loads: list[str] = []

    def load(self, user_id: str) -> UserState | None:
        self.loads.append(user_id)
        raw = self.saved.get(user_id)
        return None if raw is None else UserState.from_bytes(raw)

    def save(self, result) -> None:
        for user_id, state in result.states.items():
            self.saved[user_id] = state.to_bytes()


MIXED = [
    rec(0, b"1", ev(0, "1", "a0")),
    rec(1, b"1", b'{"event_id": "broken"'),
    rec(2, b"2", ev(2, "2", "b0")),
    rec(3, b"2", b"x" * 4096),
    rec(4, b"1", ev(4, "1", "a1", "rating", 5.0)),
    rec(5, b"9", ev(5, "1", "a2")),
    rec(6, None, ev(6, "2", "b1")),
    rec(7, b"2", b"\xff\xfe\xfd"),
    rec(8, b"2", None),
    rec(9, b"1", b'["not", "an", "object"]'),
    rec(10, b"2", json.dumps({"event_id": "x", "user_id": "2"}).encode()),
]


def test_malformed_records_become_dead_letters_with_original_bytes():
    store = Store()
    out = processor().process(MIXED, store.load, now=T0 + 100)
    reasons = {dl.value["source"]["offset"]: dl.value["reason"] for dl in out.dead_letters}
    assert reasons == {
        1: "not_json",
        3: "too_large",
        5: "bad_key",
        6: "bad_key",
        7: "not_utf8",
        8: "not_json",
        9: "not_object",
        10: "schema",
    }
    by_offset = {r.offset: r for r in MIXED}
    for dl in out.dead_letters:
        src = dl.value["source"]
        original = by_offset[src["offset"]]
        assert (src["topic"], src["partition"], src["timestamp"]) == (TOPIC, 2, original.timestamp)
        payload = dl.value["payload_b64"]
        assert (None if payload is None else base64.b64decode(payload)) == original.value
        key = dl.value["key_b64"]
        assert (None if key is None else base64.b64decode(key)) == original.key
        assert dl.key == original.key
        assert dl.value["detail"]
        assert json.loads(dl.encode()) == dl.value


def test_valid_events_around_bad_records_are_applied():
    out = processor().process(MIXED, Store().load, now=T0 + 100)
    assert (out.valid, out.applied, out.duplicates) == (3, 3, 0)
    assert list(out.states["1"].seen) == ["a0", "a1"]  # a2 came with a wrong key
    assert list(out.states["2"].seen) == ["b0"]
    assert sorted(lst.user_id for lst, _, _ in out.lists) == ["1", "2"]


def test_key_must_be_the_user_id():
    out = processor().process(
        [rec(0, b"42 ", ev(0, "42", "a0")), rec(1, None, ev(1, "42", "a0"))], Store().load
    )
    assert [dl.value["reason"] for dl in out.dead_letters] == ["bad_key", "bad_key"]
    assert out.lists == [] and out.states == {}
    assert "42" in out.dead_letters[0].value["detail"]


def test_several_events_of_one_user_give_one_list():
    store = Store()
    records = [
        rec(10, b"u", ev(10, "u", "a0")),
        rec(11, b"v", ev(11, "v", "b0")),
        rec(12, b"u", ev(12, "u", "a1")),
        rec(13, b"u", ev(13, "u", "a2", "rating", 4.5)),
    ]
    out = processor().process(records, store.load, now=T0 + 100)
    users = [lst.user_id for lst, _, _ in out.lists]
    assert sorted(users) == ["u", "v"]
    assert sorted(store.loads) == ["u", "v"]  # state loaded once per user, not per event
    lst, write, result = next(x for x in out.lists if x[0].user_id == "u")
    assert out.states["u"].n_events == 3
    assert lst.mode == "personal"
    assert write.version == list_version(13, "personal") == result["version"]
    assert result["source"] == {"topic": TOPIC, "partition": 2, "offset": 13}
    assert result["event_time"] == T0 + 13
    assert write.value == {k: v for k, v in result.items() if k != "source"}
    assert write.n_events == 3 and write.embedding is not None
    assert not {i["item_id"] for i in result["items"]} & {"a0", "a1", "a2"}
    assert result["generated_at"] == T0 + 100


def test_redelivered_records_change_no_state_and_reemit_the_same_list_version():
    # After a crash the changelog can be ahead of the committed offset: the list write or
    # publish of the redelivered batch may be missing, so the list is emitted again with
    # the same version (a no-op for Redis' versioned write).
    store = Store()
    proc = processor()
    records = [rec(n, b"u", ev(n, "u", f"a{n}")) for n in range(4)]
    first = proc.process(records, store.load, now=T0)
    store.save(first)
    assert len(first.lists) == 1 and first.applied == 4
    before = store.saved["u"]
    again = proc.process(records, store.load, now=T0 + 1)
    assert (again.applied, again.duplicates, again.valid, again.reemitted) == (0, 4, 4, 1)
    assert again.states["u"].to_bytes() == before
    assert again.lists[0][1].version == first.lists[0][1].version
    assert [i.item_id for i in again.lists[0][0].items] == [
        i.item_id for i in first.lists[0][0].items
    ]


def test_same_events_produced_again_at_new_offsets_emit_nothing():
    store = Store()
    proc = processor()
    store.save(proc.process([rec(n, b"u", ev(n, "u", f"a{n}")) for n in range(4)], store.load))
    replay = [rec(10 + n, b"u", ev(n, "u", f"a{n}")) for n in range(4)]
    again = proc.process(replay, store.load, now=T0 + 1)
    assert again.lists == [] and again.states == {} and again.reemitted == 0
    assert (again.applied, again.duplicates) == (0, 4)
    assert UserState.from_bytes(store.saved["u"]).n_events == 4


def test_redelivery_with_new_event_ids_at_old_offsets_is_ignored():
    store = Store()
    proc = processor()
    store.save(proc.process([rec(5, b"u", ev(5, "u", "a0"))], store.load))
    before = store.saved["u"]
    replay = proc.process([rec(5, b"u", ev(99, "u", "b0"))], store.load)
    assert replay.duplicates == 1 and replay.applied == 0
    assert replay.states["u"].to_bytes() == before  # b0 never applied
    assert "b0" not in replay.states["u"].seen


def test_partly_new_batch_lists_only_from_the_new_events():
    store = Store()
    proc = processor()
    store.save(proc.process([rec(n, b"u", ev(n, "u", f"a{n}")) for n in range(3)], store.load))
    out = proc.process([rec(n, b"u", ev(n, "u", f"a{n}")) for n in range(5)], store.load)
    assert (out.applied, out.duplicates) == (2, 3)
    assert out.states["u"].n_events == 5
    ((_, write, result),) = out.lists
    assert result["source"]["offset"] == 4 and write.version == list_version(4, "personal")


def test_producer_duplicate_inside_one_batch_counts_once():
    out = processor().process(
        [rec(0, b"u", ev(7, "u", "a0")), rec(1, b"u", ev(7, "u", "a0"))], Store().load
    )
    assert (out.applied, out.duplicates) == (1, 1)
    assert out.states["u"].n_events == 1 and len(out.lists) == 1


def test_user_with_only_unknown_items_gets_a_cold_start_list():
    out = processor().process([rec(3, b"u", ev(3, "u", "ghost", "click"))], Store().load)
    ((lst, write, result),) = out.lists
    assert lst.mode == "cold_start"
    assert write.version == list_version(3, "cold_start") and write.embedding is None


@pytest.mark.parametrize("offset", [0, 1, 17, 10**12])
def test_list_version_orders_modes_and_offsets(offset):
    degraded = list_version(offset, "degraded")
    personal = list_version(offset, "personal")
    assert degraded < personal
    assert list_version(offset, "cold_start") == personal
    assert personal < list_version(offset + 1, "degraded")
    assert list_version(offset + 1, "personal") > personal


def test_dead_letter_detail_is_capped_and_time_defaults_to_now():
    dl = dead_letter(rec(0, b"k", b"v"), "schema", "y" * 10_000)
    assert len(dl.value["detail"]) == 2000
    assert dl.value["failed_at"] > 1.6e9


def test_a_user_moved_to_another_partition_gets_newer_lists_with_true_source_offsets():
    """After the topic grew, a user's events arrive on a new partition at low offsets: they
    apply, the list version still grows (Redis keeps only newer versions) and the output
    record names the offset the new partition reached."""
    store, p = Store(), processor()
    first = p.process([rec(500, b"1", ev(0, "1", "a0"), partition=1)], store.load)
    store.save(first)
    moved = p.process([rec(7, b"1", ev(1, "1", "a1"), partition=6)], store.load)
    store.save(moved)
    assert moved.applied == 1 and moved.duplicates == 0
    (_, w1, _), (_, w2, doc) = first.lists[0], moved.lists[0]
    assert w2.version > w1.version
    assert doc["source"] == {"topic": TOPIC, "partition": 6, "offset": 7}
    # a redelivery on the new partition is recognised as one
    again = p.process([rec(7, b"1", ev(1, "1", "a1"), partition=6)], store.load)
    assert again.applied == 0 and again.reemitted == 1
