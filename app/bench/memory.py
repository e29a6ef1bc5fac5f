"""Memory benchmark: bytes per item in the index, per user in Redis and in the worker.

- Index: LSHIndex and ExactIndex built on `lsh_tune.clustered_vectors` at the requested
  sizes; `memory_bytes()` (the arrays it holds) and the process RSS growth, against the raw
  float32 vectors. The catalogue (metadata, its own vector copy, both indexes) is measured at
  `catalog_items` and extrapolated linearly (everything in it is per item).
- Redis: `users` users written through the real RedisStore (same Lua CAS writes, same JSON
  lists, same float32 embeddings) under an isolated prefix, then MEMORY USAGE of a sample of
  keys per component and the growth of INFO used_memory per user; 1M users is that x 1M
  (Redis memory is linear in keys of one shape). Also measured: the layout the issue's target
  describes (embedding + 50 item ids), to show what it would take.
- Worker: per-user state (the table's bytes, the user directory's vector and likes) for
  `users` users with `events_per_user` events each, RSS growth per user.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from app.bench import median, write_result
from app.bench.lsh import rss_bytes

Log = Callable[[str], None]


def index_memory(n: int, dim: int, log: Log) -> dict[str, Any]:
    from app.core.lsh import ExactIndex, LSHIndex, default_params
    from app.core.lsh_tune import clustered_vectors

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
    from app.bench.workload import catalogue, item_updates
    from app.core.catalog import ItemCatalog

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


async def _redis_memory(users: int, dim: int, log: Log) -> dict[str, Any]:
    import redis.asyncio as aioredis

    from app.core.pipeline import RecItem, RecList
    from app.processing import list_version
    from app.settings import load_settings
    from app.storage import keys as K
    from app.storage.redis_store import ListWrite, RedisStore

    prefix = f"bench-mem-{int(time.time())}:"
    s = load_settings(redis={"key_prefix": prefix})
    store = RedisStore(s.redis)
    client = aioredis.Redis.from_url(s.redis.url)
    rng = np.random.default_rng(0)
    top_n = s.ranking.top_n
    try:
        used0 = int((await client.info("memory"))["used_memory"])
        for start in range(0, users, 1000):
            writes = []
            for u in range(start, min(users, start + 1000)):
                items = tuple(
                    RecItem(f"i{int(i)}", round(float(sc), 6), ch, f"Item {int(i)} (2001)")
                    for i, sc, ch in zip(
                        rng.integers(0, 100_000, top_n),
                        np.sort(rng.random(top_n))[::-1] * 3,
                        rng.choice(["embedding", "item2item", "genre", "trending"], top_n),
                        strict=True,
                    )
                )
                rl = RecList(f"u{u}", items, "personal", "linear-default-2", "v1", 1.7e9 + u)
                version = list_version(1000 + u, "personal")
                emb = rng.standard_normal(dim).astype(np.float32)
                writes.append(
                    ListWrite(
                        f"u{u}",
                        version,
                        rl.to_json(version=version, generated_at=1.7e9 + u),
                        emb,
                        12,
                        1.7e9 + u,
                    )
                )
            await store.write_lists(writes, now=time.time())
        used1 = int((await client.info("memory"))["used_memory"])
        sample = range(0, users, max(1, users // 1000))
        rec = [
            int(await client.memory_usage(K.user_list(prefix, f"u{u}"), samples=0) or 0)
            for u in sample
        ]
        emb = [
            int(await client.memory_usage(K.user_embedding(prefix, f"u{u}"), samples=0) or 0)
            for u in sample
        ]
        json_len = [
            len(await client.hget(K.user_list(prefix, f"u{u}"), "json") or b"")
            for u in list(sample)[:200]
        ]
        # The layout the target describes: embedding + 50 item ids, packed, in one hash.
        compact_key = f"{prefix}compact:{{u0}}"
        await client.hset(
            compact_key,
            mapping={
                "ver": 2001,
                "vec": rng.standard_normal(dim).astype("<f4").tobytes(),
                "ids": np.arange(50, dtype="<u4").tobytes(),
            },
        )
        compact = int(await client.memory_usage(compact_key, samples=0) or 0)
        # ...and as one string: version, float32 embedding, 50 uint32 item keys.
        packed_key = f"{prefix}packed:{{u0}}"
        await client.set(
            packed_key,
            np.int64(2001).tobytes()
            + rng.standard_normal(dim).astype("<f4").tobytes()
            + np.arange(50, dtype="<u4").tobytes(),
        )
        packed = int(await client.memory_usage(packed_key, samples=0) or 0)
        per_user = (used1 - used0) / users
        out = {
            "users_written": users,
            "dim": dim,
            "list_items": top_n,
            "list_json_bytes_median": median([float(x) for x in json_len]),
            "memory_usage_list_hash": median([float(x) for x in rec]),
            "memory_usage_embedding_hash": median([float(x) for x in emb]),
            "memory_usage_per_user": median([float(a + b) for a, b in zip(rec, emb, strict=True)]),
            "used_memory_growth_per_user": round(per_user, 1),
            "extrapolated_1m_users_bytes": int(per_user * 1_000_000),
            "compact_50_ids_plus_embedding_hash": compact,
            "compact_50_ids_plus_embedding_string": packed,
            "method": "MEMORY USAGE (samples=0) of 1 in users/1000 users' keys; INFO used_memory "
            "growth / users (includes the keyspace dict and TTL entries); 1M = per user x 1M",
        }
        log(
            f"  redis d={dim}: {out['memory_usage_per_user']} B/user by MEMORY USAGE "
            f"({out['used_memory_growth_per_user']} by used_memory)"
        )
        return out
    finally:
        cursor = 0
        while True:
            cursor, found = await client.scan(cursor, match=f"{prefix}*", count=5000)
            if found:
                await client.delete(*found)
            if cursor == 0:
                break
        await client.aclose()
        await store.close()


def worker_memory(users: int, events_per_user: int, dim: int, log: Log) -> dict[str, Any]:
    from app.bench.core import build_processor
    from app.bench.workload import catalogue, events
    from app.core.user_state import UserState

    cat = catalogue(10_000, dim)
    proc = build_processor(cat)
    rec = proc.rec
    evs = list(events(cat, users * events_per_user, n_users=users, zipf_s=0.0))
    gc.collect()
    before = rss_bytes()
    table: dict[bytes, bytes] = {}
    states: dict[str, UserState] = {}
    for offset, ev in enumerate(evs):
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
    del evs
    gc.collect()
    grown = rss_bytes() - before
    n = len(table)
    out = {
        "users": n,
        "events_per_user": round(users * events_per_user / max(n, 1), 1),
        "dim": dim,
        "state_bytes_median": median([float(len(v)) for v in list(table.values())[:5000]]),
        "rss_growth_per_user": round(grown / max(n, 1), 1),
        "extrapolated_1m_users_bytes": int(grown / max(n, 1) * 1_000_000),
        "method": "RSS growth while applying the events of `users` users (table bytes in a dict "
        "as the memory:// store keeps them, plus the user directory); 1M = per user x 1M",
    }
    log(f"  worker: {out['rss_growth_per_user']} B/user, state {out['state_bytes_median']} B")
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
    from app.localrun import start_services, stop_services

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
        out[f"redis_d{r['dim']}"] = {
            "bytes_per_user": r["memory_usage_per_user"],
            "list": r["memory_usage_list_hash"],
            "embedding": r["memory_usage_embedding_hash"],
            "used_memory_per_user": r["used_memory_growth_per_user"],
            "gb_at_1m_users": round(r["extrapolated_1m_users_bytes"] / 1e9, 2),
            "compact_hash_bytes": r["compact_50_ids_plus_embedding_hash"],
            "compact_string_bytes": r["compact_50_ids_plus_embedding_string"],
        }
    for w in f["worker"]:
        out[f"worker_d{w['dim']}"] = {
            "bytes_per_user": w["rss_growth_per_user"],
            "gb_at_1m_users": round(w["extrapolated_1m_users_bytes"] / 1e9, 2),
        }
    for c in f["catalog"]:
        out[f"catalog_d{c['dim']}"] = {
            "bytes_per_item": c["bytes_per_item"],
            "gb_at_1m_items": round(c["extrapolated_1m_bytes"] / 1e9, 2),
        }
    return out


def plot(path: Path, f: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        names += [f"Redis list d={r['dim']}", f"Redis emb d={r['dim']}"]
        vals += [r["memory_usage_list_hash"], r["memory_usage_embedding_hash"]]
        colors += ["tab:red", "tab:pink"]
        names.append(f"packed string: 50 ids+emb d={r['dim']}")
        vals.append(r["compact_50_ids_plus_embedding_string"])
        colors.append("tab:gray")
    for w in f["worker"]:
        names.append(f"worker d={w['dim']}")
        vals.append(w["rss_growth_per_user"])
        colors.append("tab:green")
    ax2.barh(names, vals, color=colors)
    ax2.axvline(400, color="r", lw=0.8, ls="--", label="target 400 B/user in Redis (d=32)")
    ax2.set_xlabel("bytes per user")
    ax2.set_title("memory per user")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
