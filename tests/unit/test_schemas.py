"""schemas/: valid 2020-12 schemas, examples that validate, and written records that match."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from jsonschema import Draft202012Validator

from nearline_rec.core.catalog import IndexConfig, ItemCatalog
from nearline_rec.core.events import ItemUpdate, UserEvent, encode_item_update
from nearline_rec.core.pipeline import PipelineConfig, RecItem, RecList, Recommender
from nearline_rec.core.rank import load_model
from nearline_rec.processing import BatchProcessor, RawRecord, dead_letter
from nearline_rec.schemas import SCHEMA_NAMES, first_error, load_schema, schemas_dir, validate
from tests.unit.factories import T0, two_clusters


def test_every_schema_file_is_known_and_loaded():
    files = sorted(p.name.removesuffix(".schema.json") for p in schemas_dir().glob("*.json"))
    assert files == sorted(SCHEMA_NAMES)


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_is_valid_2020_12(name):
    schema = load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_every_example_validates(name):
    examples = load_schema(name)["examples"]
    assert examples
    for example in examples:
        assert first_error(name, example) is None


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_rejects_an_unknown_field(name):
    bad = dict(load_schema(name)["examples"][0], surprise=1)
    problem = first_error(name, bad)
    assert problem is not None and "surprise" in problem
    with pytest.raises(ValueError, match=name):
        validate(name, bad)


def test_unknown_schema_name():
    with pytest.raises(KeyError):
        load_schema("no-such-schema")


def _rec_list(mode: str = "personal") -> RecList:
    return RecList(
        user_id="42",
        items=(
            RecItem("318", 0.91, "embedding", "Shawshank Redemption, The (1994)"),
            RecItem("50", 0.5, "genre", ""),
        ),
        mode=mode,
        model_version="linear-default-1",
        embedding_version="v1",
        event_time=T0,
    )


@pytest.mark.parametrize("mode", ["personal", "cold_start", "degraded"])
def test_rec_list_json_matches_redis_user_list(mode):
    value = _rec_list(mode).to_json(version=7, generated_at=T0 + 1)
    assert first_error("redis-user-list", value) is None
    assert value["degraded"] is (mode == "degraded")
    # JSON round trip keeps it valid (what Redis stores is the encoded text)
    assert first_error("redis-user-list", json.loads(json.dumps(value))) is None


def test_empty_cold_start_list_matches_redis_user_list():
    cat = ItemCatalog(4, IndexConfig())
    rec = Recommender(cat, load_model())
    value = rec.cold_start_list().to_json(version=0, generated_at=T0)
    assert value["items"] == []
    assert first_error("redis-user-list", value) is None


def test_batch_processor_records_match_their_schemas():
    cat, a_ids, _ = two_clusters(n_per=8)
    rec = Recommender(cat, load_model(), config=PipelineConfig(top_n=5))
    proc = BatchProcessor(rec, max_event_bytes=65536, source_topic="user-events")
    good = UserEvent("e1", "42", a_ids[0], "rating", T0, 4.5).encode()
    records = [
        RawRecord("user-events", 3, 10, b"42", good, T0),
        RawRecord("user-events", 3, 11, b"42", b"{not json", T0),
        RawRecord("user-events", 3, 12, None, good, None),
    ]
    out = proc.process(records, lambda _uid: None, now=T0 + 5)
    assert len(out.lists) == 1
    rec_list, write, result = out.lists[0]
    assert rec_list.mode == "personal" and result["items"]
    assert first_error("recommendation", result) is None
    assert first_error("recommendation", json.loads(json.dumps(result))) is None
    assert first_error("redis-user-list", write.value) is None
    assert result["source"] == {"topic": "user-events", "partition": 3, "offset": 10}
    assert [d.value["reason"] for d in out.dead_letters] == ["not_json", "bad_key"]
    for dl in out.dead_letters:
        assert first_error("dead-letter", dl.value) is None
        assert first_error("dead-letter", json.loads(dl.encode())) is None


@pytest.mark.parametrize(
    ("key", "value", "ts"),
    [(b"42", b"\xff\xfe", 1.0), (None, None, None), (b"k", b"x" * 5000, T0)],
)
def test_dead_letter_values_match_schema(key, value, ts):
    record = RawRecord("user-events", 0, 99, key, value, ts)
    dl = dead_letter(record, "schema", "d" * 5000, now=T0)
    assert first_error("dead-letter", dl.value) is None
    assert len(dl.value["detail"]) <= 2000


def test_encoded_item_updates_match_schema():
    vec = np.array([0.1, -0.25, 3.5, 1e-7], dtype=np.float32)
    full = ItemUpdate("318", "upsert", vec, "Title (1994)", ("Crime", "Drama"), 1994, False, 7.5e8)
    bare = ItemUpdate("9", "upsert", vec)
    gone = ItemUpdate("99", "delete")
    for update in (full, bare, gone):
        doc = json.loads(encode_item_update(update))
        assert first_error("item-update", doc) is None, doc


@pytest.mark.parametrize(
    "event",
    [
        UserEvent("e-1", "42", "318", "rating", T0, 4.5),
        UserEvent("e-2", "7", "1", "click", T0 + 0.25),
        UserEvent("e-3", "user é", "item/9", "purchase", 0.0),
    ],
)
def test_encoded_user_events_match_schema(event):
    doc = json.loads(event.encode())
    assert first_error("user-event", doc) is None


def test_dead_letter_payload_is_the_original_bytes():
    raw = b'{"event_id": "\xc3\xa9", broken'
    dl = dead_letter(RawRecord("user-events", 1, 5, b"7", raw), "not_json", "x", now=T0)
    assert base64.b64decode(dl.value["payload_b64"]) == raw
    assert base64.b64decode(dl.value["key_b64"]) == b"7"
    assert dl.key == b"7"
