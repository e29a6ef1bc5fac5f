"""Hot-path JSON: same documents as the standard library, and nothing it accepts refused."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from nearline_rec.core import fastjson

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(values)
def test_dumps_parses_back_to_what_json_dumps_writes(value):
    assert json.loads(fastjson.dumps(value)) == json.loads(json.dumps(value))
    assert fastjson.loads(fastjson.dumps(value)) == value


def test_a_lone_surrogate_falls_back_to_the_standard_library():
    value = {"title": "bad \ud800 half"}
    raw = fastjson.dumps(value)
    assert raw == json.dumps(value, separators=(",", ":")).encode()
    assert fastjson.loads(raw) == value


def test_compact_output_without_spaces():
    assert fastjson.dumps({"a": [1, 2.5, "x"]}) == b'{"a":[1,2.5,"x"]}'


def test_dumps_holds_no_more_memory_than_its_length():
    import tracemalloc

    doc = {"s": [f"item-{n}" for n in range(100)]}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [fastjson.dumps(doc) for _ in range(200)]
        per_value = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    assert per_value < len(kept[0]) + 200  # the value plus the bytes object and list slot
