"""Compact JSON on the hot path: orjson (~25x faster than json.dumps for a list record),
falling back to the standard library for what orjson refuses, such as a lone surrogate
in a string, so any value json.dumps accepts is still written."""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(value: Any, *, kept: bool = True) -> bytes:
    """UTF-8 JSON without spaces (what json.dumps(separators=(",", ":")) means). `kept=False`
    for output that is sent and dropped (an HTTP answer): no copy at the exact size."""
    try:
        out = orjson.dumps(value)
        # orjson's bytes keep the whole output buffer (~16 KB measured for a 1 KB document);
        # a copy at the exact size is what a table that holds millions of them can afford
        return bytes(memoryview(out)) if kept else out
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(value, separators=(",", ":")).encode()


def loads(raw: bytes | str) -> Any:
    """Parse what `dumps` wrote (the standard library takes what orjson refuses)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)
