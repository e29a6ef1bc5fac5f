"""Redis key layout (pure functions; the README's key table is checked against these)."""

from __future__ import annotations

# {...} is a Redis Cluster hash tag: all keys of one user land in one slot.


def user_list(prefix: str, user_id: str) -> str:
    """Hash: ver = list version, json = schemas/redis-user-list.schema.json."""
    return f"{prefix}rec:{{{user_id}}}"


def user_embedding(prefix: str, user_id: str) -> str:
    """Hash: ver, vec = little-endian float32 bytes, n = events applied, t = last event time."""
    return f"{prefix}emb:{{{user_id}}}"


def item(prefix: str, item_id: str) -> str:
    """Hash: ver, meta = JSON (title, genres, year, recommendable, release_ts), vec = float32."""
    return f"{prefix}item:{{{item_id}}}"


def cold_start_list(prefix: str) -> str:
    """String: the list for users without history (schemas/redis-user-list.schema.json)."""
    return f"{prefix}list:cold"


def items_index(prefix: str) -> str:
    """Set of item ids currently in the catalog."""
    return f"{prefix}items"
