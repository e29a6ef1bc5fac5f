"""The worker's store on Redis (a `WorkerStore`): versioned, idempotent, pipelined writes
with bounded retries. The client and its errors are in redis_client.py, the Lua scripts in
scripts.py; their names are re-exported here for the callers that import them from here."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from redis.exceptions import ResponseError
from tenacity import (
    AsyncRetrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from nearline_rec.core.popularity import CountedEvent, ItemCount
from nearline_rec.settings import RedisSettings
from nearline_rec.storage import codec, keys
from nearline_rec.storage.codes import INTERN, CodeBook, intern_args, titles_from_meta
from nearline_rec.storage.redis_client import (
    REFUSALS,
    RETRYABLE,
    UNAVAILABLE,
    RedisRefused,
    check_access,
    make_client,
    refusal,
    split_cluster_flag,
)
from nearline_rec.storage.scripts import (
    CAS_HSET,
    CAS_RECORD,
    COUNT_ITEMS,
    DELETED_META,
    count_args,
    parse_count,
)
from nearline_rec.storage.store import (
    ItemUpsert,
    ListWrite,
    TitleSource,
    decode_vector,
    encode_vector,
)

__all__ = [
    "REFUSALS",
    "RETRYABLE",
    "UNAVAILABLE",
    "ListWrite",
    "RedisRefused",
    "RedisStore",
    "check_access",
    "decode_vector",
    "make_client",
    "refusal",
    "split_cluster_flag",
]

log = logging.getLogger(__name__)


class RedisStore:
    """The worker's store on Redis (nearline_rec.storage.store.WorkerStore)."""

    def __init__(self, cfg: RedisSettings) -> None:
        self.cfg = cfg
        self.prefix = cfg.key_prefix
        self.client = make_client(cfg)
        self.cluster = split_cluster_flag(cfg.url)[1]
        self._scripts = {
            src: self.client.register_script(src)
            for src in (CAS_HSET, CAS_RECORD, INTERN, COUNT_ITEMS)
        }
        self.codes = CodeBook()
        self._losses_seen = 0
        """This process's copy of the code registry (item ids, version strings)."""
        self.errors = 0
        self.retries = 0

    async def _script(self, src: str, *, keys: list[str], args: list[Any], client: Any) -> Any:
        """Queue a script call on a pipeline. A cluster pipeline sends the script itself
        (EVAL): its nodes' script caches are not loaded for it, and a restarted node would
        have forgotten them."""
        if self.cluster:
            return client.eval(src, len(keys), *keys, *args)
        return await self._scripts[src](keys=keys, args=args, client=client)

    async def _cas(self, *, keys: list[str], args: list[Any], client: Any) -> Any:
        """Queue the versioned hash write (item mirror) on a pipeline."""
        return await self._script(CAS_HSET, keys=keys, args=args, client=client)

    async def _queue_intern(self, pipe: Any, items: Sequence[str], strings: Sequence[str]) -> None:
        for kind, names in (("item", items), ("str", strings)):
            if names:
                ks, args = intern_args(self.prefix, kind, names, self.codes.candidate)
                await self._script(INTERN, keys=ks, args=args, client=pipe)

    async def intern(self, items: Sequence[str] = (), strings: Sequence[str] = ()) -> None:
        """Make sure the code book knows these item ids and strings (one round trip when
        some are new to this process, none otherwise)."""
        for _ in range(3):
            new_items = self.codes.missing_items(items)
            new_strings = self.codes.missing_strings(strings)
            if not new_items and not new_strings:
                return

            async def build(pipe: Any) -> None:
                await self._queue_intern(pipe, new_items, new_strings)  # noqa: B023

            self.codes.learn_interned(await self._run(build), new_items, new_strings)
        raise RuntimeError("the code registry changed its epoch three times in a row")

    async def resolve(self, records: Sequence[codec.UserRecord]) -> None:
        """Learn the names of codes in `records` this process does not know (HMGET, one
        round trip, none when it knows them all). Codes the registry lacks stay unknown."""
        items, strs = self.codes.unknown_codes(records)
        if not items and not strs:
            return

        async def build(pipe: Any) -> None:
            pipe.hget(keys.codes_meta(self.prefix), "epoch")
            if items:
                pipe.hmget(keys.item_ids(self.prefix), items)
            if strs:
                pipe.hmget(keys.strings(self.prefix), strs)

        out = await self._run(build)
        self.codes.learn_names(
            out[0], items, out[1] if items else [], strs, out[-1] if strs else []
        )

    async def close(self) -> None:
        await self.client.aclose()

    def _retrying(self) -> AsyncRetrying:
        def count(_state: Any) -> None:
            self.retries += 1

        return AsyncRetrying(
            stop=stop_after_attempt(self.cfg.retry_attempts),
            wait=wait_exponential_jitter(multiplier=0.05, max=self.cfg.retry_max_delay),
            retry=retry_if_exception_type(RETRYABLE),
            before_sleep=lambda s: (count(s), before_sleep_log(log, logging.WARNING)(s)),
            reraise=True,
        )

    async def _run(self, build: Any) -> list[Any]:
        """Run a pipeline built by `build(pipe)` with bounded retries; every write is idempotent."""
        try:
            async for attempt in self._retrying():
                with attempt:
                    # the context resets the pipeline on failure, returning its connection
                    async with self.client.pipeline(transaction=False) as pipe:
                        await build(pipe)
                        return list(await pipe.execute())
        except RETRYABLE:
            self.errors += 1
            raise
        except ResponseError as exc:
            code = refusal(exc)
            if code is None:
                raise
            self.errors += 1
            raise RedisRefused(code, " ".join(str(exc).split())[:200]) from exc
        raise AssertionError("unreachable")

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except RETRYABLE:
            return False

    # -- user records ---------------------------------------------------------------------
    async def write_lists(
        self,
        writes: Sequence[ListWrite],
        *,
        dirty: Sequence[str] = (),
        clean: Sequence[str] = (),
        now: float = 0.0,
        rewrite: bool = False,
        counted: Sequence[CountedEvent] = (),
        count_topic: str = "",
        half_life: float = 0.0,
    ) -> list[bool]:
        """Write users' records (list + embedding, app/storage/codec.py) in one pipeline;
        True where the write was newer. Ids and strings this process has no code for are
        interned first (one more round trip, only then).

        `dirty` users are added to the recompute set (keeping their first mark: oldest
        first), `clean` ones removed from it, in the same round trip. `rewrite`: a rebuild,
        which also replaces records of the same version (written with codes Redis lost).

        `counted` events of `count_topic` are added to the shared item statistics in the
        same round trip (each source offset once, whatever the retries)."""
        if not writes and not dirty and not clean and not counted:
            return []
        ttl = self.cfg.list_ttl_seconds
        await self.intern(
            [i["item_id"] for w in writes for i in w.value.get("items", ())],
            [
                s
                for w in writes
                for s in (
                    w.value.get("model_version", ""),
                    w.value.get("embedding_version", ""),
                    w.value.get("variant") or "",
                )
            ],
        )
        book = self.codes
        blobs = [
            codec.encode(
                codec.record_from_list(
                    w.value,
                    version=w.version,
                    embedding=w.embedding,
                    n_events=w.n_events,
                    event_time=w.event_time,
                    item_code=book.item_code.__getitem__,
                    string_code=book.string_code.__getitem__,
                )
            )
            for w in writes
        ]

        async def build(pipe: Any) -> None:
            if counted:
                await self._script(
                    COUNT_ITEMS,
                    keys=self._count_keys(),
                    args=count_args(counted, count_topic, half_life),
                    client=pipe,
                )
            if dirty:
                pipe.zadd(keys.dirty_users(self.prefix), dict.fromkeys(dirty, now), nx=True)
            if clean:
                pipe.zrem(keys.dirty_users(self.prefix), *clean)
            for w, blob in zip(writes, blobs, strict=True):
                await self._script(
                    CAS_RECORD,
                    keys=[
                        keys.user_list(self.prefix, w.user_id),
                        keys.legacy_user_embedding(self.prefix, w.user_id),
                    ],
                    args=[w.version, ttl, blob, "1" if rewrite else "0"],
                    client=pipe,
                )
            if writes:
                pipe.hget(keys.codes_meta(self.prefix), "epoch")

        results = await self._run(build)
        if writes:
            # Redis lost the registry (its data): forget the codes, learn them again next time
            book.check_epoch(results[-1])
        i = int(bool(counted)) + int(bool(dirty)) + int(bool(clean))
        return [bool(x) for x in results[i : i + len(writes)]]

    async def read_record(self, user_id: str) -> codec.UserRecord | None:
        """The user's record, decoded (codes not resolved); None when there is none, or
        while the key still holds the previous layout (a hash) until its next write."""
        try:
            raw = await self.client.get(keys.user_list(self.prefix, user_id))
        except ResponseError as exc:
            if str(exc).startswith("WRONGTYPE"):
                return None
            raise
        return None if raw is None else codec.decode(raw)

    async def read_list(self, user_id: str, *, titles: TitleSource = None) -> dict[str, Any] | None:
        """The user's list (redis-user-list schema, without scores); items whose code the
        registry does not know are skipped. `titles`: None (no titles), a function item
        id -> title, or "mirror" (from the item mirror in Redis, one more round trip)."""
        rec = await self.read_record(user_id)
        if rec is None:
            return None
        await self.resolve([rec])
        book = self.codes
        value = codec.list_from_record(
            rec,
            user_id,
            item_id=book.item_id.get,
            string=book.string.get,
            title=None if titles == "mirror" else titles,
        )
        if titles == "mirror":
            found = await self.mirror_titles([i["item_id"] for i in value["items"]])
            for item in value["items"]:
                if item["item_id"] in found:
                    item["title"] = found[item["item_id"]]
        return value

    async def mirror_titles(self, item_ids: Sequence[str]) -> dict[str, str]:
        if not item_ids:
            return {}

        async def build(pipe: Any) -> None:
            for i in item_ids:
                pipe.hget(keys.item(self.prefix, i), "meta")

        return titles_from_meta(item_ids, await self._run(build))

    async def read_embedding(self, user_id: str) -> np.ndarray | None:
        """The user's embedding as float32 (stored as float16)."""
        rec = await self.read_record(user_id)
        return None if rec is None else rec.embedding

    async def write_cold_start(self, value: dict[str, Any]) -> None:
        body = json.dumps(value, separators=(",", ":"))

        async def build(pipe: Any) -> None:
            pipe.set(keys.cold_start_list(self.prefix), body)

        await self._run(build)

    async def read_cold_start(self) -> dict[str, Any] | None:
        raw = await self.client.get(keys.cold_start_list(self.prefix))
        return None if raw is None else json.loads(raw)

    async def read_shared_lists(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(popular list, cold-start list) in one round trip."""
        p = self.prefix
        pipe = self.client.pipeline(transaction=False)
        pipe.get(keys.popular_list(p))
        pipe.get(keys.cold_start_list(p))
        popular, cold = await pipe.execute()
        return (None if popular is None else json.loads(popular)), (
            None if cold is None else json.loads(cold)
        )

    async def write_shared_lists(self, lists: dict[str, dict[str, Any]]) -> None:
        """Ready-to-serve lists shared by all users (popular, cold start, per genre)."""

        async def build(pipe: Any) -> None:
            for key, value in lists.items():
                pipe.set(key, json.dumps(value, separators=(",", ":")))

        await self._run(build)

    def _count_keys(self) -> list[str]:
        p = self.prefix
        return [
            keys.item_counts(p),
            keys.counted_offsets(p),
            keys.counts_changed(p),
            keys.counts_sequence(p),
        ]

    async def read_counts(self, after: int) -> tuple[int, dict[str, ItemCount]]:
        """(sequence now, every item whose count changed after sequence `after`). A sequence
        below `after` means Redis lost the statistics: the caller starts again from 0."""
        p = self.prefix
        pipe = self.client.pipeline(transaction=False)
        pipe.get(keys.counts_sequence(p))
        pipe.zrangebyscore(keys.counts_changed(p), f"({after}", "+inf")
        raw_seq, members = await pipe.execute()
        seq = int(raw_seq or 0)
        if seq < after or not members:
            return seq, {}
        values = await self.client.hmget(keys.item_counts(p), members)
        return seq, {m.decode(): parse_count(v) for m, v in zip(members, values, strict=True) if v}

    async def read_json(self, key: str) -> dict[str, Any] | None:
        raw = await self.client.get(key)
        return None if raw is None else json.loads(raw)

    async def dirty_users(self, limit: int = 100_000) -> list[str]:
        """Users waiting for a recompute, oldest first."""
        members = await self.client.zrange(keys.dirty_users(self.prefix), 0, limit - 1)
        return [m.decode() for m in members]

    async def add_experiment_counts(self, experiment: str, delta: dict[str, int]) -> None:
        if not delta:
            return

        async def build(pipe: Any) -> None:
            key = keys.experiment_counts(self.prefix, experiment)
            for field, n in delta.items():
                pipe.hincrby(key, field, n)

        await self._run(build)

    async def read_experiment_counts(self, experiment: str) -> dict[str, int]:
        raw = await self.client.hgetall(keys.experiment_counts(self.prefix, experiment))
        return {k.decode(): int(v) for k, v in raw.items()}

    async def read_override(self) -> str | None:
        raw = await self.client.get(keys.degrade_override(self.prefix))
        return None if raw is None else raw.decode()

    async def write_override(self, mode: str) -> None:
        await self.client.set(keys.degrade_override(self.prefix), mode)

    async def read_control(self) -> tuple[str | None, str | None, str | None]:
        """(mode override, registry epoch, rebuild request) in one round trip: what the
        lag monitor checks every second."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(keys.degrade_override(self.prefix))
        pipe.hget(keys.codes_meta(self.prefix), "epoch")
        pipe.get(keys.rebuild_request(self.prefix))
        out = await pipe.execute()
        return tuple(None if v is None else v.decode() for v in out)  # type: ignore[return-value]

    async def request_rebuild(self, token: str) -> None:
        await self.client.set(keys.rebuild_request(self.prefix), token)

    def forget_codes(self) -> None:
        self.codes.forget()

    def registry_lost(self, epoch: str | None) -> bool:
        """Whether the code registry this process learned from was found gone or replaced
        (Redis lost its data) since the last call, here with `epoch` or by a write or read
        on the way; its codes are then forgotten, to be interned again."""
        if self.codes.epoch is not None and epoch != self.codes.epoch:
            self.codes.check_epoch(epoch)
        if self.codes.losses == self._losses_seen:
            return False
        self._losses_seen = self.codes.losses
        return True

    # -- items ----------------------------------------------------------------------------
    async def write_items(
        self,
        upserts: Sequence[ItemUpsert],
        deletes: Sequence[tuple[str, int]] = (),
    ) -> None:
        """Mirror item upserts/deletes; version = item-updates offset, so replays are no-ops."""

        new = self.codes.missing_items([u[0] for u in upserts])

        async def build(pipe: Any) -> None:
            # codes are assigned with the mirror write (same round trip) and never removed
            await self._queue_intern(pipe, new, ())
            for item_id, ver, meta, vec in upserts:
                await self._cas(
                    keys=[keys.item(self.prefix, item_id)],
                    args=[
                        ver,
                        0,
                        "meta",
                        json.dumps(meta),
                        "vec",
                        b"" if vec is None else encode_vector(vec),
                    ],
                    client=pipe,
                )
                pipe.sadd(keys.items_index(self.prefix), item_id)
            for item_id, ver in deletes:
                # a tombstone, not a DEL: readers tell a deleted item (retired: left out of
                # every read) from one the mirror has not seen yet (kept)
                await self._cas(
                    keys=[keys.item(self.prefix, item_id)],
                    args=[ver, 0, "meta", DELETED_META, "vec", b""],
                    client=pipe,
                )
                pipe.srem(keys.items_index(self.prefix), item_id)

        if upserts or deletes:
            out = await self._run(build)
            if new:
                self.codes.learn_interned(out[:1], new, ())
