"""Record decoding at the edge: the pure core's decoders with the JSON Schemas of schemas/
plugged in as their fallback check (the core reads no file; app.schemas does)."""

from __future__ import annotations

from app.core import events, social
from app.core.events import ItemUpdate, UserEvent
from app.core.social import Activity, Relation
from app.schemas import first_error


def decode_event(raw: bytes | None, *, max_bytes: int = 65536) -> UserEvent:
    """Bytes of one user-events value -> UserEvent, or InvalidRecord with a reason."""
    return events.decode_event(raw, check=first_error, max_bytes=max_bytes)


def decode_item_update(
    key: bytes | None, raw: bytes | None, *, dim: int, max_bytes: int = 1 << 20
) -> ItemUpdate:
    """Bytes of one item-updates record -> ItemUpdate (a null value is a delete of the key)."""
    return events.decode_item_update(key, raw, dim=dim, check=first_error, max_bytes=max_bytes)


def decode_relation(key: bytes | None, raw: bytes | None, *, max_bytes: int = 65536) -> Relation:
    """Bytes of one user-relations record -> Relation, or InvalidRecord with a reason."""
    return social.decode_relation(key, raw, check=first_error, max_bytes=max_bytes)


def decode_activity(key: bytes | None, raw: bytes | None, *, max_bytes: int = 65536) -> Activity:
    """Bytes of one friend-activity record -> Activity, or InvalidRecord with a reason."""
    return social.decode_activity(key, raw, check=first_error, max_bytes=max_bytes)
