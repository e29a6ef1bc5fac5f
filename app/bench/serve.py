"""Read-path benchmark: HTTP reads (cache hits, Redis reads) vs a bare Redis GET, on loopback."""

from __future__ import annotations

import multiprocessing as mp
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from app.bench import median, percentile, write_result
from app.localrun import WorkerProcess, isolated_env, settings_for, start_services, stop_services


def _http_load(port: int, users: list[str], seconds: float, out: Any) -> None:
    """Second process: keep-alive GETs for `seconds`, cycling through users."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    lat: list[float] = []
    errors = 0
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end:
        user = users[i % len(users)]
        i += 1
        t = time.perf_counter()
        try:
            conn.request("GET", f"/recommendations/{user}?k=10")
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                errors += 1
        except OSError:
            errors += 1
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            continue
        lat.append(time.perf_counter() - t)
    out.put({"latencies": lat, "errors": errors, "seconds": seconds})


def _redis_load(url: str, keys: list[str], seconds: float, out: Any) -> None:
    """Second process: the floor, a bare GET of the same keys from Python."""
    import redis

    r = redis.Redis.from_url(url)
    lat: list[float] = []
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end:
        t = time.perf_counter()
        r.get(keys[i % len(keys)])
        lat.append(time.perf_counter() - t)
        i += 1
    out.put({"latencies": lat, "errors": 0, "seconds": seconds})


def _measure(target: Any, args: tuple[Any, ...]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    res = q.get(timeout=args[-1] + 60)
    p.join(timeout=30)
    lat = res["latencies"]
    return {
        "requests": len(lat),
        "errors": res["errors"],
        "rps": round(len(lat) / res["seconds"], 1),
        "p50_ms": round(percentile(lat, 50) * 1000, 3),
        "p99_ms": round(percentile(lat, 99) * 1000, 3),
    }


def run(out_dir: Path, *, seconds: float, repeats: int, users: int) -> dict[str, Any]:
    from app.core.events import UserEvent
    from app.data.sample import generate_sample
    from app.kafka_clients import ensure_topics
    from app.producer import item_updates_from_files, produce_events, publish_items
    from app.storage import keys

    started = start_services(lambda m: click.echo(m, err=True))
    workers: list[WorkerProcess] = []
    try:
        work = Path(tempfile.mkdtemp(prefix="nearline-bench-serve-"))
        sample = generate_sample(work / "sample", n_items=2000, n_users=200, n_ratings=2000)
        base_env = isolated_env(f"bench-serve-{int(time.time())}")
        s = settings_for(base_env)
        ensure_topics(s)
        updates, _ = item_updates_from_files(
            sample.movies_path, sample.embeddings_path, dim=s.items.embedding_dim
        )
        publish_items(s, updates)
        ids = [u.item_id for u in updates]
        user_ids = [f"reader-{u}" for u in range(users)]
        events = [
            UserEvent(f"r{u}-{j}", uid, ids[(u * 13 + j * 7) % len(ids)], "like", 1.7e9 + j)
            for u, uid in enumerate(user_ids)
            for j in range(3)
        ]
        # one worker with the cache on (reads after the first hit it), one with it off
        cached = WorkerProcess(
            {**base_env, "NEARLINE_SERVE__CACHE_TTL_SECONDS": "3600"}, work, "cached", "warning"
        ).start()
        workers.append(cached)
        cached.wait_ready(180)
        produce_events(s, events)
        cached.wait(lambda st: st["counters"].get("lists_written", 0) >= users, 180, "lists")
        direct = WorkerProcess(
            {
                **base_env,
                "NEARLINE_SERVE__CACHE_TTL_SECONDS": "0",
                "NEARLINE_WORKER__APP_ID": base_env["NEARLINE_WORKER__APP_ID"] + "-nocache",
            },
            work,
            "nocache",
            "warning",
        ).start()
        workers.append(direct)
        direct.wait_ready(180)
        _measure(_http_load, (cached.port, user_ids, 1.0))  # warm the cache and connections
        redis_keys = [keys.user_list(s.redis.key_prefix, u) for u in user_ids]
        rounds: dict[str, list[dict[str, Any]]] = {
            "http_cache": [],
            "http_redis": [],
            "bare_redis_get": [],
        }
        for _ in range(repeats):
            rounds["http_cache"].append(_measure(_http_load, (cached.port, user_ids, seconds)))
            rounds["http_redis"].append(_measure(_http_load, (direct.port, user_ids, seconds)))
            rounds["bare_redis_get"].append(
                _measure(_redis_load, (s.redis.url, redis_keys, seconds))
            )
        st = cached.status() or {}
    finally:
        for w in workers:
            w.stop()
        stop_services(started)
    med = {
        name: {k: median([r[k] for r in rs]) for k in ("rps", "p50_ms", "p99_ms")}
        for name, rs in rounds.items()
    }
    floor = med["bare_redis_get"]
    ratios = {
        name: {
            "rps_vs_bare_redis": round(m["rps"] / floor["rps"], 3),
            "p50_vs_bare_redis": round(m["p50_ms"] / floor["p50_ms"], 2),
            "p99_vs_bare_redis": round(m["p99_ms"] / floor["p99_ms"], 2),
        }
        for name, m in med.items()
        if name != "bare_redis_get"
    }
    figures = {
        "params": {
            "seconds": seconds,
            "repeats": repeats,
            "users": users,
            "client": "one keep-alive connection, one request at a time, second process",
        },
        "median": med,
        "ratios": ratios,
        "rounds": rounds,
        "worker_reads_by_tier": st.get("reads", {}),
    }
    write_result(out_dir, "serve", figures)
    _plot(out_dir / "serve.png", med)
    return figures


def _plot(path: Path, med: dict[str, dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(med)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.bar(names, [med[n]["rps"] for n in names], color=["tab:blue", "tab:orange", "tab:gray"])
    a1.set_ylabel("requests/s (one client)")
    x = range(len(names))
    a2.bar([i - 0.2 for i in x], [med[n]["p50_ms"] for n in names], width=0.4, label="p50")
    a2.bar([i + 0.2 for i in x], [med[n]["p99_ms"] for n in names], width=0.4, label="p99")
    a2.set_xticks(list(x), names)
    a2.set_ylabel("latency (ms)")
    a2.legend()
    for ax in (a1, a2):
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle("read path on loopback (medians of repeats)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
