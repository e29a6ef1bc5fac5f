"""Memory benchmark: bytes per item in the index, per user in Redis and in the worker.

- Index: LSHIndex and ExactIndex built on `lsh_tune.clustered_vectors` at the requested
  sizes; `memory_bytes()` (the arrays it holds) and the process RSS growth, against the raw
  float32 vectors. The catalogue (metadata, its own vector copy, both indexes) is measured at
  `catalog_items` and extrapolated linearly (everything in it is per item).
- Redis: `users` users written through the real RedisStore (the same Lua compare-and-set,
  binary records and TTL as the worker) with the default top_n items and with 50, then
  MEMORY USAGE of a sample of keys, split into its components (key and Redis objects,
  header, float16 embedding, 28-bit item codes, 4-bit channels, SDS header and allocator
  rounding), and the growth of INFO used_memory per user; 1M users is that x 1M (Redis
  memory is linear in keys of one shape). Baseline in the same run: the previous layout
  (list JSON hash + float32 embedding hash). Also: the code registry's bytes per item.
- Worker: per-user state (the table's bytes, the user directory's vector and likes) for
  `users` users with `events_per_user` events each, RSS growth per user.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from nearline_rec.tools.bench import median, write_result
from nearline_rec.tools.bench.lsh_measure import rss_bytes

Log = Callable[[str], None]


def index_memory(n: int, dim: int, log: Log) -> dict[str, Any]:
    from nearline_rec.core.lsh import ExactIndex, LSHIndex, default_params
    from nearline_rec.core.lsh_tune import clustered_vectors

    x = clustered_vectors(n, dim, seed=1)
    keys = np.arange(n, dtype=np.int64)
    raw = x.nbytes
    out: dict[str, Any] = {"n": n, "dim": dim, "raw_vector_bytes": raw}
    for name, make in (
        ("lsh", lambda: LSHIndex(default_params(n, dim))),
        ("exact", lambda: ExactIndex(dim)),
    ):
        gc.collect()
        before = rss_bytes()
        index = make()
        index.upsert_many(keys, x)
        gc.collect()
        grown = rss_bytes() - before
        acc = index.memory_bytes()
        out[name] = {
            "memory_bytes": acc,
            "bytes_per_item": round(acc / n, 1),
            "vs_raw": round(acc / raw, 3),
            "beyond_vectors_vs_raw": round((acc - raw) / raw, 3),
            "rss_growth_bytes": grown,
            "params": getattr(getattr(index, "params", None), "structure", None),
        }
        del index
    log(
        f"  index N={n:,} d={dim}: LSH {out['lsh']['bytes_per_item']} B/item "
        f"(x{out['lsh']['vs_raw']} raw, beyond vectors x{out['lsh']['beyond_vectors_vs_raw']})"
    )
    return out


def catalog_memory(n: int, dim: int, log: Log) -> dict[str, Any]:
    from nearline_rec.core.catalog import ItemCatalog
    from nearline_rec.tools.bench.workload import catalogue, item_updates

    cat = catalogue(n, dim)
    ups = item_updates(cat)
    gc.collect()
    before = rss_bytes()
    catalog = ItemCatalog(dim)
    for start in range(0, n, 5000):
        catalog.upsert_many(ups[start : start + 5000])
    catalog.reindex()
    del ups
    gc.collect()
    grown = rss_bytes() - before
    per_item = grown / n
    out = {
        "n": n,
        "dim": dim,
        "rss_growth_bytes": grown,
        "bytes_per_item": round(per_item, 1),
        "extrapolated_1m_bytes": int(per_item * 1_000_000),
        "method": "RSS growth while loading n items (updates freed), linear in items",
    }
    log(f"  catalogue N={n:,} d={dim}: {out['bytes_per_item']} B/item (RSS)")
    return out


def _jemalloc_size(n: int) -> int:
    """jemalloc's size class for an n-byte allocation (x86-64, 16-byte quantum)."""
    if n <= 8:
        return 8
    if n <= 128:
        return (n + 15) // 16 * 16
    group = 1 << (n - 1).bit_length() - 3  # four classes between powers of two
    return (n + group - 1) // group * group


def _sds_alloc(payload: int) -> int:
    """Bytes Redis allocates for a raw string value: SDS header, payload, NUL."""
    header = 3 if payload < 256 else 5 if payload < 65536 else 9
    return _jemalloc_size(header + payload + 1)


def _user_ids(n: int) -> list[str]:
    # 7 characters like a MovieLens-size id space; the key is "<prefix>rec:{0000001}"
    return [f"{u:07d}" for u in range(n)]


def _lists(rng: Any, users: list[str], n_items: int, dim: int, top_n: int) -> list[Any]:
    from nearline_rec.core.pipeline import RecItem, RecList
    from nearline_rec.processing import list_version
    from nearline_rec.storage.redis_store import ListWrite

    writes = []
    for u, uid in enumerate(users):
        items = tuple(
            RecItem(f"i{int(i)}", round(float(sc), 6), ch, f"Item {int(i)} (2001)")
            for i, sc, ch in zip(
                rng.choice(100_000, n_items, replace=False),
                np.sort(rng.random(n_items))[::-1] * 3,
                rng.choice(["embedding", "item2item", "genre", "trending"], n_items),
                strict=True,
            )
        )
        rl = RecList(uid, items, "personal", "linear-default-2", "v1", 1.7e9 + u, "control")
        version = list_version(1000 + u, "personal")
        emb = rng.standard_normal(dim).astype(np.float32)
        value = rl.to_json(version=version, generated_at=1.7e9 + u)
        writes.append(ListWrite(uid, version, value, emb, 12, 1.7e9 + u))
    return writes


async def _clear(client: Any, prefix: str) -> None:
    cursor = 0
    while True:
        cursor, found = await client.scan(cursor, match=f"{prefix}*", count=5000)
        if found:
            await client.delete(*found)
        if cursor == 0:
            break


async def _used(client: Any) -> int:
    return int((await client.info("memory"))["used_memory"])


async def _redis_layout(
    client: Any, users: int, dim: int, n_items: int, top_n: int, log: Log
) -> dict[str, Any]:
    """`users` users written through the real RedisStore (the same Lua compare-and-set,
    records and TTL as the worker); MEMORY USAGE of a sample, split into components."""
    from nearline_rec.settings import load_settings
    from nearline_rec.storage import codec
    from nearline_rec.storage import keys as K
    from nearline_rec.storage.redis_store import RedisStore

    prefix = "bn:"  # as long as the default "nl:": the key's share is measured as deployed
    await _clear(client, prefix)
    s = load_settings(redis={"key_prefix": prefix})
    store = RedisStore(s.redis)
    rng = np.random.default_rng(dim * 1000 + n_items)
    ids = _user_ids(users)
    try:
        # item codes first (as the worker's item mirror assigns them), measured apart
        used_r = await _used(client)
        for start in range(0, 100_000, 10_000):
            await store.intern([f"i{i}" for i in range(start, start + 10_000)])
        await store.intern([], ["linear-default-2", "v1", "control"])
        used0 = await _used(client)
        registry_per_item = round((used0 - used_r) / 100_000, 1)
        for start in range(0, users, 1000):
            writes = _lists(rng, ids[start : start + 1000], n_items, dim, top_n)
            await store.write_lists(writes, now=time.time())
        used1 = await _used(client)
        sample = ids[:: max(1, users // 1000)]
        usage = [
            int(await client.memory_usage(K.user_list(prefix, u), samples=0) or 0) for u in sample
        ]
        raw = await client.get(K.user_list(prefix, ids[0]))
        rec = codec.decode(raw)
        assert len(rec.items) == n_items and rec.embedding is not None
        total = median([float(x) for x in usage])
        payload = len(raw)
        value_alloc = _sds_alloc(payload)
        key = K.user_list(prefix, ids[0])
        out: dict[str, Any] = {
            "layout": "binary record (format 1)",
            "users_written": users,
            "dim": dim,
            "list_items": n_items,
            "key_chars": len(key),
            "memory_usage_per_user": total,
            "components": {
                "key_and_redis_overhead": total - value_alloc,
                "header": codec.HEADER_BYTES,
                "embedding_float16": 2 * dim,
                "item_codes_28bit": round(3.5 * n_items, 1),
                "channels_4bit": round(0.5 * n_items, 1),
                "sds_header_and_allocator_rounding": value_alloc - payload,
            },
            "record_bytes": payload,
            "used_memory_growth_per_user": round((used1 - used0) / users, 1),
            "extrapolated_1m_users_bytes": int(total * 1_000_000),
            "code_registry_bytes_per_item": registry_per_item,
        }
        out["components_sum"] = round(sum(out["components"].values()), 1)
        log(
            f"  redis d={dim} {n_items} items: {total:.0f} B/user by MEMORY USAGE "
            f"(record {payload} B; {out['used_memory_growth_per_user']} by used_memory)"
        )
        return out
    finally:
        await _clear(client, prefix)
        await store.close()


async def _redis_legacy(client: Any, users: int, dim: int, top_n: int, log: Log) -> dict[str, Any]:
    """Baseline in the same run: the layout before the binary record (a hash with the list
    as JSON, scores and titles, and a hash with the float32 embedding), written as that code
    wrote it: HSET then EXPIRE of each key."""
    from nearline_rec.settings import load_settings

    prefix = "bo:"
    await _clear(client, prefix)
    ttl = load_settings().redis.list_ttl_seconds
    rng = np.random.default_rng(dim)
    ids = _user_ids(users)
    try:
        used0 = await _used(client)
        for start in range(0, users, 1000):
            writes = _lists(rng, ids[start : start + 1000], top_n, dim, top_n)
            pipe = client.pipeline(transaction=False)
            for w in writes:
                rec, emb = f"{prefix}rec:{{{w.user_id}}}", f"{prefix}emb:{{{w.user_id}}}"
                body = json.dumps(w.value, separators=(",", ":"))
                pipe.hset(rec, mapping={"ver": w.version, "json": body})
                pipe.expire(rec, ttl)
                vec = np.asarray(w.embedding, dtype="<f4").tobytes()
                fields = {"ver": w.version, "vec": vec, "n": w.n_events, "t": w.event_time}
                pipe.hset(emb, mapping=fields)
                pipe.expire(emb, ttl)
            await pipe.execute()
        used1 = await _used(client)
        sample = ids[:: max(1, users // 1000)]
        rec_b = [
            int(await client.memory_usage(f"{prefix}rec:{{{u}}}", samples=0) or 0) for u in sample
        ]
        emb_b = [
            int(await client.memory_usage(f"{prefix}emb:{{{u}}}", samples=0) or 0) for u in sample
        ]
        json_len = len(await client.hget(f"{prefix}rec:{{{ids[0]}}}", "json") or b"")
        out = {
            "layout": "previous: list hash (JSON) + embedding hash (float32)",
            "users_written": users,
            "dim": dim,
            "list_items": top_n,
            "list_json_bytes": json_len,
            "memory_usage_list_hash": median([float(x) for x in rec_b]),
            "memory_usage_embedding_hash": median([float(x) for x in emb_b]),
            "memory_usage_per_user": median(
                [float(a + b) for a, b in zip(rec_b, emb_b, strict=True)]
            ),
            "used_memory_growth_per_user": round((used1 - used0) / users, 1),
        }
        log(f"  redis d={dim} previous layout: {out['memory_usage_per_user']:.0f} B/user")
        return out
    finally:
        await _clear(client, prefix)


async def _redis_memory(users: int, dim: int, log: Log) -> dict[str, Any]:
    import redis.asyncio as aioredis

    from nearline_rec.settings import load_settings

    s = load_settings()
    client = aioredis.Redis.from_url(s.redis.url)
    top_n = s.ranking.top_n
    try:
        layouts = [await _redis_layout(client, users, dim, n, top_n, log) for n in (top_n, 50)]
        legacy = await _redis_legacy(client, min(users, 20_000), dim, top_n, log)
    finally:
        await client.aclose()
    return {
        "dim": dim,
        "record": layouts,
        "previous_layout": legacy,
        "target_bytes": 400,
        "method": "MEMORY USAGE (samples=0) of 1 in users/1000 users' keys (key and value "
        "allocations, as Redis reports them); used_memory growth / users also counts the "
        "keyspace and TTL dictionaries. Key: the default prefix length and 7-character user "
        "ids. 1M users = per user x 1M.",
    }


def worker_memory(users: int, events_per_user: int, dim: int, log: Log) -> dict[str, Any]:
    from nearline_rec.core.user_state import UserState
    from nearline_rec.tools.bench.core import build_processor
    from nearline_rec.tools.bench.workload import catalogue, events

    cat = catalogue(10_000, dim)
    proc = build_processor(cat)
    rec = proc.rec
    # Streamed (10M events at 1M users would hold several GB as a list); the first event is
    # drawn before tracing starts, so the generator's own per-user arrays are not counted.
    stream = events(cat, users * events_per_user, n_users=users, zipf_s=0.0)
    first = next(stream)
    gc.collect()
    # RSS growth depends on what the allocator kept from earlier phases (the same run read
    # 0.9-6.6 KB a user); tracemalloc counts the bytes the users' data still holds (Python
    # objects and numpy buffers), which is what the figure means.
    tracemalloc.start()
    traced_before = tracemalloc.get_traced_memory()[0]
    before = rss_bytes()
    table: dict[bytes, bytes] = {}
    states: dict[str, UserState] = {}
    for offset, ev in enumerate(itertools.chain([first], stream)):
        if offset % 1_000_000 == 0 and offset:
            log(f"    worker: {offset:,} of {users * events_per_user:,} events applied")
        st = states.get(ev.user_id)
        if st is None:
            raw = table.get(ev.user_id.encode())
            st = UserState.from_bytes(raw) if raw else UserState(user_id=ev.user_id)
            states[ev.user_id] = st
        rec.apply(st, ev, offset)
        if len(states) >= 2000:  # flush like micro-batches: state lives as table bytes
            for uid, s in states.items():
                rec.touch(s)
                table[uid.encode()] = s.to_bytes()
            states.clear()
    for uid, s in states.items():
        rec.touch(s)
        table[uid.encode()] = s.to_bytes()
    states.clear()
    del stream, first
    gc.collect()
    grown = rss_bytes() - before
    traced = tracemalloc.get_traced_memory()[0] - traced_before
    tracemalloc.stop()
    n = len(table)
    out = {
        "users": n,
        "events_per_user": round(users * events_per_user / max(n, 1), 1),
        "dim": dim,
        "state_bytes_median": median([float(len(v)) for v in list(table.values())[:5000]]),
        "bytes_per_user": round(traced / max(n, 1), 1),
        "rss_growth_per_user": round(grown / max(n, 1), 1),
        "extrapolated_1m_users_bytes": int(traced / max(n, 1) * 1_000_000),
        "method": "tracemalloc: bytes still allocated after applying the events of `users` "
        "users (table bytes in a dict as the memory:// store keeps them, plus the user "
        "directory); 1M = per user x 1M; RSS growth alongside",
    }
    log(
        f"  worker: {out['bytes_per_user']} B/user (RSS growth {out['rss_growth_per_user']}), "
        f"state {out['state_bytes_median']} B"
    )
    return out


def run(
    out_dir: Path,
    *,
    index_sizes: list[int],
    dims: list[int],
    catalog_items: int,
    users: int,
    events_per_user: int,
    log: Log = print,
) -> dict[str, Any]:
    from nearline_rec.tools.localrun import start_services, stop_services

    t0 = time.perf_counter()
    figures: dict[str, Any] = {
        "params": {
            "index_sizes": index_sizes,
            "dims": dims,
            "catalog_items": catalog_items,
            "users": users,
            "events_per_user": events_per_user,
        },
        "index": [index_memory(n, d, log) for n in index_sizes for d in dims],
        "catalog": [catalog_memory(catalog_items, d, log) for d in dims],
        "worker": [worker_memory(users, events_per_user, d, log) for d in dims],
    }
    started = start_services(log)
    try:
        figures["redis"] = [asyncio.run(_redis_memory(users, d, log)) for d in dims]
    finally:
        stop_services(started)
    figures["summary"] = summarize(figures)
    figures["elapsed_s"] = round(time.perf_counter() - t0, 1)
    write_result(out_dir, "memory", figures)
    plot(out_dir / "memory.png", figures)
    return figures


def summarize(f: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i in f["index"]:
        out[f"index_{i['n']}x{i['dim']}"] = {
            "lsh_bytes_per_item": i["lsh"]["bytes_per_item"],
            "lsh_vs_raw": i["lsh"]["vs_raw"],
            "lsh_beyond_vectors_vs_raw": i["lsh"]["beyond_vectors_vs_raw"],
            "exact_bytes_per_item": i["exact"]["bytes_per_item"],
        }
    for r in f["redis"]:
        old = r["previous_layout"]
        for rec in r["record"]:
            row = out[f"redis_d{r['dim']}_{rec['list_items']}_items"] = {
                "bytes_per_user": rec["memory_usage_per_user"],
                **rec["components"],
                "used_memory_per_user": rec["used_memory_growth_per_user"],
                "gb_at_1m_users": round(rec["extrapolated_1m_users_bytes"] / 1e9, 3),
                "previous_layout_bytes_per_user": old["memory_usage_per_user"],
                "vs_previous": round(
                    rec["memory_usage_per_user"] / old["memory_usage_per_user"], 3
                ),
            }
            if r["dim"] == 32:  # the target: d = 32, an embedding and 50 item ids
                row["target_met"] = rec["memory_usage_per_user"] <= r["target_bytes"]
    for w in f["worker"]:
        out[f"worker_d{w['dim']}"] = {
            "bytes_per_user": w["bytes_per_user"],
            "gb_at_1m_users": round(w["extrapolated_1m_users_bytes"] / 1e9, 2),
        }
    for c in f["catalog"]:
        out[f"catalog_d{c['dim']}"] = {
            "bytes_per_item": c["bytes_per_item"],
            "gb_at_1m_items": round(c["extrapolated_1m_bytes"] / 1e9, 2),
        }
    return out


def plot(path: Path, f: dict[str, Any]) -> None:
    from nearline_rec.extras import pyplot

    plt = pyplot()

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels, raw, lsh, exact = [], [], [], []
    for i in f["index"]:
        labels.append(f"{i['n'] // 1000}k x {i['dim']}")
        raw.append(i["raw_vector_bytes"] / i["n"])
        lsh.append(i["lsh"]["bytes_per_item"])
        exact.append(i["exact"]["bytes_per_item"])
    xs = np.arange(len(labels))
    ax1.bar(xs - 0.27, raw, 0.27, label="raw float32 vector", color="gray")
    ax1.bar(xs, exact, 0.27, label="ExactIndex", color="tab:orange")
    ax1.bar(xs + 0.27, lsh, 0.27, label="LSHIndex", color="tab:blue")
    ax1.plot(xs + 0.27, [2 * r for r in raw], "r_", ms=18, label="target: 2x raw")
    ax1.set_xticks(xs, labels)
    ax1.set_ylabel("bytes per item")
    ax1.set_title("index memory per item")
    ax1.legend(fontsize=8)
    names, vals, colors = [], [], []
    for r in f["redis"]:
        old = r["previous_layout"]
        names.append(f"Redis previous d={r['dim']} ({old['list_items']} items)")
        vals.append(old["memory_usage_per_user"])
        colors.append("tab:gray")
        for rec in r["record"]:
            names.append(f"Redis record d={r['dim']} ({rec['list_items']} items)")
            vals.append(rec["memory_usage_per_user"])
            colors.append("tab:red")
    for w in f["worker"]:
        names.append(f"worker d={w['dim']}")
        vals.append(w["bytes_per_user"])
        colors.append("tab:green")
    ax2.barh(names, vals, color=colors)
    ax2.axvline(400, color="r", lw=0.8, ls="--", label="target 400 B/user in Redis (d=32)")
    ax2.set_xlabel("bytes per user")
    ax2.set_title("memory per user")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
