"""`nearline serve`: the stateless read path, the application of each serve process.

No consumer, no table: a process reads users' lists from Redis through the tiers of
`nearline_rec.serving` (in-process cache -> Redis -> popular -> cold start -> default) and answers
the worker's JSON contract with the same token. `nearline_rec.serve_http` is the HTTP server
in front: any number of processes on one port, and any number of hosts behind a load balancer.

The cache stays correct by Redis's server-assisted invalidation: each process turns on
`CLIENT TRACKING ... BCAST` for the prefixes of user records, shared lists, the item
mirror and the code registry, redirected to a Pub/Sub connection, so Redis tells it about
every write, expiry or flush of those keys (by any worker, `rebuild-lists` or an operator)
and the entry is dropped. While that channel is not established, an entry is served for at
most NEARLINE_SERVE__CACHE_TTL_SECONDS. A request never waits past
NEARLINE_SERVE__READ_BUDGET_MS for Redis: then, or while Redis is down, it is answered from
the last shared lists this process saw (popular, cold start) or the empty default, and
counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from nearline_rec.core import fastjson
from nearline_rec.metrics import CONTENT_TYPE, serve_registry
from nearline_rec.security import token_ok
from nearline_rec.serve_lists import EntryBook, Meta
from nearline_rec.serving import BadRequest, ReadResult, check_user_id, parse_k, resolve
from nearline_rec.settings import Settings, load_settings
from nearline_rec.storage import codec, keys
from nearline_rec.storage.batch_get import GetBatcher
from nearline_rec.storage.codes import CodeBook

log = logging.getLogger("nearline.serve")

JSON = [("content-type", "application/json")]
INVALIDATE = "__redis__:invalidate"
GC_YOUNG = 50_000
"""Allocations between collections of the youngest generation (Python's default: 700)."""


class Reader:
    """One serve process's read path: cache, Redis, fallbacks, invalidation, health."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.prefix = settings.redis.key_prefix
        self.cache_ttl = settings.serve.cache_ttl_seconds
        self.tracked_ttl = settings.serve.tracked_cache_ttl_seconds
        self.max_entries = settings.serve.cache_max_users
        self.budget = settings.serve.read_budget_ms / 1000.0
        self.client: Any = None
        self.codes = CodeBook()
        self.cache: dict[str, list[Any]] = {}
        """user id -> [its stored list, monotonic time it was read, its prepared answer or
        None] (`EntryBook.prepared`)."""
        self.meta: dict[str, Meta] = {}
        """item id -> (title, recommendable) from the item mirror."""
        self.book = EntryBook(self.codes, self.meta)
        self.shared: tuple[dict[str, Any] | None, dict[str, Any] | None] | None = None
        self.shared_at = 0.0
        self.last_shared: tuple[dict[str, Any] | None, dict[str, Any] | None] = (None, None)
        """The last shared lists seen: the fallback while Redis is away (kept past expiry)."""
        self.inflight: dict[str, list[int]] = {}
        """user id -> [reads in flight, invalidated while in flight]: such a read is not cached."""
        self.tracking = False
        self.redis_ok = False
        self.redis_error: str | None = None
        self.reads: Counter[str] = Counter()
        self.fallbacks: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self.tasks: list[asyncio.Task[Any]] = []
        self._rec = keys.user_list(self.prefix, "")[:-1]  # "<prefix>rec:{"
        self._item = keys.item(self.prefix, "")[:-1]
        self._codes_meta = keys.codes_meta(self.prefix)
        self._shared_prefix = keys.popular_list(self.prefix).rsplit(":", 1)[0] + ":"

    # ---------------------------------------------------------------- life cycle

    async def start(self) -> None:
        from nearline_rec.storage.redis_store import make_client, split_cluster_flag

        self.client = make_client(self.s.redis, pool_size=self.s.serve.redis_connections)
        self.cluster = split_cluster_flag(self.s.redis.url)[1]
        self.batcher = GetBatcher(self.client, cluster=self.cluster, budget=self.budget)
        await self._ping()
        await self._keep_shared()
        self.tasks.append(asyncio.create_task(self._health_loop()))
        if self.cache_ttl > 0 and not self.cluster:
            self.tasks.append(asyncio.create_task(self._track_loop()))

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.client is not None:
            await self.client.aclose()

    async def _ping(self) -> None:
        from nearline_rec.storage.redis_client import RETRYABLE

        try:
            async with asyncio.timeout(max(self.budget * 4, 0.5)):
                await self.client.ping()
            self.redis_ok, self.redis_error = True, None
        except (*RETRYABLE, TimeoutError) as exc:
            self._down(exc)

    def _down(self, exc: BaseException) -> None:
        if self.redis_ok:
            log.warning("Redis unreachable, answering from fallback tiers: %r", exc)
        self.redis_ok = False
        self.redis_error = f"{type(exc).__name__}: {exc}"[:200]

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.s.serve.health_interval_seconds)
            await self._ping()
            await self._keep_shared()

    async def _keep_shared(self) -> None:
        """Keep the shared lists at hand, so a fallback answers with them even in a process
        whose reads all found users' lists (they are read only for users without one)."""
        from nearline_rec.storage.redis_client import RETRYABLE

        if not self.redis_ok:
            return
        try:
            async with asyncio.timeout(max(self.budget * 4, 0.5)):
                await self._shared()
        except (*RETRYABLE, TimeoutError) as exc:
            self._down(exc)

    # ------------------------------------------------------------ invalidation

    async def _track_loop(self) -> None:
        """Keep the invalidation channel up; the cache is flushed whenever it (re)starts."""
        import redis.asyncio as aioredis

        from nearline_rec.storage.redis_store import make_client

        while True:
            sub: Any = None
            tracker: Any = None
            try:
                # RESP2: Redis sends a redirected client's invalidations as Pub/Sub messages
                sub = make_client(self.s.redis, protocol=2)
                ps = sub.pubsub()
                await ps.connect()
                # the id of the connection that subscribes: Redis redirects invalidations to it
                await ps.connection.send_command("CLIENT", "ID")
                cid = int(await ps.connection.read_response())
                await ps.subscribe(INVALIDATE)
                tracker = make_client(self.s.redis, pool_size=1, protocol=2)
                prefixes = [self._rec, self._item, self._codes_meta, self._shared_prefix]
                args: list[Any] = ["CLIENT", "TRACKING", "ON", "REDIRECT", cid, "BCAST"]
                for p in prefixes:
                    args += ["PREFIX", p]
                await tracker.execute_command(*args)
                self.flush()
                self.tracking = True
                self.counters["tracking_starts"] += 1
                last_ping = time.monotonic()
                while True:
                    msg = await ps.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is not None and msg.get("type") == "message":
                        self.invalidate(msg["data"])
                    if time.monotonic() - last_ping > 1.0:
                        # tracking lives as long as the tracker's connection and its redirect
                        await self._check_tracking(tracker, cid)
                        last_ping = time.monotonic()
            except asyncio.CancelledError:
                raise
            except (aioredis.RedisError, OSError) as exc:
                if self.tracking:
                    log.warning("invalidation channel lost (%r): cache TTL bounds staleness", exc)
                self.tracking = False
                self.counters["tracking_losses"] += 1
            finally:
                self.tracking = False
                for c in (tracker, sub):
                    if c is not None:
                        with contextlib.suppress(Exception):
                            await c.aclose()
            await asyncio.sleep(self.s.serve.health_interval_seconds)

    @staticmethod
    async def _check_tracking(tracker: Any, cid: int) -> None:
        from redis.exceptions import ConnectionError as RedisConnectionError

        info = await tracker.execute_command("CLIENT", "TRACKINGINFO")
        fields = info if isinstance(info, dict) else dict(zip(info[::2], info[1::2], strict=False))
        flags = fields.get(b"flags") or []
        if b"on" not in flags or b"broken_redirect" in flags or fields.get(b"redirect") != cid:
            raise RedisConnectionError(f"tracking is off: {fields!r}")

    def invalidate(self, data: Any) -> None:
        """One invalidation message: a list of keys, or None when Redis was flushed."""
        self.counters["invalidations"] += 1
        if data is None:
            self.flush()
            return
        for raw in data:
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            if key.startswith(self._rec):
                user = key[len(self._rec) : -1]
                self.cache.pop(user, None)
                if (flight := self.inflight.get(user)) is not None:
                    flight[1] = 1
            elif key.startswith(self._item):
                item = key[len(self._item) : -1]
                self.meta.pop(item, None)
                self.book.forget_item(item)
            elif key == self._codes_meta:
                self.codes.forget()  # registry lost or rebuilt: codes may mean other items
                self.flush()
            else:
                self.shared = None

    def flush(self) -> None:
        self.cache.clear()
        self.meta.clear()
        self.book.clear()
        self.shared = None
        self.counters["flushes"] += 1

    # --------------------------------------------------------------- the read

    def _fresh(self, stored_at: float) -> bool:
        ttl = self.tracked_ttl if self.tracking else self.cache_ttl
        return time.monotonic() - stored_at < ttl

    async def read(self, user_id: str) -> tuple[str, codec.RecordWords] | ReadResult:
        """(tier, stored list) of a user with a personal list, else the fallback's result."""
        result = self.read_now(user_id)
        return await self.read_redis(user_id) if result is None else result

    def read_now(self, user_id: str) -> tuple[str, codec.RecordWords] | ReadResult | None:
        """`read`'s answer when it needs no trip to Redis (a fresh cache entry, or Redis
        down), else None: the server answers such a read without a task of its own."""
        hit = self.cache.get(user_id)
        if hit is not None:
            if self._fresh(hit[1]):
                self.reads["cache"] += 1
                return "cache", hit[0]
            del self.cache[user_id]
        if not self.redis_ok:
            return self._fallback(user_id, "redis_down")
        return None

    async def read_redis(self, user_id: str) -> tuple[str, codec.RecordWords] | ReadResult:
        """`read` past the cache: the user's record from Redis (or a fallback tier)."""
        out: asyncio.Future[Any] = self.batcher.loop.create_future()
        self.read_then(user_id, lambda answer: out.done() or out.set_result(answer))
        return await out

    def read_then(self, user_id: str, then: Callable[[Any], None]) -> None:
        """`read_redis` by callback: `then(answer)` once the record (or a fallback) is at
        hand, in the turn of the loop that brought the batch's MGET answer; a record whose
        items this process has named costs no task or future (the rare further trips, to
        name codes and read item meta or the shared lists, run as a task)."""
        flight = self.inflight.setdefault(user_id, [0, 0])
        flight[0] += 1
        # the batcher's timer bounds the wait for the record; the rare further trips
        # (codes, item meta, shared lists) are bounded by what is left of the budget
        deadline = self.batcher.loop.time() + self.budget

        def got(raw: bytes | None, exc: BaseException | None) -> None:
            if exc is not None:
                self._settle(user_id, flight, then, exc)
                return
            try:
                head = self._decode(user_id, raw)
                if head is not None and self._named(head):
                    self._settle(user_id, flight, then, head)
                    return
            except Exception as failure:
                self._settle(user_id, flight, then, failure)
                return
            task = self.batcher.loop.create_task(self._from_redis(user_id, head, deadline))
            task.add_done_callback(lambda t: self._settle(user_id, flight, then, t))

        self.batcher.get_then(keys.user_list(self.prefix, user_id), got)

    def _decode(self, user_id: str, raw: bytes | None) -> codec.RecordWords | None:
        """The record's head, or None: no list (or the previous layout: MGET answers nil
        for a hash) or an unreadable record (counted and logged); the shared lists answer."""
        if raw is None:
            return None
        try:
            return codec.decode_words(raw)
        except codec.CorruptRecord as exc:
            self._corrupt(user_id, exc)
            return None

    def _corrupt(self, user_id: str, exc: codec.CorruptRecord) -> None:
        self.counters["corrupt"] += 1
        log.warning("user %r: unreadable record in Redis: %s", user_id, exc)

    def _named(self, head: codec.RecordWords) -> bool:
        """Whether this process has named every word and string of the record."""
        strings = self.codes.string
        return (
            all(map(self.book.entries.__contains__, head.words))
            and head.model_code in strings
            and head.variant_code in strings
        )

    def _settle(
        self, user_id: str, flight: list[int], then: Callable[[Any], None], result: Any
    ) -> None:
        """`then` gets the read's answer: `result` is the record, the task that made the
        answer, or the exception that stopped it."""
        flight[0] -= 1
        if flight[0] == 0:
            self.inflight.pop(user_id, None)
        try:
            if isinstance(result, asyncio.Future):
                result = result.result()
            if isinstance(result, BaseException):
                raise result
        except TimeoutError:
            result = self._fallback(user_id, "budget")
        except asyncio.CancelledError:  # the process is stopping
            result = self._fallback(user_id, "error")
        except Exception as exc:
            from nearline_rec.storage.redis_client import RETRYABLE

            if isinstance(exc, RETRYABLE):
                self._down(exc)
                result = self._fallback(user_id, "redis_down")
            else:
                log.warning("user %r: read failed, answered from fallback: %r", user_id, exc)
                result = self._fallback(user_id, "error")
        else:
            if isinstance(result, ReadResult):
                self.reads[result.tier] += 1
            else:
                if self.cache_ttl > 0 and not flight[1]:
                    if len(self.cache) >= self.max_entries:
                        self.cache.pop(next(iter(self.cache)))  # the oldest entry
                    self.cache[user_id] = [result, time.monotonic(), None]
                self.reads["redis"] += 1
                result = ("redis", result)
        then(result)

    def _fallback(self, user_id: str, reason: str) -> ReadResult:
        self.fallbacks[reason] += 1
        popular, cold = self.shared or self.last_shared
        result = resolve(user_id, popular=popular, cold_start=cold)
        self.reads[result.tier] += 1
        return result

    async def _from_redis(
        self, user_id: str, head: codec.RecordWords | None, deadline: float
    ) -> codec.RecordWords | ReadResult:
        """A record this process has not fully named (its codes and strings are read
        first), or the shared lists' answer when there is no readable record."""
        if head is not None:
            try:
                async with asyncio.timeout_at(deadline):
                    await self._learn(head, self.book.unknown(head))
                return head
            except codec.CorruptRecord as exc:  # item code 0
                self._corrupt(user_id, exc)
        async with asyncio.timeout_at(deadline):
            popular, cold = await self._shared()
        return resolve(user_id, popular=popular, cold_start=cold)

    async def _learn(self, head: codec.RecordWords, words: list[int]) -> None:
        """Name the codes of `words` (and the list's strings) and read their items' titles
        and recommendable flags: one round trip each, none once they are known."""
        items, strs = self.book.unnamed_codes(words, head)
        if items or strs:
            pipe = self.client.pipeline(transaction=False)
            pipe.hget(self._codes_meta, "epoch")
            if items:
                pipe.hmget(keys.item_ids(self.prefix), items)
            if strs:
                pipe.hmget(keys.strings(self.prefix), strs)
            out = await pipe.execute()
            losses = self.codes.losses
            self.codes.learn_names(
                out[0], items, out[1] if items else [], strs, out[-1] if strs else []
            )
            if self.codes.losses != losses:  # another registry: codes mean other items
                self.book.clear()
                self.cache.clear()
        await self._learn_meta(self.book.missing_meta(words))
        self.book.learn(words)

    async def _learn_meta(self, item_ids: list[str]) -> None:
        """Titles and recommendable flags of items this process has not seen."""
        if not item_ids:
            return
        pipe = self.client.pipeline(transaction=False)
        for i in item_ids:
            pipe.hget(keys.item(self.prefix, i), "meta")
        for i, raw in zip(item_ids, await pipe.execute(), strict=True):
            meta = fastjson.loads(raw) if raw else {}
            title = meta.get("title")
            self.meta[i] = (
                title if isinstance(title, str) else None,
                meta.get("recommendable", True) is not False,
            )

    async def _shared(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        if self.shared is not None and self._fresh(self.shared_at):
            return self.shared
        pipe = self.client.pipeline(transaction=False)
        pipe.get(keys.popular_list(self.prefix))
        pipe.get(keys.cold_start_list(self.prefix))
        popular, cold = await pipe.execute()
        value = (
            None if popular is None else fastjson.loads(popular),
            None if cold is None else fastjson.loads(cold),
        )
        self.shared, self.shared_at = value, time.monotonic()
        if value != (None, None):
            self.last_shared = value
        return value

    def title(self, item_id: str) -> str | None:
        m = self.meta.get(item_id)
        return None if m is None else m[0]

    def keep(self, item_id: str) -> bool:
        """An item the mirror says is retired (deleted, not recommendable) is left out; one
        it has not seen is kept."""
        m = self.meta.get(item_id)
        return m is None or m[1]

    # ---------------------------------------------------------------- status

    def health(self) -> dict[str, Any]:
        degraded = not self.redis_ok
        return {
            "live": True,
            # a serve process always answers: from the fallback tiers while Redis is away
            "ready": True,
            "degraded": degraded,
            "serving_from": "fallback" if degraded else "redis",
            "checks": {"redis": self.redis_ok, "invalidation": self.tracking},
            "redis_error": self.redis_error,
            "pid": os.getpid(),
            "reads": dict(self.reads),
            "fallbacks": dict(self.fallbacks),
            "cache_entries": len(self.cache),
            # reads that went to Redis, and the MGETs that carried them
            "redis_batches": self.batcher.batches if self.client is not None else 0,
            "redis_batched_keys": self.batcher.keys if self.client is not None else 0,
        }

    def snapshot(self) -> dict[str, Any]:
        return {
            "reads": dict(self.reads),
            "fallbacks": dict(self.fallbacks),
            "counters": dict(self.counters)
            | {"redis_batches": self.batcher.batches, "redis_batched_keys": self.batcher.keys},
            "cache_entries": len(self.cache),
            "tracking": self.tracking,
            "redis_ok": self.redis_ok,
        }


Response = tuple[int, list[tuple[str, str]], bytes]
"""(status, headers, body) of one answer."""


class ServeApp:
    """One serve process's application: the reader and the answer to a GET, whatever the
    HTTP server in front (`nearline_rec.serve_http` runs it)."""

    def __init__(self) -> None:
        self.reader: Reader | None = None
        self.settings: Settings | None = None
        self.registry: Any = None

    def settings_and_reader(self) -> None:
        self.settings = load_settings()
        self.reader = Reader(self.settings)
        self.registry = serve_registry(self.reader.snapshot)

    async def start(self) -> None:
        self.settings_and_reader()
        assert self.reader is not None
        await self.reader.start()
        # what the process holds from here on (modules, settings) is not garbage: out of the
        # collector's way, whose full passes would otherwise walk it under load
        gc.collect()
        gc.freeze()
        # and the young generation collected less often: a read makes a few short-lived
        # objects, and a collection every 700 of them cost ~5-10% of a Redis read's CPU
        gc.set_threshold(GC_YOUNG)
        log.info("serve process %d ready (redis ok: %s)", os.getpid(), self.reader.redis_ok)

    async def stop(self) -> None:
        if self.reader is not None:
            await self.reader.stop()

    async def handle(self, path: str, query_string: str, authorization: str) -> Response:
        """One GET: (status, headers, body)."""
        answer = self.answer(path, query_string, authorization)
        return answer if isinstance(answer, tuple) else await answer

    def answer(
        self, path: str, query_string: str, authorization: str
    ) -> Response | asyncio.Future[Response]:
        """One GET's response, or its future when it needs Redis: a cached read (or any
        answer without Redis) is answered at once."""
        assert self.settings is not None and self.reader is not None
        serve = self.settings.serve
        allowed = serve.token is None or token_ok(serve.token, authorization)
        if path.startswith("/recommendations/"):
            if not allowed:
                return _error(401, "missing or wrong bearer token")
            user = path[len("/recommendations/") :]
            if user.endswith("/"):
                user = user[:-1]
            try:
                user_id = check_user_id(user)  # the server gives the path decoded
                if "/" in user_id:
                    raise BadRequest("user_id must not contain '/'")
                k = parse_k(_k_arg(query_string), serve.default_k)
            except BadRequest as exc:
                return _error(400, str(exc))
            result = self.reader.read_now(user_id)
            if result is None:
                return self._from_redis(user_id, k)
            return self._list(user_id, k, result)
        if path in ("/health", "/health/"):
            return 200, JSON, fastjson.dumps(self.reader.health())
        if path in ("/metrics", "/metrics/"):
            if not allowed:
                return _error(401, "missing or wrong bearer token")
            from prometheus_client import generate_latest

            return 200, [("content-type", CONTENT_TYPE)], generate_latest(self.registry)
        return _error(404, f"no such endpoint: {path[:100]}")

    def _from_redis(self, user_id: str, k: int) -> asyncio.Future[Response]:
        """The answer once the reader has the record (a callback, no task)."""
        assert self.reader is not None
        out: asyncio.Future[Response] = self.reader.batcher.loop.create_future()

        def then(result: tuple[str, codec.RecordWords] | ReadResult) -> None:
            if out.done():
                return
            try:
                out.set_result(self._list(user_id, k, result))
            except Exception as exc:
                out.set_exception(exc)

        self.reader.read_then(user_id, then)
        return out

    def _list(
        self, user_id: str, k: int, result: tuple[str, codec.RecordWords] | ReadResult
    ) -> Response:
        assert self.settings is not None and self.reader is not None
        reader, stale_after = self.reader, self.settings.serve.stale_after_seconds
        if isinstance(result, ReadResult):
            body = result.response(
                k, time.time(), stale_after, titles=reader.title, keep=reader.keep
            )
            return 200, JSON, fastjson.dumps(body, kept=False)
        tier, head = result
        book = reader.book
        if tier == "cache" and (entry := reader.cache.get(user_id)) is not None:
            ready = entry[2]
            if ready is None or ready[0] != k or ready[1] != book.generation:
                ready = entry[2] = book.prepared(user_id, tier, head, k)
            return 200, JSON, book.finish(ready, head, time.time(), stale_after)
        return 200, JSON, book.answer(user_id, tier, head, k, time.time(), stale_after)


def _k_arg(query_string: str) -> str | None:
    """The last `k` of a query string (what parse_qs gives), without parsing the usual
    `k=N` in full."""
    if not query_string:
        return None
    if query_string.startswith("k=") and query_string[2:].isdigit():
        return query_string[2:]
    return parse_qs(query_string).get("k", [None])[-1]


def _error(status: int, message: str) -> Response:
    return status, JSON, fastjson.dumps({"error": message, "status": status})
