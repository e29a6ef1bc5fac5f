"""The per-user Redis record: one compact little-endian binary string (pure functions).

Layout of format 1 (schemas/redis-user-list.md has the same table):

    offset size  field
    0      1     format (1)
    1      8     version, uint64 BIG-endian (every format keeps it here: the Lua
                 compare-and-set reads these 8 bytes without knowing the rest)
    9      8     generated_at, float64 (unix seconds)
    17     8     event_time, float64 (newest event reflected in the list and embedding)
    25     4     n_events, uint32 (events applied to the user's state)
    29     1     mode: 1 personal, 2 cold_start, 3 degraded
    30     2     model_version code (string registry, 0 = "")
    32     2     embedding_version code (string registry, 0 = "")
    34     2     variant code (string registry, 0 = no variant)
    36     2     d, embedding dimension (0 = no embedding)
    38     2     n, number of items
    40     2d    embedding, float16
    40+2d  4n    items, best first: uint32 = item code (low 28 bits) | channel code << 28

Every field but the version is little-endian. Scores are not stored (the recommendations
topic carries them); titles come from the catalog. Item codes and version strings are
small integers interned in a registry (nearline_rec.storage.codes).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import repeat
from typing import Any, NamedTuple

import numpy as np

from nearline_rec.core.channels import channel_codes
from nearline_rec.core.modes import ListMode
from nearline_rec.errors import BadInput

FORMAT = 1
_HEAD = struct.Struct(">BQ")  # format, version (big-endian so byte order is numeric order)
_REST = struct.Struct("<ddIBHHHHH")
HEADER_BYTES = _HEAD.size + _REST.size  # 40
VERSION_OFFSET = 1

MODES = tuple(ListMode)
"""mode code = index + 1 (0 is never written, so a zeroed header is caught as corrupt)."""
_CODES = channel_codes()
CHANNELS = tuple(sorted(_CODES, key=_CODES.__getitem__))
"""channel code = index (each channel's code is fixed in its module, app/core/channels/:
codes are stored, never reused). At most 16 (4 bits)."""
assert [_CODES[c] for c in CHANNELS] == list(range(len(CHANNELS))), "channel codes have a gap"
CHANNEL_CODE = {c: i for i, c in enumerate(CHANNELS)}
MAX_ITEM_CODE = (1 << 28) - 1
MAX_STRING_CODE = (1 << 16) - 1
MAX_VERSION = (1 << 53) - 1
"""Lua numbers are doubles: the compare-and-set is exact up to 2^53."""
FLOAT16_MAX = 65504.0


class CorruptRecord(BadInput):
    """A stored value that is not a user record this code can read."""


class RecordItem(NamedTuple):
    """One item of a stored list: its registry code and the recall channel that found it."""

    code: int
    channel: str


@dataclass(frozen=True, slots=True)
class UserRecord:
    version: int
    generated_at: float
    event_time: float
    n_events: int
    mode: ListMode
    model_code: int
    embedding_code: int
    variant_code: int
    embedding: np.ndarray | None
    """float32 (stored as float16)."""
    items: tuple[RecordItem, ...]
    """Best first."""


def version_bytes(version: int) -> bytes:
    return version.to_bytes(8, "big")


def encode(rec: UserRecord) -> bytes:
    if not 0 <= rec.version <= MAX_VERSION:
        raise ValueError(f"version {rec.version} outside 0..2^53-1")
    if rec.mode not in MODES:
        raise ValueError(f"unknown mode {rec.mode!r}; known: {', '.join(MODES)}")
    for name, code in (
        ("model_version", rec.model_code),
        ("embedding_version", rec.embedding_code),
        ("variant", rec.variant_code),
    ):
        if not 0 <= code <= MAX_STRING_CODE:
            raise ValueError(f"{name} code {code} outside 0..{MAX_STRING_CODE}")
    if rec.embedding is None:
        emb = b""
        dim = 0
    else:
        vec = np.asarray(rec.embedding, dtype=np.float32).ravel()
        dim = int(vec.size)
        if dim > 0xFFFF:
            raise ValueError(f"embedding dimension {dim} above 65535")
        emb = np.clip(vec, -FLOAT16_MAX, FLOAT16_MAX).astype("<f2").tobytes()
    n = len(rec.items)
    if n > 0xFFFF:
        raise ValueError(f"{n} items, at most 65535")
    words = np.empty(n, dtype="<u4")
    for i, (code, channel) in enumerate(rec.items):
        ch = CHANNEL_CODE.get(channel)
        if ch is None:
            raise ValueError(f"unknown channel {channel!r}; known: {', '.join(CHANNELS)}")
        if not 1 <= code <= MAX_ITEM_CODE:
            raise ValueError(f"item code {code} outside 1..{MAX_ITEM_CODE}")
        words[i] = code | (ch << 28)
    return b"".join(
        (
            _HEAD.pack(FORMAT, rec.version),
            _REST.pack(
                rec.generated_at,
                rec.event_time,
                min(max(int(rec.n_events), 0), 0xFFFFFFFF),
                MODES.index(rec.mode) + 1,
                rec.model_code,
                rec.embedding_code,
                rec.variant_code,
                dim,
                n,
            ),
            emb,
            words.tobytes(),
        )
    )


def stored_version(raw: bytes) -> int:
    """The version of any format (bytes 1..8, big-endian)."""
    if len(raw) < HEADER_BYTES:
        raise CorruptRecord(f"user record of {len(raw)} bytes, shorter than its header")
    return int.from_bytes(raw[1:9], "big")


def _header(raw: bytes) -> tuple[int, tuple[Any, ...]]:
    """(version, the rest of the header) of a record whose size matches its header."""
    if len(raw) < HEADER_BYTES:
        raise CorruptRecord(f"user record of {len(raw)} bytes, shorter than its header")
    fmt, version = _HEAD.unpack_from(raw, 0)
    if fmt != FORMAT:
        raise CorruptRecord(f"user record format {fmt}; this code reads format {FORMAT}")
    rest = _REST.unpack_from(raw, _HEAD.size)
    dim, n = rest[7], rest[8]
    want = HEADER_BYTES + 2 * dim + 4 * n
    if len(raw) != want:
        raise CorruptRecord(
            f"user record of {len(raw)} bytes; its header (d={dim}, {n} items) says {want}"
        )
    if not 1 <= rest[3] <= len(MODES):
        raise CorruptRecord(f"user record with mode code {rest[3]}")
    return version, rest


def decode(raw: bytes, *, embedding: bool = True) -> UserRecord:
    """The record of stored bytes; `embedding=False` leaves the vector out (None), for
    readers that only answer the list."""
    version, rest = _header(raw)
    generated, event_time, n_events, mode, model, emb_v, variant, dim, n = rest
    vector = None
    if dim and embedding:
        vector = np.frombuffer(raw, "<f2", dim, HEADER_BYTES).astype(np.float32)
    # a list is short (top_n, 20 by default): plain ints cost less here than numpy calls
    words = struct.unpack_from(f"<{n}I", raw, HEADER_BYTES + 2 * dim)
    codes = [w & MAX_ITEM_CODE for w in words]
    chans = [w >> 28 for w in words]
    if n and (max(chans) >= len(CHANNELS) or min(codes) == 0):
        raise CorruptRecord("user record with an unknown channel code or item code 0")
    names = map(CHANNELS.__getitem__, chans)
    return UserRecord(
        version=version,
        generated_at=generated,
        event_time=event_time,
        n_events=n_events,
        mode=MODES[mode - 1],
        model_code=model,
        embedding_code=emb_v,
        variant_code=variant,
        embedding=vector,
        # RecordItems made at C speed (tuple.__new__), not through the NamedTuple's __new__
        items=tuple(map(tuple.__new__, repeat(RecordItem), zip(codes, names, strict=True))),
    )


class RecordWords(NamedTuple):
    """What a reader that answers only the list needs of a record: `decode_words`."""

    version: int
    generated_at: float
    mode: ListMode
    model_code: int
    variant_code: int
    words: tuple[int, ...]
    """The stored items as they are stored, best first: item code | channel code << 28
    (`word_item`)."""


def decode_words(raw: bytes) -> RecordWords:
    """The list part of a record with its items left as stored words: the serving path,
    which keeps one response entry per word. A channel code this code does not know is
    refused here; item code 0 where a word is first named (`word_item`)."""
    version, rest = _header(raw)
    n = rest[8]
    words = struct.unpack_from(f"<{n}I", raw, HEADER_BYTES + 2 * rest[7])
    # the channel is the top 4 bits: the largest word has the largest channel code
    if n and max(words) >> 28 >= len(CHANNELS):
        raise CorruptRecord("user record with an unknown channel code")
    return RecordWords(version, rest[0], MODES[rest[3] - 1], rest[4], rest[6], words)


def word_item(word: int) -> RecordItem:
    """The item of a stored word (`RecordWords.words`)."""
    code = word & MAX_ITEM_CODE
    if code == 0:
        raise CorruptRecord("user record with item code 0")
    return RecordItem(code, CHANNELS[word >> 28])


def record_from_list(
    value: Mapping[str, Any],
    *,
    version: int,
    embedding: np.ndarray | None,
    n_events: int,
    event_time: float,
    item_code: Callable[[str], int],
    string_code: Callable[[str], int],
) -> UserRecord:
    """The record of a list value (redis-user-list schema, as RecList.to_json makes it)."""
    variant = value.get("variant")
    return UserRecord(
        version=version,
        generated_at=float(value.get("generated_at", 0.0)),
        event_time=float(event_time or value.get("event_time") or 0.0),
        n_events=n_events,
        mode=_list_mode(value.get("mode", ListMode.PERSONAL)),
        model_code=string_code(value.get("model_version", "")),
        embedding_code=string_code(value.get("embedding_version", "")),
        variant_code=string_code(variant) if variant else 0,
        embedding=embedding,
        items=tuple(
            RecordItem(item_code(i["item_id"]), i["channel"]) for i in value.get("items", ())
        ),
    )


def _list_mode(name: str) -> ListMode:
    """The mode of a list value; an unknown name passes through for `encode` to refuse."""
    return ListMode(name) if name in MODES else name  # type: ignore[return-value]


def list_from_record(
    rec: UserRecord,
    user_id: str,
    *,
    item_id: Callable[[int], str | None],
    string: Callable[[int], str | None],
    title: Callable[[str], str | None] | None = None,
) -> dict[str, Any]:
    """The decoded list (redis-user-list schema, without scores). Items whose code the
    registry does not know are skipped; `title` fills titles where it knows one."""
    items: list[dict[str, Any]] = []
    for code, channel in rec.items:
        iid = item_id(code)
        if iid is None:
            continue
        entry: dict[str, Any] = {"item_id": iid, "channel": channel}
        t = title(iid) if title is not None else None
        if t is not None:
            entry["title"] = t
        items.append(entry)
    out: dict[str, Any] = {
        "user_id": user_id,
        "items": items,
        "degraded": rec.mode == ListMode.DEGRADED,
        "mode": rec.mode,
        "model_version": (string(rec.model_code) or "") if rec.model_code else "",
        "embedding_version": (string(rec.embedding_code) or "") if rec.embedding_code else "",
        "generated_at": rec.generated_at,
        "version": rec.version,
        "event_time": rec.event_time,
    }
    if rec.variant_code:
        variant = string(rec.variant_code)
        if variant:
            out["variant"] = variant
    return out
