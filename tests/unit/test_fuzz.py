"""Property-based fuzz of the decoders: any bytes give a value or InvalidRecord, never a crash.

decode_event and decode_item_update see every byte a producer sends. Whatever arrives,
the result must be a usable value (an event or item update that the rest of the worker can
store, key and encode again) or InvalidRecord with a dead-letter reason; any other
exception would stop the agent. Each input is counted once its checks passed (or as
failing when they did not), and those counts are reported (RELIABILITY fuzz: ...), see
tests/reliability_report.py.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nearline_rec.core.events import (
    EVENT_TYPES,
    InvalidRecord,
    ItemUpdate,
    UserEvent,
)
from nearline_rec.records import decode_event, decode_item_update
from nearline_rec.schemas import load_schema
from tests.reliability_report import report

REASONS = set(load_schema("dead-letter")["properties"]["reason"]["enum"])
DIM = 8
EXAMPLES = 1000
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

passed: Counter[str] = Counter()  # inputs whose checks all passed, by strategy
failed: Counter[str] = Counter()  # inputs that failed a check (hypothesis shrinks them)
other_exceptions: Counter[str] = Counter()  # of those: raised, not InvalidRecord or a check
outcomes: Counter[str] = Counter()  # what the decoders made of the passing inputs


@pytest.fixture(scope="module", autouse=True)
def fuzz_report():
    yield
    if passed or failed:
        report(
            "fuzz",
            inputs_tried=sum(passed.values()) + sum(failed.values()),
            inputs_passed=sum(passed.values()),
            inputs_failed=sum(failed.values()),
            other_exceptions=sum(other_exceptions.values()),
            by_strategy=dict(sorted(passed.items())),
            failed_by_strategy=dict(sorted(failed.items())),
            outcomes=dict(sorted(outcomes.items())),
        )


def _counted(strategy: str, prop, *args):
    """Run a property on one input; count the input as passed only once it returned."""
    try:
        value, outcome = prop(*args)
    except Exception as exc:
        failed[strategy] += 1
        if not isinstance(exc, AssertionError):
            other_exceptions[strategy] += 1
        raise
    passed[strategy] += 1
    outcomes[outcome] += 1
    return value


def _event_property(raw: bytes | None) -> tuple[UserEvent | None, str]:
    """UserEvent (fit to store, key and re-encode) or InvalidRecord."""
    try:
        ev = decode_event(raw)
    except InvalidRecord as exc:
        assert exc.reason in REASONS, exc.reason
        assert isinstance(exc.detail, str)
        json.dumps({"detail": exc.detail[:2000]})  # the dead letter can carry it
        return None, f"event:{exc.reason}"
    assert isinstance(ev, UserEvent)
    for text in (ev.event_id, ev.user_id, ev.item_id):
        assert isinstance(text, str) and 1 <= len(text) <= 128
        text.encode("utf-8")  # Redis keys, Kafka keys: must be real text
    assert ev.type in EVENT_TYPES
    assert math.isfinite(ev.timestamp) and 0 <= ev.timestamp <= 4102444800
    assert ev.rating is None or (math.isfinite(ev.rating) and 0.5 <= ev.rating <= 5)
    assert decode_event(ev.encode()) == ev
    return ev, "event:ok"


def _item_property(key: bytes | None, raw: bytes | None) -> tuple[ItemUpdate | None, str]:
    try:
        up = decode_item_update(key, raw, dim=DIM)
    except InvalidRecord as exc:
        assert exc.reason in REASONS, exc.reason
        return None, f"item:{exc.reason}"
    assert isinstance(up, ItemUpdate) and up.op in ("upsert", "delete")
    up.item_id.encode("utf-8")
    if up.op == "upsert":
        if up.embedding is not None:  # an upsert without one is a catalogue-only item
            assert up.embedding.shape == (DIM,) and up.embedding.dtype == np.float32
            assert np.all(np.isfinite(up.embedding)) and float(np.linalg.norm(up.embedding)) > 0
        for g in up.genres:
            g.encode("utf-8")
        up.title.encode("utf-8")
    return up, f"item:{up.op}"


def check_event(raw: bytes | None, strategy: str) -> UserEvent | None:
    return _counted(strategy, _event_property, raw)


def check_item(key: bytes | None, raw: bytes | None, strategy: str) -> ItemUpdate | None:
    return _counted(strategy, _item_property, key, raw)


# -- strategies ------------------------------------------------------------------------------

# Text with every kind of code point, lone surrogates included (JSON escapes them).
any_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=40)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | any_text
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(any_text, inner, max_size=5),
    max_leaves=25,
)
BASE = {"event_id": "e-1", "user_id": "42", "item_id": "318", "type": "click", "timestamp": 1.7e9}
FIELDS = [*BASE, "rating", "context", "extra"]


def to_bytes(doc: object, ascii_only: bool) -> bytes:
    """JSON text (NaN/Infinity allowed, as a careless producer writes them); surrogates
    pass through as escapes (ascii) or as CESU-8 style bytes (not UTF-8)."""
    text = json.dumps(doc, ensure_ascii=ascii_only)
    return text.encode("utf-8", errors="surrogatepass")


@st.composite
def near_valid_events(draw: st.DrawFn) -> dict:
    doc: dict = dict(BASE)
    if draw(st.booleans()):
        doc["type"] = draw(st.sampled_from([*EVENT_TYPES, "Click", "", "rating"]))
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from(FIELDS))
        action = draw(st.sampled_from(["replace", "delete", "edge"]))
        if action == "delete":
            doc.pop(field, None)
        elif action == "edge":
            doc[field] = draw(
                st.sampled_from(
                    [
                        0,
                        -1,
                        0.5,
                        5,
                        5.0000001,
                        4102444800,
                        4102444800.5,
                        9007199254740991,
                        9007199254740992,
                        1e308,
                        -0.0,
                        7.0,
                        "",
                        "x" * 128,
                        "x" * 129,
                        "\u2028",
                        "u\n",
                        "\ud800",
                        "\udfff",
                        "\U0001f600",
                        "\u0000",
                        "\u007f",
                        "\ufeff",
                        "\u0301",
                        {},
                        [],
                        True,
                        None,
                        {str(i): i for i in range(33)},
                    ]
                )
            )
        else:
            doc[field] = draw(json_values)
    return doc


@st.composite
def mutated_bytes(draw: st.DrawFn) -> bytes:
    raw = bytearray(json.dumps({**BASE, "type": "rating", "rating": 4.5}).encode())
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(raw)))
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "insert" or pos >= len(raw):
            raw[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif op == "flip":
            raw[pos] = draw(st.integers(0, 255))
        else:
            del raw[pos]
    return bytes(raw)


# -- user events -----------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes(raw):
    check_event(raw, "random_bytes")


@FUZZ
@given(mutated_bytes())
def test_mutated_valid_event(raw):
    check_event(raw, "mutated_bytes")


@FUZZ
@given(json_values, st.booleans())
def test_any_json_document(doc, ascii_only):
    check_event(to_bytes(doc, ascii_only), "json_documents")


@FUZZ
@given(near_valid_events(), st.booleans())
def test_nearly_valid_events(doc, ascii_only):
    check_event(to_bytes(doc, ascii_only), "near_valid_events")


def _at_stack_depth(frames: int, fn):
    return fn() if frames == 0 else _at_stack_depth(frames - 1, fn)


def test_deep_nesting_at_every_stack_depth():
    """JSON just shallow enough to parse but too deep for the validator's error message
    used to escape as RecursionError (it depends on how deep the caller's stack is)."""
    limit = sys.getrecursionlimit()
    for pad in range(0, 400, 25):
        for depth in range(limit - pad - 60, limit - pad + 10, 3):
            for field in ("user_id", "context", "timestamp"):
                nested = "[" * depth + "]" * depth
                if field == "context":
                    nested = '{"a":' + nested + "}"
                raw = (json.dumps(BASE)[:-1] + f', "{field}": {nested}}}').encode()
                _at_stack_depth(pad, functools.partial(check_event, raw, "deep_nesting"))


# -- item updates ----------------------------------------------------------------------------

ITEM = {"item_id": "i-1", "op": "upsert", "embedding": [0.5] * DIM, "title": "T (1999)"}


@st.composite
def near_valid_items(draw: st.DrawFn) -> dict:
    doc: dict = dict(ITEM)
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from([*ITEM, "genres", "year", "recommendable", "release_ts"]))
        if draw(st.booleans()):
            doc.pop(field, None)
        elif field == "embedding" and draw(st.booleans()):
            doc[field] = draw(
                st.lists(
                    st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**40), 10**40),
                    min_size=0,
                    max_size=DIM + 2,
                )
            )
        else:
            doc[field] = draw(json_values)
    return doc


@FUZZ
@given(st.one_of(st.none(), st.binary(max_size=20)), st.one_of(st.none(), st.binary(max_size=300)))
def test_item_any_bytes(key, raw):
    check_item(key, raw, "item_random_bytes")


@FUZZ
@given(near_valid_items(), st.booleans())
def test_item_nearly_valid(doc, ascii_only):
    check_item(b"k", to_bytes(doc, ascii_only), "item_near_valid")


def test_known_hostile_cases():
    """The cases the fuzz found or that matter most, pinned."""
    lone = json.dumps({**BASE, "user_id": "u\ud800"}).encode()
    assert check_event(lone, "pinned") is None
    pair = json.dumps({**BASE, "user_id": "u\U0001f600"}).encode()  # escaped pair: fine
    assert check_event(pair, "pinned").user_id == "u\U0001f600"
    escaped_backslash = json.dumps({**BASE, "user_id": "\\ud800"}).encode()  # literal text
    assert check_event(escaped_backslash, "pinned").user_id == "\\ud800"
    item = json.dumps({"item_id": "\udc00", "op": "delete"}).encode()
    assert check_item(b"k", item, "pinned") is None
    genre = json.dumps({**ITEM, "genres": ["\ud83d"]}).encode()
    assert check_item(b"k", genre, "pinned") is None
    with pytest.raises(InvalidRecord) as info:
        decode_event(lone)
    assert info.value.reason == "not_utf8" and "\\ud800" in info.value.detail
