"""Record decoding at the edge: the pure core's decoders with the JSON Schemas of schemas/
plugged in as their fallback check (the core reads no file; nearline_rec.schemas does)."""

from __future__ import annotations

from nearline_rec.core import events, social
from nearline_rec.core.events import ItemUpdate, UserEvent
from nearline_rec.core.social import Activity, Relation
from nearline_rec.schemas import first_error


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
