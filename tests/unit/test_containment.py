"""Failure containment in the pure batch step: a record the core raises on is dead-lettered
(processing_error) while the rest of the batch applies; a list that cannot be made falls back
to the degraded list; every dead letter fits the broker, however large the record."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from nearline_rec.core.pipeline import Recommender
from nearline_rec.processing import BatchProcessor, RawRecord, dead_letter
from nearline_rec.schemas import first_error
from tests.unit.test_processing import Store, ev, processor, rec


class Poisoned(RuntimeError):
    pass


@pytest.fixture
def poisoned(monkeypatch: pytest.MonkeyPatch) -> None:
    """The core raises on item 'a3' half way through applying it (after the state changed),
    and while making user '3''s list."""
    apply, ranked = Recommender.apply, Recommender._ranked

    def bad_apply(self, state, event, offset, *where):
        applied = apply(self, state, event, offset, *where)
        if event.item_id == "a3":
            raise Poisoned("item a3 breaks the core")
        return applied

    def bad_ranked(self, state, *args):
        if state.user_id == "3":
            raise Poisoned("no list for user 3")
        return ranked(self, state, *args)

    monkeypatch.setattr(Recommender, "apply", bad_apply)
    monkeypatch.setattr(Recommender, "_ranked", bad_ranked)


def test_a_record_the_core_raises_on_is_quarantined_and_the_rest_applies(poisoned):
    # Fails with the quarantine reverted: Poisoned escapes process() and the batch is lost.
    store = Store()
    batch = [
        rec(0, b"1", ev(0, "1", "a0")),
        rec(1, b"1", ev(1, "1", "a3")),  # poison, between two good events of the same user
        rec(2, b"1", ev(2, "1", "a1")),
        rec(3, b"2", ev(3, "2", "b0")),
    ]
    out = processor().process(batch, store.load)
    assert [dl.value["reason"] for dl in out.dead_letters] == ["processing_error"]
    letter = out.dead_letters[0].value
    assert letter["source"]["offset"] == 1
    assert letter["error"]["type"] == "Poisoned"
    assert "test_containment.py" in letter["error"]["where"]
    assert "applying the event" in letter["detail"]
    assert base64.b64decode(letter["payload_b64"]) == batch[1].value
    assert first_error("dead-letter", json.loads(out.dead_letters[0].encode())) is None
    assert [r for r, _ in out.errors] == [batch[1]]
    # user 1 has exactly its two good events: the poison's half-applied change was undone
    state = out.states["1"]
    assert state.n_events == 2 and state.last_offset == 2
    assert "a3" not in state.seen and {"a0", "a1"} <= set(state.seen)
    assert out.applied == 3 and sorted(out.states) == ["1", "2"]
    assert {w.user_id for _, w, _ in out.lists} == {"1", "2"}


def test_a_list_that_cannot_be_made_is_the_degraded_list_and_the_user_is_dirty(poisoned):
    store = Store()
    out = processor().process([rec(0, b"3", ev(0, "3", "a0"))], store.load)
    assert not out.dead_letters  # the event applied: nothing to quarantine
    assert out.states["3"].n_events == 1
    assert [u for u, _, _ in out.list_errors] == ["3"] and out.dirty == ["3"]
    (rec_list, write, _doc) = out.lists[0]
    assert rec_list.mode == "degraded" and write.version % 2 == 0  # a normal list outranks it
    assert "a0" not in {i.item_id for i in rec_list.items}


def test_a_poison_record_alone_in_a_batch_leaves_no_state_and_no_list(poisoned):
    out = processor().process([rec(5, b"1", ev(5, "1", "a3"))], Store().load)
    assert [dl.value["reason"] for dl in out.dead_letters] == ["processing_error"]
    assert not out.states and not out.lists and out.applied == 0


def test_a_decoder_bug_is_quarantined(monkeypatch: pytest.MonkeyPatch):
    p = processor()

    def broken(record):
        if record.offset == 1:
            raise KeyError("decoder bug")
        return BatchProcessor.decode(p, record)

    monkeypatch.setattr(p, "decode", broken)
    out = p.process([rec(0, b"1", ev(0, "1", "a0")), rec(1, b"1", ev(1, "1", "a1"))], Store().load)
    assert [dl.value["error"]["type"] for dl in out.dead_letters] == ["KeyError"]
    assert out.states["1"].n_events == 1


def test_unreadable_stored_state_quarantines_the_users_records_only():
    store = Store()
    store.saved["1"] = b"\x00garbage"
    out = processor().process(
        [rec(0, b"1", ev(0, "1", "a0")), rec(1, b"2", ev(1, "2", "b0"))], store.load
    )
    assert [dl.value["source"]["offset"] for dl in out.dead_letters] == [0]
    assert "stored state" in out.dead_letters[0].value["detail"]
    assert list(out.states) == ["2"]


@pytest.mark.parametrize("size", [900 * 1024, 1024 * 1024 - 100])
def test_a_dead_letter_of_a_record_near_the_broker_limit_fits_and_names_the_original(size):
    # Fails with the cut reverted: the letter is ~4/3 of the record, over the 1 MiB limit.
    value = b'{"user_id": "1", "pad": "' + b"x" * (size - 30) + b'"}'
    key = b"k" * 5000
    dl = dead_letter(RawRecord("user-events", 1, 7, key, value, 1.0), "too_large", "big")
    encoded = dl.encode()
    assert len(encoded) < 512 * 1024
    doc = json.loads(encoded)
    assert first_error("dead-letter", doc) is None
    assert doc["payload_truncated"] is True and doc["payload_bytes"] == len(value)
    assert doc["payload_sha256"] == hashlib.sha256(value).hexdigest()
    assert value.startswith(base64.b64decode(doc["payload_b64"]))
    assert len(base64.b64decode(doc["payload_b64"])) == 256 * 1024
    assert doc["key_truncated"] is True and doc["key_bytes"] == 5000
    assert dl.key == key[:1024]


def test_a_small_dead_letter_is_kept_whole_without_truncation_fields():
    doc = dead_letter(RawRecord("user-events", 0, 1, b"7", b"abc", None), "not_json", "x").value
    assert base64.b64decode(doc["payload_b64"]) == b"abc"
    assert not {"payload_truncated", "payload_bytes", "payload_sha256"} & set(doc)


def test_the_processor_cuts_letters_at_its_configured_size():
    p = processor(max_event_bytes=2048)
    p.dead_letter_max_bytes = 4096
    out = p.process([rec(0, b"1", b"y" * 100_000)], Store().load)
    doc = out.dead_letters[0].value
    assert doc["reason"] == "too_large" and doc["payload_bytes"] == 100_000
    assert len(base64.b64decode(doc["payload_b64"])) == 4096


@pytest.mark.parametrize(
    ("error", "code"),
    [
        ("OutOfMemoryError:command not allowed when used memory > 'maxmemory'.", "OOM"),
        ("ReadOnlyError:You can't write against a read only replica.", "READONLY"),
        ("NoPermissionError:this user has no permissions to run the 'set' command", "NOPERM"),
        (
            "ResponseError:WRONGTYPE Operation against a key holding the wrong kind of value",
            "WRONGTYPE",
        ),
        ("ResponseError:MISCONF Redis is configured to save RDB snapshots", "MISCONF"),
        ("ResponseError:ERR unknown command 'FOO'", None),
        ("ConnectionError:Error 111 connecting", None),
    ],
)
def test_redis_error_replies_no_retry_can_fix_are_classified(error: str, code: str | None):
    import redis.exceptions

    from nearline_rec.storage.redis_store import REFUSALS, refusal

    cls, message = error.split(":", 1)
    assert refusal(getattr(redis.exceptions, cls)(message)) == code
    assert code is None or REFUSALS[code]  # every code says what the operator must do
