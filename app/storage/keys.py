"""Redis key layout (pure functions; the key table of docs/records.md is checked against these)."""

from __future__ import annotations

# {...} is a Redis Cluster hash tag: all keys of one user land in one slot.


def user_list(prefix: str, user_id: str) -> str:
    """String: the user's binary record (app/storage/codec.py, schemas/redis-user-list.md):
    version, list (item codes and channels) and embedding (float16)."""
    return f"{prefix}rec:{{{user_id}}}"


def legacy_user_embedding(prefix: str, user_id: str) -> str:
    """The embedding hash of the layout before the binary record; the first record write
    of a user deletes it (same hash tag, so the Lua script may touch it)."""
    return f"{prefix}emb:{{{user_id}}}"


# The code registry: every key carries the hash tag {codes}, so they share one cluster slot
# and one Lua script can assign codes atomically.


def item_codes(prefix: str) -> str:
    """Hash: item id -> item code (a small integer used in user records)."""
    return f"{prefix}{{codes}}:item:code"


def item_ids(prefix: str) -> str:
    """Hash: item code -> item id."""
    return f"{prefix}{{codes}}:item:id"


def string_codes(prefix: str) -> str:
    """Hash: string (model version, embedding version, variant) -> code."""
    return f"{prefix}{{codes}}:str:code"


def strings(prefix: str) -> str:
    """Hash: string code -> string."""
    return f"{prefix}{{codes}}:str:id"


def codes_meta(prefix: str) -> str:
    """Hash: epoch (random token of this registry), item / str (last code assigned)."""
    return f"{prefix}{{codes}}:meta"


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


def rebuild_request(prefix: str) -> str:
    """String: token of the last `nearline rebuild-lists`; a worker that sees it change
    rebuilds its users' lists from their state."""
    return f"{prefix}rebuild:request"


def degrade_override(prefix: str) -> str:
    """String: operator override of the mode for every worker: auto, degraded or normal."""
    return f"{prefix}degrade:override"


def experiment_counts(prefix: str, experiment: str) -> str:
    """Hash: `<variant>:<metric>` -> count, summed over all workers (online A/B metric)."""
    return f"{prefix}exp:{experiment}"


# The item statistics every worker shares: one hash tag, {stats}, so one Lua script
# counts a batch's events atomically (app/storage/redis_store.py, COUNT_ITEMS).


def item_counts(prefix: str) -> str:
    """Hash: item id -> "score t rating_sum rating_n" (decayed popularity as of time t)."""
    return f"{prefix}{{stats}}:items"


def counted_offsets(prefix: str) -> str:
    """Hash: `<topic>|<partition>` -> the last source offset counted (skips a recount)."""
    return f"{prefix}{{stats}}:offsets"


def counts_changed(prefix: str) -> str:
    """Sorted set: item id, score = sequence number of the count that last changed it."""
    return f"{prefix}{{stats}}:changed"


def counts_sequence(prefix: str) -> str:
    """String: sequence number of the last count (readers follow changes past theirs)."""
    return f"{prefix}{{stats}}:seq"
