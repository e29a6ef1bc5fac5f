"""Read path: a user's list through tiers (cache -> Redis -> popular/cold-start -> default).

The tier choice is a pure function (`resolve`), shared by the worker's HTTP view
(`ListReader`, with an aiocache in-process cache) and by `get_recommendations`, the
small client function for services that read Redis directly.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nearline_rec.core.modes import ListMode
from nearline_rec.errors import BadInput
from nearline_rec.storage import keys
from nearline_rec.storage.codec import CorruptRecord
from nearline_rec.storage.store import WorkerStore

log = logging.getLogger(__name__)

TIERS = ("cache", "redis", "popular", "cold_start", "default")
MAX_K = 1000


class BadRequest(BadInput):
    """Invalid read input; the message is safe to return to the caller."""


def parse_k(raw: str | None, default: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        k = int(raw)
    except ValueError:
        raise BadRequest(f"k must be an integer, got {raw[:32]!r}") from None
    if not 1 <= k <= MAX_K:
        raise BadRequest(f"k must be between 1 and {MAX_K}, got {k}")
    return k


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_user_id(user_id: str) -> str:
    if not user_id or len(user_id) > 128 or _CONTROL.search(user_id):
        raise BadRequest("user_id must be 1 to 128 printable characters")
    return user_id


@dataclass(frozen=True)
class ReadResult:
    user_id: str
    tier: str
    value: dict[str, Any]
    """The stored list (redis-user-list schema) the response was made from."""

    def response(
        self,
        k: int,
        now: float,
        stale_after: float,
        titles: Callable[[str], str | None] | None = None,
        keep: Callable[[str], bool] | None = None,
    ) -> dict[str, Any]:
        """schemas/recommendation-response.schema.json. `titles` fills the title of items
        that have none (a user's list in Redis stores no titles; shared lists do). `keep`
        says whether an item may still be recommended: an item retired (deleted or made
        not recommendable) after the list was written is left out."""
        v = self.value
        shared = self.tier in ("popular", "cold_start", "default")
        generated = float(v.get("generated_at", 0.0))
        age = max(0.0, now - generated) if generated else None
        items = v.get("items", [])
        if keep is not None:
            items = [i for i in items if keep(i["item_id"])]
        items = items[:k]
        if titles is not None and any("title" not in i for i in items):
            items = [with_title(i, titles) for i in items]
        return {
            "user_id": self.user_id,
            "k": k,
            "items": items,
            "tier": self.tier,
            # a shared list answers a user without one: that is cold start, not overload
            "mode": ListMode.COLD_START if shared else v.get("mode", ListMode.COLD_START),
            "degraded": False if shared else bool(v.get("degraded", False)),
            # personal lists go stale with time; shared lists are refreshed on a timer
            "stale": self.tier == "default" or (age is not None and age > stale_after),
            "version": v.get("version", 0),
            "generated_at": generated,
            "age_seconds": None if age is None else round(age, 3),
            "model_version": v.get("model_version", ""),
            **({"variant": v["variant"]} if "variant" in v and not shared else {}),
        }


def with_title(item: dict[str, Any], titles: Callable[[str], str | None]) -> dict[str, Any]:
    if "title" in item:
        return item
    title = titles(item["item_id"])
    return item if title is None else {**item, "title": title}


def resolve(
    user_id: str,
    *,
    cached: dict[str, Any] | None = None,
    personal: dict[str, Any] | None = None,
    popular: dict[str, Any] | None = None,
    cold_start: dict[str, Any] | None = None,
    default: dict[str, Any] | None = None,
) -> ReadResult:
    """First tier that has a list wins; the default tier always answers (maybe empty)."""
    if cached is not None:
        return ReadResult(user_id, "cache", cached)
    if personal is not None:
        return ReadResult(user_id, "redis", personal)
    if popular is not None and popular.get("items"):
        return ReadResult(user_id, "popular", popular)
    if cold_start is not None and cold_start.get("items"):
        return ReadResult(user_id, "cold_start", cold_start)
    fallback = default or {"items": [], "mode": ListMode.COLD_START, "degraded": False}
    return ReadResult(user_id, "default", fallback)


def _loads(raw: bytes | str | None) -> dict[str, Any] | None:
    return None if raw is None else json.loads(raw)


class ListReader:
    """The worker's read path: aiocache memory cache in front of Redis."""

    def __init__(self, store: WorkerStore, *, cache_ttl: float, default: Any) -> None:
        from aiocache import SimpleMemoryCache

        self.store = store
        self.cache_ttl = cache_ttl
        self.cache = SimpleMemoryCache()
        self.default = default
        """Callable returning the built-in default list (the worker's in-memory popular list)."""
        self.reads: Counter[str] = Counter()
        self.redis_errors = 0
        self.corrupt = 0
        """User records that could not be decoded (served as if the user had none)."""

    async def _shared(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """Popularity and cold-start lists: shared by all users, so cached like a hot list."""
        hit = await self.cache.get("\0shared")
        if hit is not None:
            return hit
        value = await self.store.read_shared_lists()
        if self.cache_ttl > 0:
            await self.cache.set("\0shared", value, ttl=self.cache_ttl)
        return value

    async def read(self, user_id: str) -> ReadResult:
        """The user's list through the tiers. A list from Redis has no titles: the caller
        fills them at response time (`ReadResult.response(titles=...)`, the worker from its
        catalog)."""
        from nearline_rec.storage.redis_client import RETRYABLE

        cached = await self.cache.get(user_id)
        if cached is not None:
            result = resolve(user_id, cached=cached)
        else:
            try:
                # one round trip when the user has a list and this process knows its codes;
                # the shared lists only on a miss
                try:
                    personal = await self.store.read_list(user_id)
                except CorruptRecord as exc:
                    self.corrupt += 1
                    log.warning("user %r: unreadable record in Redis: %s", user_id, exc)
                    personal = None
                if personal is not None:
                    result = resolve(user_id, personal=personal)
                else:
                    popular, cold = await self._shared()
                    result = resolve(
                        user_id, popular=popular, cold_start=cold, default=self.default()
                    )
            except RETRYABLE:
                self.redis_errors += 1
                result = resolve(user_id, default=self.default())
            if result.tier == "redis" and self.cache_ttl > 0:
                await self.cache.set(user_id, result.value, ttl=self.cache_ttl)
        self.reads[result.tier] += 1
        return result


_BOOKS: dict[tuple[str, str], Any] = {}
"""Code books of get_recommendations, per (url, prefix): codes are stable, so a process
learns each once (checked against the registry's epoch on every call)."""


def get_recommendations(
    user_id: str,
    k: int = 10,
    *,
    url: str = "redis://127.0.0.1:6379/0",
    prefix: str = "nl:",
    client: Any = None,
    stale_after: float = 3600.0,
    default: dict[str, Any] | None = None,
    titles: bool = True,
    codes: Any = None,
) -> dict[str, Any]:
    """For services that read Redis directly: the same tiers as the worker (minus its cache).

    Two round trips: the user's list with the shared lists, then the item mirror
    (`<prefix>item:{id}` meta) of the list's items, for their titles (`titles=True`) and to
    leave out items retired since the list was written (deleted, or no longer
    recommendable); one more to learn item codes this process has not seen (HMGET on the
    code registry). `codes`: a CodeBook to use (by
    default one per url and prefix, kept for the life of the process; with `client`, a
    fresh one unless given).

    >>> get_recommendations("42", k=5)["items"]      # doctest: +SKIP
    """
    import redis

    from nearline_rec.storage import codec
    from nearline_rec.storage.codes import CodeBook, mirror_meta_sync, resolve_sync

    check_user_id(user_id)
    if not 1 <= k <= MAX_K:
        raise BadRequest(f"k must be between 1 and {MAX_K}, got {k}")
    if client is None:
        from nearline_rec.storage.redis_store import split_cluster_flag

        plain_url, cluster = split_cluster_flag(url)  # ?cluster=true: Redis Cluster
        if cluster:
            from redis.cluster import RedisCluster

            r = RedisCluster.from_url(plain_url)
        else:
            r = redis.Redis.from_url(plain_url)
        book = codes if codes is not None else _BOOKS.setdefault((url, prefix), CodeBook())
    else:
        r = client
        book = codes if codes is not None else CodeBook()
    try:
        pipe = r.pipeline(transaction=False)
        pipe.get(keys.user_list(prefix, user_id))
        pipe.get(keys.popular_list(prefix))
        pipe.get(keys.cold_start_list(prefix))
        pipe.hget(keys.codes_meta(prefix), "epoch")
        raw, popular, cold, epoch = pipe.execute(raise_on_error=False)
        for reply in (popular, cold, epoch):
            if isinstance(reply, Exception):
                raise reply
        personal = None
        # a key still in the previous layout (a hash) answers WRONGTYPE: no list yet
        if raw is not None and not isinstance(raw, redis.ResponseError):
            if isinstance(raw, Exception):
                raise raw
            try:
                rec = codec.decode(raw, embedding=False)
            except codec.CorruptRecord:
                rec = None
            if rec is not None:
                book.check_epoch(epoch)
                resolve_sync(r, prefix, book, [rec])
                personal = codec.list_from_record(
                    rec, user_id, item_id=book.item_id.get, string=book.string.get
                )
        result = resolve(
            user_id,
            personal=personal,
            popular=_loads(popular),
            cold_start=_loads(cold),
            default=default,
        )
        # the item mirror says which items are retired (a list written before an item was
        # deleted or made not recommendable still names it) and holds the titles; an item
        # it has not seen yet is kept. One round trip.
        meta = mirror_meta_sync(r, prefix, [i["item_id"] for i in result.value.get("items", ())])

        def keep(item_id: str) -> bool:
            return meta.get(item_id, {}).get("recommendable", True) is not False

        return result.response(
            k,
            time.time(),
            stale_after,
            titles=(lambda i: meta.get(i, {}).get("title")) if titles else None,
            keep=keep,
        )
    except (redis.ConnectionError, redis.TimeoutError):
        return resolve(user_id, default=default).response(k, time.time(), stale_after)
    finally:
        if client is None:
            r.close()
