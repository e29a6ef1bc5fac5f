"""The binary user record (app/storage/codec.py) and the in-process code book."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nearline_rec.schemas import load_schema, validate
from nearline_rec.storage import codec
from nearline_rec.storage.codes import CodeBook

FINITE16 = st.floats(-65504, 65504, allow_nan=False, width=32)


@st.composite
def records(draw: st.DrawFn) -> codec.UserRecord:
    dim = draw(st.sampled_from([0, 1, 8, 32, 64]))
    emb = None
    if dim:
        emb = np.array(draw(st.lists(FINITE16, min_size=dim, max_size=dim)), dtype=np.float32)
        emb = emb.astype(np.float16).astype(np.float32)  # what survives storage exactly
    items = draw(
        st.lists(
            st.tuples(st.integers(1, codec.MAX_ITEM_CODE), st.sampled_from(codec.CHANNELS)),
            max_size=60,
        )
    )
    return codec.UserRecord(
        version=draw(st.integers(0, codec.MAX_VERSION)),
        generated_at=draw(st.floats(0, 4.1e9)),
        event_time=draw(st.floats(0, 4.1e9)),
        n_events=draw(st.integers(0, 2**32 - 1)),
        mode=draw(st.sampled_from(codec.MODES)),
        model_code=draw(st.integers(0, codec.MAX_STRING_CODE)),
        embedding_code=draw(st.integers(0, codec.MAX_STRING_CODE)),
        variant_code=draw(st.integers(0, codec.MAX_STRING_CODE)),
        embedding=emb,
        items=tuple(items),
    )


def same(a: codec.UserRecord, b: codec.UserRecord) -> bool:
    if (a.embedding is None) != (b.embedding is None):
        return False
    if a.embedding is not None and not np.array_equal(a.embedding, b.embedding):
        return False
    return {**_fields(a), "embedding": None} == {**_fields(b), "embedding": None}


def _fields(r: codec.UserRecord) -> dict:
    return {f: getattr(r, f) for f in codec.UserRecord.__slots__}


@settings(max_examples=300, deadline=None)
@given(records())
def test_round_trip_and_size(rec):
    raw = codec.encode(rec)
    dim = 0 if rec.embedding is None else rec.embedding.size
    assert len(raw) == codec.HEADER_BYTES + 2 * dim + 4 * len(rec.items)
    back = codec.decode(raw)
    assert same(back, rec)
    assert codec.encode(back) == raw
    assert codec.stored_version(raw) == rec.version
    assert raw[codec.VERSION_OFFSET : codec.VERSION_OFFSET + 8] == codec.version_bytes(rec.version)
    if back.embedding is not None:
        assert back.embedding.dtype == np.float32


@given(st.integers(0, codec.MAX_VERSION), st.integers(0, codec.MAX_VERSION))
def test_version_bytes_sort_like_the_numbers(a, b):
    # the Lua compare-and-set reads these bytes; byte order must be numeric order
    assert (codec.version_bytes(a) < codec.version_bytes(b)) == (a < b)


@settings(max_examples=200, deadline=None)
@given(records(), st.data())
def test_truncated_or_extended_values_are_rejected_clearly(rec, data):
    raw = codec.encode(rec)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(codec.CorruptRecord):
        codec.decode(raw[:cut])
    with pytest.raises(codec.CorruptRecord, match="header"):
        codec.decode(raw + b"\0" * data.draw(st.integers(1, 7)))


@given(st.binary(max_size=400))
def test_arbitrary_bytes_decode_or_raise_corrupt(raw):
    try:
        rec = codec.decode(raw)
    except codec.CorruptRecord:
        return
    assert codec.encode(rec) == raw


def test_unknown_format_and_bad_codes_name_the_problem():
    rec = codec.UserRecord(9, 1.0, 1.0, 1, "personal", 1, 2, 0, None, ((5, "genre"),))
    raw = bytearray(codec.encode(rec))
    with pytest.raises(codec.CorruptRecord, match="format 2; this code reads format 1"):
        codec.decode(b"\x02" + bytes(raw[1:]))
    bad_mode = bytearray(raw)
    bad_mode[29] = 9
    with pytest.raises(codec.CorruptRecord, match="mode code 9"):
        codec.decode(bytes(bad_mode))
    bad_channel = bytearray(raw)
    bad_channel[-1] = 0xF0  # channel code 15
    with pytest.raises(codec.CorruptRecord, match="unknown channel code"):
        codec.decode(bytes(bad_channel))
    with pytest.raises(codec.CorruptRecord, match="shorter than its header"):
        codec.decode(b'{"user_id": "42"}')


def test_encode_refuses_what_it_cannot_store():
    base = codec.UserRecord(1, 0.0, 0.0, 0, "personal", 0, 0, 0, None, ())
    for bad, match in [
        ({"items": ((1, "nowhere"),)}, "unknown channel"),
        ({"items": ((0, "genre"),)}, "item code 0"),
        ({"items": ((codec.MAX_ITEM_CODE + 1, "genre"),)}, "item code"),
        ({"mode": "sideways"}, "unknown mode"),
        ({"version": -1}, "version"),
        ({"version": 2**53}, "version"),
        ({"variant_code": 70_000}, "variant code"),
    ]:
        with pytest.raises(ValueError, match=match):
            codec.encode(codec.UserRecord(**{**_fields(base), **bad}))


def test_embedding_is_float16_on_disk_and_clipped():
    vec = np.array([0.1, -0.2, 1e6, -1e6, 0.0], dtype=np.float32)
    rec = codec.UserRecord(1, 0.0, 0.0, 0, "personal", 0, 0, 0, vec, ())
    back = codec.decode(codec.encode(rec)).embedding
    assert back is not None and back.dtype == np.float32
    assert np.allclose(back[:2], vec[:2], rtol=1e-3)
    assert back[2] == 65504.0 and back[3] == -65504.0


def test_channels_match_the_schema_enum():
    enum = load_schema("redis-user-list")["properties"]["items"]["items"]["properties"]
    assert tuple(enum["channel"]["enum"]) == codec.CHANNELS
    assert len(codec.CHANNELS) <= 16


def _list_value(**kw):
    value = {
        "user_id": "42",
        "items": [
            {"item_id": "318", "score": 0.9, "channel": "embedding", "title": "Shawshank"},
            {"item_id": "50", "score": 0.7, "channel": "genre", "title": ""},
            {"item_id": "7", "score": 0.5, "channel": "trending", "title": "Seven"},
        ],
        "degraded": False,
        "mode": "personal",
        "model_version": "linear-default-1",
        "embedding_version": "v1",
        "generated_at": 1.7e9 + 2.5,
        "version": 2049,
        "event_time": 1.7e9,
        "variant": "control",
    }
    value.update(kw)
    return value


@pytest.mark.parametrize("mode", codec.MODES)
def test_list_value_round_trip_through_a_code_book(mode):
    book = CodeBook()
    for n, iid in enumerate(["318", "50", "7"], 1):
        book.item_code[iid] = n
        book.item_id[n] = iid
    for n, s in enumerate(["linear-default-1", "v1", "control"], 1):
        book.string_code[s] = n
        book.string[n] = s
    value = _list_value(mode=mode, degraded=mode == "degraded")
    rec = codec.record_from_list(
        value,
        version=2049,
        embedding=np.ones(32, np.float32),
        n_events=12,
        event_time=1.7e9,
        item_code=book.item_code.__getitem__,
        string_code=book.string_code.__getitem__,
    )
    raw = codec.encode(rec)
    assert len(raw) == 40 + 64 + 3 * 4
    back = codec.list_from_record(
        codec.decode(raw), "42", item_id=book.item_id.get, string=book.string.get
    )
    want = {
        **value,
        "items": [{"item_id": i["item_id"], "channel": i["channel"]} for i in value["items"]],
    }
    assert back == want
    validate("redis-user-list", back)
    assert validate("redis-user-list", json.loads(json.dumps(back))) is None
    # titles from a source; unknown codes (an item the registry lost) are skipped
    del book.item_id[2]
    titled = codec.list_from_record(
        codec.decode(raw),
        "42",
        item_id=book.item_id.get,
        string=book.string.get,
        title={"318": "Shawshank"}.get,
    )
    assert titled["items"] == [
        {"item_id": "318", "channel": "embedding", "title": "Shawshank"},
        {"item_id": "7", "channel": "trending"},
    ]


def test_no_variant_and_empty_versions_use_code_zero():
    book = CodeBook()
    book.item_code["1"] = 1
    book.item_id[1] = "1"
    value = _list_value(
        items=[{"item_id": "1", "channel": "popular"}], model_version="", embedding_version=""
    )
    del value["variant"]
    rec = codec.record_from_list(
        value,
        version=4,
        embedding=None,
        n_events=0,
        event_time=0.0,
        item_code=book.item_code.__getitem__,
        string_code=book.string_code.__getitem__,
    )
    assert (rec.model_code, rec.embedding_code, rec.variant_code) == (0, 0, 0)
    back = codec.list_from_record(rec, "42", item_id=book.item_id.get, string=book.string.get)
    assert "variant" not in back and back["model_version"] == "" and back["event_time"] == 1.7e9


def test_code_book_forgets_everything_when_the_registry_epoch_changes():
    book = CodeBook()
    assert book.learn_interned([["e1", 1, 2]], ["a", "b"], []) is True
    assert book.learn_interned([["e1", 1]], [], ["v1"]) is True
    assert book.item_code == {"a": 1, "b": 2} and book.string_code["v1"] == 1
    assert book.missing_items(["a", "c", "c"]) == ["c"]
    assert book.learn_interned([["e2", 1]], ["c"], []) is False
    assert book.item_code == {"c": 1} and book.item_id == {1: "c"}
    assert book.string_code == {"": 0}
    with pytest.raises(OverflowError, match="registry full"):
        book.learn_interned([["e2", codec.MAX_ITEM_CODE + 1]], ["z"], [])
