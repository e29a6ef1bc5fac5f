"""Raw bytes in: decode and validate user events and item updates, or say why not."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from nearline_rec.errors import BadInput

EVENT_TYPES = (
    "click",
    "view",
    "rating",
    "like",
    "dislike",
    "add_to_cart",
    "purchase",
    "share",
    "skip",
)


SchemaCheck = Callable[[str, Any], str | None]
"""(schema name, parsed JSON) -> the first violation of schemas/<name>.schema.json as one line,
or None when valid. The edge supplies it (nearline_rec.records plugs in
nearline_rec.schemas.first_error), so
the core reads no schema file itself."""


class InvalidRecord(BadInput):
    """A record that cannot be used; reason is a dead-letter reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class UserEvent:
    event_id: str
    user_id: str
    item_id: str
    type: str
    timestamp: float
    rating: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "event_id": self.event_id,
            "user_id": self.user_id,
            "item_id": self.item_id,
            "type": self.type,
            "timestamp": self.timestamp,
        }
        if self.rating is not None:
            out["rating"] = self.rating
        return out

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class ItemUpdate:
    item_id: str
    op: str  # "upsert" | "delete"
    embedding: np.ndarray | None = None
    title: str = ""
    genres: tuple[str, ...] = ()
    year: int | None = None
    recommendable: bool = True
    release_ts: float | None = None


def _reject_constant(name: str) -> float:
    # json accepts NaN/Infinity by default; they are not JSON and would poison embeddings.
    raise ValueError(f"non-finite number {name} is not allowed")


def _parse_json(raw: bytes, max_bytes: int) -> Any:
    if len(raw) > max_bytes:
        raise InvalidRecord("too_large", f"{len(raw)} bytes exceeds the limit of {max_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRecord("not_utf8", f"invalid UTF-8 at byte {exc.start}") from None
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
        if _SURROGATE_ESCAPE.search(raw) is not None:
            # "\ud800" is valid JSON but decodes to a lone surrogate: not text, so it
            # could never be encoded again (Redis key, Kafka key); a pair is fine.
            json.dumps(doc, ensure_ascii=False).encode("utf-8")
        return doc
    except RecursionError:
        raise InvalidRecord("not_json", "JSON nested too deeply") from None
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end].encode("unicode_escape").decode()
        raise InvalidRecord("not_utf8", f"string with a lone surrogate {bad}") from None
    except ValueError as exc:
        raise InvalidRecord("not_json", str(exc)[:300]) from None


# A \u escape of a UTF-16 surrogate: the only way valid UTF-8 JSON yields a lone surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _schema_problem(check: SchemaCheck, name: str, doc: Any) -> str | None:
    try:
        return check(name, doc)
    except RecursionError:
        # json parsed it, but the validator (or its message) recursed deeper than that
        raise InvalidRecord("schema", "value nested too deeply") from None


def _id(value: Any) -> str:
    return value if isinstance(value, str) else str(int(value))


# -- fast validation of user events --------------------------------------------------------------
# schemas/user-event.schema.json stays the contract; jsonschema took ~350 us an event, most of
# a worker's per-event budget. `_event_is_valid` is a hand-written predicate for the same schema
# (tests/unit/test_events.py checks that both agree on a corpus of valid and invalid events).
# Only a rejection goes on to jsonschema, which names the first violation as before, so dead
# letters read exactly as they did.

# The schema's pattern, applied with re.search as jsonschema does (so "$" also matches before
# a final newline, exactly like the validator).
_NO_CONTROL = re.compile("^[^\u0000-\u001f\u007f]+$")
_EVENT_FIELDS = frozenset(
    ("event_id", "user_id", "item_id", "type", "rating", "timestamp", "context")
)
_EVENT_TYPE_SET = frozenset(EVENT_TYPES)
_MAX_SAFE_INT = 9007199254740991


def _is_text_id(value: Any) -> bool:
    return type(value) is str and 1 <= len(value) <= 128 and _NO_CONTROL.search(value) is not None


def _is_number(value: Any) -> bool:
    # bool is an int subclass but not a JSON number; JSON parsing yields only int and float.
    return type(value) is float or type(value) is int


def _is_id(value: Any) -> bool:
    if type(value) is str:
        return _is_text_id(value)
    # JSON Schema's "integer" includes floats with a zero fraction (7.0), as jsonschema does.
    if type(value) is int or (type(value) is float and value.is_integer()):
        return 0 <= value <= _MAX_SAFE_INT
    return False


def _event_is_valid(doc: dict[str, Any]) -> bool:
    """True iff `doc` satisfies schemas/user-event.schema.json."""
    if not _EVENT_FIELDS.issuperset(doc):
        return False
    try:
        event_type = doc["type"]
        timestamp = doc["timestamp"]
        if not (_is_text_id(doc["event_id"]) and _is_id(doc["user_id"]) and _is_id(doc["item_id"])):
            return False
    except KeyError:
        return False
    if type(event_type) is not str or event_type not in _EVENT_TYPE_SET:
        return False
    if not _is_number(timestamp) or not 0 <= timestamp <= 4102444800:
        return False
    rating = doc.get("rating", _MISSING)
    if rating is _MISSING:
        if event_type == "rating":
            return False
    elif not _is_number(rating) or not 0.5 <= rating <= 5:
        return False
    context = doc.get("context", _MISSING)
    return context is _MISSING or (type(context) is dict and len(context) <= 32)


_MISSING = object()


def decode_event(raw: bytes | None, *, check: SchemaCheck, max_bytes: int = 65536) -> UserEvent:
    """Bytes of one user-events value -> UserEvent, or InvalidRecord with a reason."""
    if raw is None:
        raise InvalidRecord("not_json", "empty value (tombstone) on user-events")
    doc = _parse_json(raw, max_bytes)
    if not isinstance(doc, dict):
        raise InvalidRecord("not_object", f"expected a JSON object, got {type(doc).__name__}")
    if not _event_is_valid(doc):
        problem = _schema_problem(check, "user-event", doc)
        if problem is not None:
            raise InvalidRecord("schema", problem)
    rating = doc.get("rating")
    return UserEvent(
        event_id=doc["event_id"],
        user_id=_id(doc["user_id"]),
        item_id=_id(doc["item_id"]),
        type=doc["type"],
        timestamp=float(doc["timestamp"]),
        rating=None if rating is None else float(rating),
    )


def decode_item_update(
    key: bytes | None,
    raw: bytes | None,
    *,
    dim: int,
    check: SchemaCheck,
    max_bytes: int = 1 << 20,
) -> ItemUpdate:
    """Bytes of one item-updates record -> ItemUpdate (a null value is a delete of the key)."""
    if raw is None:
        if not key:
            raise InvalidRecord("bad_key", "tombstone without a key")
        try:
            return ItemUpdate(item_id=key.decode("utf-8"), op="delete")
        except UnicodeDecodeError:
            raise InvalidRecord("bad_key", "key is not UTF-8") from None
    doc = _parse_json(raw, max_bytes)
    if not isinstance(doc, dict):
        raise InvalidRecord("not_object", f"expected a JSON object, got {type(doc).__name__}")
    problem = _schema_problem(check, "item-update", doc)
    if problem is not None:
        raise InvalidRecord("schema", problem)
    item_id = _id(doc["item_id"])
    if doc["op"] == "delete":
        return ItemUpdate(item_id=item_id, op="delete")
    emb = doc.get("embedding")
    vec32 = None if emb is None else _embedding(emb, dim)
    return ItemUpdate(
        item_id=item_id,
        op="upsert",
        embedding=vec32,
        title=doc.get("title", ""),
        genres=tuple(doc.get("genres", ())),
        year=doc.get("year"),
        recommendable=doc.get("recommendable", True),
        release_ts=doc.get("release_ts"),
    )


def _embedding(emb: list[Any], dim: int) -> np.ndarray:
    if len(emb) != dim:
        raise InvalidRecord("bad_embedding", f"embedding has {len(emb)} values, expected {dim}")
    vec = np.asarray(emb, dtype=np.float64)
    if not np.all(np.isfinite(vec)):
        raise InvalidRecord("bad_embedding", "embedding has NaN or infinite values")
    with np.errstate(over="ignore"):  # overflow is detected just below
        vec32 = vec.astype(np.float32)
    if not np.all(np.isfinite(vec32)) or not math.isfinite(float(np.linalg.norm(vec))):
        raise InvalidRecord("bad_embedding", "embedding overflows float32")
    if float(np.linalg.norm(vec32)) == 0.0:
        raise InvalidRecord("bad_embedding", "embedding is all zeros")
    return vec32


def encode_item_update(update: ItemUpdate) -> bytes:
    if update.op == "delete":
        return json.dumps({"item_id": update.item_id, "op": "delete"}).encode()
    doc: dict[str, Any] = {"item_id": update.item_id, "op": "upsert"}
    if update.embedding is not None:  # an item without a vector is still a catalogue item
        doc["embedding"] = [round(float(x), 6) for x in update.embedding]
    doc |= {
        "title": update.title,
        "genres": list(update.genres),
        "year": update.year,
        "recommendable": update.recommendable,
    }
    if update.release_ts is not None:
        doc["release_ts"] = update.release_ts
    return json.dumps(doc, separators=(",", ":")).encode()
