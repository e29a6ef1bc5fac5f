"""The per-user binary record on real Redis: ordered compare-and-set, TTL, the previous
layout's keys, the code registry shared by processes, unknown codes and corrupt values."""

from __future__ import annotations

import asyncio
import random
import uuid

import numpy as np
import pytest

from nearline_rec.core.pipeline import RecItem, RecList
from nearline_rec.serving import ListReader, get_recommendations
from nearline_rec.settings import load_settings
from nearline_rec.storage import codec, keys
from nearline_rec.storage.codes import read_users_sync
from nearline_rec.storage.redis_store import ListWrite, RedisStore
from tests.integration.conftest import REDIS_URL, redis_client

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix():
    p = f"t{uuid.uuid4().hex[:8]}:"
    yield p
    r = redis_client()
    found = list(r.scan_iter(match=f"{p}*", count=1000))
    if found:
        r.delete(*found)


def _store(prefix: str) -> RedisStore:
    return RedisStore(load_settings(redis={"url": REDIS_URL, "key_prefix": prefix}).redis)


def _write(user: str, version: int, items: list[str], *, mode: str = "personal") -> ListWrite:
    rl = RecList(
        user,
        tuple(RecItem(i, 1.0 - n / 100, "embedding", f"T{i}") for n, i in enumerate(items)),
        mode,
        "m-1",
        "v1",
        1.7e9 + version,
    )
    emb = np.full(8, version / 1000, dtype=np.float32)
    return ListWrite(user, version, rl.to_json(version=version, generated_at=1.7e9), emb, version)


def test_writes_land_only_above_the_stored_version_in_any_order(prefix):
    async def main() -> None:
        a, b = _store(prefix), _store(prefix)  # two processes, each with its own code book
        try:
            versions = list(range(1, 41))
            random.Random(3).shuffle(versions)
            best = 0
            for v in versions:  # reordered, and every write replayed by the other process
                landed = await a.write_lists([_write("u", v, [f"i{v}", f"i{v + 1}"])])
                again = await b.write_lists([_write("u", v, [f"i{v}", f"i{v + 1}"])])
                assert landed == [v > best] and again == [False]
                best = max(best, v)
            value = await b.read_list("u")
            assert value is not None and value["version"] == 40
            assert [i["item_id"] for i in value["items"]] == ["i40", "i41"]
            rec = await a.read_record("u")
            assert rec is not None and rec.n_events == 40 and rec.event_time == 1.7e9 + 40
            emb = await a.read_embedding("u")
            assert emb is not None and emb.dtype == np.float32 and np.allclose(emb, 0.04, rtol=1e-3)
            ttl = await a.client.ttl(keys.user_list(prefix, "u"))
            assert 0 < ttl <= a.cfg.list_ttl_seconds
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_item_codes_are_the_same_in_every_process_and_never_reused(prefix):
    async def main() -> None:
        stores = [_store(prefix) for _ in range(4)]
        try:
            ids = [f"item-{n}" for n in range(300)]
            # concurrent interning from four processes, each in its own order
            await asyncio.gather(
                *(
                    s.intern(random.Random(k).sample(ids, len(ids)), ["m-1"])
                    for k, s in enumerate(stores)
                )
            )
            books = [s.codes.item_code for s in stores]
            assert all(b == books[0] for b in books)
            assert sorted(books[0].values()) == list(range(1, 301))
            # the item mirror assigns codes too; a delete keeps the code
            vec = np.zeros(4, np.float32)
            await stores[0].write_items([("new", 1, {"title": "New"}, vec)], [("item-0", 2)])
            await stores[1].intern(["new", "item-0"])
            assert stores[1].codes.item_code["new"] == 301
            assert stores[1].codes.item_code["item-0"] == books[0]["item-0"]
        finally:
            for s in stores:
                await s.close()

    asyncio.run(main())


def test_unknown_codes_are_skipped_and_titles_come_from_the_mirror(prefix):
    async def main() -> None:
        s = _store(prefix)
        try:
            vec = np.zeros(4, np.float32)
            await s.write_items([("a", 1, {"title": "Alpha"}, vec)])
            await s.write_lists([_write("u", 3, ["a", "b", "c"])])
            r = s.client
            code_b = int(await r.hget(keys.item_codes(prefix), "b"))
            await r.hdel(keys.item_ids(prefix), code_b)  # the registry lost item b
            fresh = _store(prefix)
            value = await fresh.read_list("u", titles="mirror")
            assert [i["item_id"] for i in value["items"]] == ["a", "c"]
            assert value["items"][0]["title"] == "Alpha" and "title" not in value["items"][1]
            body = get_recommendations("u", k=5, url=REDIS_URL, prefix=prefix)
            assert body["tier"] == "redis"
            assert body["items"] == [
                {"item_id": "a", "channel": "embedding", "title": "Alpha"},
                {"item_id": "c", "channel": "embedding"},
            ]
            await fresh.close()
        finally:
            await s.close()

    asyncio.run(main())


def test_previous_layout_is_replaced_by_a_newer_write_only(prefix):
    r = redis_client()
    rec_key, emb_key = keys.user_list(prefix, "old"), keys.legacy_user_embedding(prefix, "old")
    r.hset(rec_key, mapping={"ver": 11, "json": '{"items": []}'})
    r.hset(emb_key, mapping={"ver": 11, "vec": b"\0" * 32, "n": 3, "t": 1.0})

    async def main() -> None:
        s = _store(prefix)
        try:
            assert await s.read_list("old") is None  # read as no list until rewritten
            assert await s.write_lists([_write("old", 9, ["x"])]) == [False]
            assert r.type(rec_key) == b"hash" and r.exists(emb_key)
            assert await s.write_lists([_write("old", 13, ["x"])]) == [True]
            assert r.type(rec_key) == b"string" and not r.exists(emb_key)
            assert (await s.read_list("old"))["version"] == 13
        finally:
            await s.close()

    asyncio.run(main())


def test_a_new_registry_epoch_makes_processes_learn_codes_again(prefix):
    async def main() -> None:
        s = _store(prefix)
        try:
            await s.write_lists([_write("u", 1, ["a", "b"])])
            old_epoch = s.codes.epoch
            # Redis loses its data: another registry assigns other codes
            r = s.client
            for k in (keys.item_codes, keys.item_ids, keys.string_codes, keys.strings):
                await r.delete(k(prefix))
            await r.delete(keys.codes_meta(prefix))
            other = _store(prefix)
            await other.intern(["zzz", "b", "a"])
            # this batch notices the new epoch (it was encoded with the old codes: the
            # documented window until the user's next write)
            await s.write_lists([_write("u", 2, ["a"])])
            assert s.codes.epoch != old_epoch and s.codes.item_code == {}
            await s.write_lists([_write("u", 3, ["a", "b"])])
            value = await other.read_list("u")
            assert [i["item_id"] for i in value["items"]] == ["a", "b"]
            assert s.codes.item_code == {"b": 2, "a": 3}
            await other.close()
        finally:
            await s.close()

    asyncio.run(main())


def test_a_corrupt_record_falls_back_to_shared_lists(prefix):
    r = redis_client()
    r.set(keys.user_list(prefix, "bad"), b"\x07" + b"\0" * 60)
    with pytest.raises(codec.CorruptRecord, match="format 7"):
        read_users_sync(r, prefix, ["bad"])

    async def main() -> None:
        s = _store(prefix)
        try:
            reader = ListReader(s, cache_ttl=0, default=lambda: None)
            result = await reader.read("bad")
            assert result.tier == "default" and reader.corrupt == 1
            # a newer write replaces the corrupt value (its version bytes read as 0)
            assert await s.write_lists([_write("bad", 5, ["x"])]) == [True]
            assert (await reader.read("bad")).tier == "redis"
        finally:
            await s.close()

    asyncio.run(main())
    assert get_recommendations("bad", url=REDIS_URL, prefix=prefix)["tier"] == "redis"
