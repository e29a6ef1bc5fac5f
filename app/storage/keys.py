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


def popular_list(prefix: str) -> str:
    """String: the precomputed popularity list served in degraded mode."""
    return f"{prefix}list:popular"


def genre_list(prefix: str, genre: str) -> str:
    """String: the most popular items of one genre (a cold-start list)."""
    return f"{prefix}list:genre:{genre}"


def dirty_users(prefix: str) -> str:
    """Sorted set: users served a degraded list, score = when; recomputed after recovery."""
    return f"{prefix}dirty"


def degrade_override(prefix: str) -> str:
    """String: operator override of the mode for every worker: auto, degraded or normal."""
    return f"{prefix}degrade:override"


def experiment_counts(prefix: str, experiment: str) -> str:
    """Hash: `<variant>:<metric>` -> count, summed over all workers (online A/B metric)."""
    return f"{prefix}exp:{experiment}"
