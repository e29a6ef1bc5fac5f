"""Raw bytes in: valid events decode, every kind of bad record is rejected with its reason."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nearline_rec.core.events import (
    EVENT_TYPES,
    InvalidRecord,
    ItemUpdate,
    UserEvent,
    encode_item_update,
)
from nearline_rec.records import decode_event, decode_item_update

BASE = {"event_id": "e-1", "user_id": "42", "item_id": "318", "type": "click", "timestamp": 1.7e9}


def raw(doc: dict) -> bytes:
    return json.dumps(doc).encode()


def rejected(value: bytes | None, *, max_bytes: int = 65536) -> InvalidRecord:
    with pytest.raises(InvalidRecord) as info:
        decode_event(value, max_bytes=max_bytes)
    err = info.value
    assert isinstance(err, ValueError)
    assert str(err).startswith(f"{err.reason}: ")
    return err


# --- decode_event: valid ---------------------------------------------------------------


def test_valid_event_decodes():
    ev = decode_event(raw(BASE))
    assert ev == UserEvent("e-1", "42", "318", "click", 1.7e9, None)


def test_integer_ids_become_decimal_strings():
    ev = decode_event(raw({**BASE, "user_id": 7, "item_id": 1024}))
    assert (ev.user_id, ev.item_id) == ("7", "1024")
    assert isinstance(ev.timestamp, float)


def test_rating_is_optional_except_for_rating_events():
    assert decode_event(raw({**BASE, "type": "like"})).rating is None
    assert decode_event(raw({**BASE, "type": "view", "rating": 2})).rating == 2.0
    ev = decode_event(raw({**BASE, "type": "rating", "rating": 4.5}))
    assert (ev.type, ev.rating) == ("rating", 4.5)
    assert rejected(raw({**BASE, "type": "rating"})).reason == "schema"


@pytest.mark.parametrize("rating", [0.5, 5, 3])
def test_rating_bounds_are_inclusive(rating):
    assert decode_event(raw({**BASE, "type": "rating", "rating": rating})).rating == rating


def test_context_is_accepted_and_dropped():
    ev = decode_event(raw({**BASE, "context": {"page": "home"}}))
    assert ev == decode_event(raw(BASE))


def test_encode_round_trips():
    for ev in (
        UserEvent("e", "u ü", "i", "rating", 12.25, 3.5),
        UserEvent("e2", "7", "9", "skip", 0.0),
    ):
        assert decode_event(ev.encode()) == ev


# --- decode_event: invalid, one reason each ------------------------------------------


def test_too_large():
    value = raw({**BASE, "context": {"pad": "x" * 500}})
    err = rejected(value, max_bytes=len(value) - 1)
    assert err.reason == "too_large"
    assert str(len(value)) in err.detail
    assert decode_event(value, max_bytes=len(value)).event_id == "e-1"  # the limit is inclusive


@pytest.mark.parametrize("value", [b"\xff\xfe{}", b'{"event_id": "caf\xe9"}', b"\xc3"])
def test_not_utf8(value):
    assert rejected(value).reason == "not_utf8"


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"{not json",
        b'{"a": 1} {"b": 2}',
        b'{"event_id":"e","user_id":"1","item_id":"1","type":"click","timestamp":NaN}',
        b'{"event_id":"e","user_id":"1","item_id":"1","type":"click","timestamp":Infinity}',
        b'{"event_id":"e","user_id":"1","item_id":"1","type":"click","timestamp":-Infinity}',
        b"[" * 60_000,
        b"[" * 30_000 + b"]" * 30_000,
    ],
    ids=["empty", "broken", "two-docs", "nan", "inf", "neg-inf", "deep-open", "deep-closed"],
)
def test_not_json(value):
    assert len(value) <= 65536  # within size: the parser, not the limit, must reject it
    assert rejected(value).reason == "not_json"


def test_tombstone_is_rejected():
    assert rejected(None).reason == "not_json"


@pytest.mark.parametrize("value", [b"[]", b'"text"', b"42", b"null", b"[{}]"])
def test_not_object(value):
    assert rejected(value).reason == "not_object"


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({k: v for k, v in BASE.items() if k != "event_id"}, "event_id"),
        ({k: v for k, v in BASE.items() if k != "timestamp"}, "timestamp"),
        ({**BASE, "user_id": 4.5}, "user_id"),
        ({**BASE, "user_id": True}, "user_id"),
        ({**BASE, "user_id": -1}, "user_id"),
        ({**BASE, "item_id": ""}, "item_id"),
        ({**BASE, "item_id": ["1"]}, "item_id"),
        ({**BASE, "event_id": "a\nb"}, "event_id"),
        ({**BASE, "timestamp": "2024-01-01"}, "timestamp"),
        ({**BASE, "type": "hover"}, "type"),
        ({**BASE, "type": "rating", "rating": 0}, "rating"),
        ({**BASE, "type": "rating", "rating": 5.5}, "rating"),
        ({**BASE, "type": "rating", "rating": "5"}, "rating"),
        ({**BASE, "surprise": 1}, "surprise"),
        ({**BASE, "timestamp": 5e9}, "timestamp"),
        ({**BASE, "timestamp": -1}, "timestamp"),
    ],
)
def test_schema_violations(doc, field):
    err = rejected(raw(doc))
    assert err.reason == "schema"
    assert field in err.detail


# --- item updates ----------------------------------------------------------------------

ITEM = {"item_id": "318", "op": "upsert", "embedding": [0.5, -1.0, 2.0, 0.25]}


def item_rejected(doc_or_bytes, *, key: bytes | None = b"318", dim: int = 4) -> InvalidRecord:
    value = raw(doc_or_bytes) if isinstance(doc_or_bytes, dict) else doc_or_bytes
    with pytest.raises(InvalidRecord) as info:
        decode_item_update(key, value, dim=dim)
    return info.value


def test_item_upsert_decodes():
    doc = {
        **ITEM,
        "item_id": 318,
        "title": "T",
        "genres": ["Crime", "Drama"],
        "year": 1994,
        "recommendable": False,
        "release_ts": 7.8e8,
    }
    up = decode_item_update(b"318", raw(doc), dim=4)
    assert (up.item_id, up.op, up.title, up.genres, up.year) == (
        "318",
        "upsert",
        "T",
        ("Crime", "Drama"),
        1994,
    )
    assert up.recommendable is False and up.release_ts == 7.8e8
    assert up.embedding.dtype == np.float32
    np.testing.assert_array_equal(up.embedding, np.float32(ITEM["embedding"]))


def test_item_defaults():
    up = decode_item_update(b"318", raw(ITEM), dim=4)
    assert up.recommendable is True and up.genres == () and up.year is None


@pytest.mark.parametrize("dim", [3, 5])
def test_wrong_dimension(dim):
    err = item_rejected(ITEM, dim=dim)
    assert err.reason == "bad_embedding"
    assert str(dim) in err.detail


def test_embedding_overflowing_float32():
    # JSON cannot carry NaN (parse_constant rejects it), but 1e39 is finite in float64
    # and infinite in float32.
    err = item_rejected({**ITEM, "embedding": [1e39, 0.0, 0.0, 1.0]})
    assert err.reason == "bad_embedding"
    assert "float32" in err.detail


def test_nan_literal_in_embedding_is_not_json():
    value = b'{"item_id":"1","op":"upsert","embedding":[NaN,1,1,1]}'
    assert item_rejected(value).reason == "not_json"


def test_all_zero_embedding():
    err = item_rejected({**ITEM, "embedding": [0, 0, 0.0, 0]})
    assert err.reason == "bad_embedding"
    assert "zero" in err.detail


def test_upsert_without_an_embedding_is_a_catalogue_item():
    up = decode_item_update(b"1", raw({"item_id": "1", "op": "upsert", "genres": ["Drama"]}), dim=4)
    assert (up.op, up.embedding, up.genres) == ("upsert", None, ("Drama",))
    again = decode_item_update(b"1", encode_item_update(up), dim=4)
    assert again == up


def test_tombstone_is_a_delete_of_its_key():
    up = decode_item_update(b"318", None, dim=4)
    assert (up.item_id, up.op, up.embedding) == ("318", "delete", None)


@pytest.mark.parametrize("key", [None, b""])
def test_tombstone_without_key(key):
    with pytest.raises(InvalidRecord) as info:
        decode_item_update(key, None, dim=4)
    assert info.value.reason == "bad_key"


def test_delete_op():
    up = decode_item_update(b"318", b'{"item_id": 318, "op": "delete"}', dim=4)
    assert (up.item_id, up.op) == ("318", "delete")


def test_item_update_too_large_and_not_object():
    with pytest.raises(InvalidRecord) as info:
        decode_item_update(b"1", raw(ITEM), dim=4, max_bytes=10)
    assert info.value.reason == "too_large"
    assert item_rejected(b"[1, 2]").reason == "not_object"


def test_encode_item_update_round_trips():
    vec = np.array([0.125, -2.5, 3.0, 0.0625], dtype=np.float32)
    up = ItemUpdate("7", "upsert", vec, "T (2001)", ("Sci-Fi",), 2001, True, 9.9e8)
    back = decode_item_update(b"7", encode_item_update(up), dim=4)
    assert (back.item_id, back.title, back.genres, back.year, back.release_ts) == (
        "7",
        "T (2001)",
        ("Sci-Fi",),
        2001,
        9.9e8,
    )
    np.testing.assert_array_equal(back.embedding, vec)
    gone = decode_item_update(b"7", encode_item_update(ItemUpdate("7", "delete")), dim=4)
    assert gone.op == "delete"


# --- the fast validator agrees with the schema -------------------------------------------

_VALUES = [
    None, True, False, 0, 1, -1, 7, 0.5, 5, 5.0, 4.75, 7.0, 7.5, -0.0, 1e400, -1e400,
    2**53 - 1, 2**53, 9007199254740991.0, 9007199254740992.0, 4102444800, 4102444800.5,
    "", "x", "42", "a\nb", "ab\n", "\x7f", "tab\there", "ü" * 128, "ü" * 129, "click",
    "rating", "hover", [], ["1"], {}, {"page": "home"}, {str(i): i for i in range(33)},
    {str(i): i for i in range(32)},
]  # fmt: skip


def _corpus() -> list[dict]:
    docs = [dict(BASE), {**BASE, "type": "rating", "rating": 4.5}, {}]
    for field in ("event_id", "user_id", "item_id", "type", "rating", "timestamp", "context"):
        for value in _VALUES:
            for base in (BASE, {**BASE, "type": "rating", "rating": 3}):
                docs.append({**base, field: value})
        docs.append({k: v for k, v in BASE.items() if k != field})
    for event_type in (*EVENT_TYPES, "Click", ""):
        docs.append({**BASE, "type": event_type})
    docs.append({**BASE, "extra": 1})
    docs.append({**BASE, "Event_id": "e"})
    return docs


def test_fast_validator_agrees_with_the_schema_on_a_corpus():
    from nearline_rec.core.events import _event_is_valid
    from nearline_rec.schemas import first_error

    corpus = _corpus()
    valid = 0
    for doc in corpus:
        expected = first_error("user-event", doc) is None
        assert _event_is_valid(doc) is expected, doc
        valid += expected
    # both kinds are well represented
    assert 50 < valid < len(corpus) - 50


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["event_id", "user_id", "item_id", "type", "rating", "timestamp", "context", "x"]
        ),
        st.one_of(
            st.sampled_from(_VALUES),
            st.text(max_size=140),
            st.integers(min_value=-10, max_value=2**54),
            st.floats(allow_nan=False),
            st.sampled_from(EVENT_TYPES),
        ),
    )
)
def test_fast_validator_agrees_with_the_schema_on_random_documents(doc):
    from nearline_rec.core.events import _event_is_valid
    from nearline_rec.schemas import first_error

    assert _event_is_valid(doc) is (first_error("user-event", doc) is None)


@settings(max_examples=200, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "event_id": st.text(min_size=1, max_size=130),
            "user_id": st.one_of(st.text(max_size=130), st.integers(-2, 2**53 + 2)),
            "item_id": st.one_of(st.text(max_size=130), st.floats(allow_nan=False)),
            "type": st.sampled_from(EVENT_TYPES),
            "timestamp": st.floats(allow_nan=False, min_value=-1, max_value=5e9),
        },
        optional={"rating": st.floats(allow_nan=False, min_value=0, max_value=6)},
    )
)
def test_fast_validator_agrees_on_nearly_valid_events(doc):
    from nearline_rec.core.events import _event_is_valid
    from nearline_rec.schemas import first_error

    assert _event_is_valid(doc) is (first_error("user-event", doc) is None)
