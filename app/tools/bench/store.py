"""User-state store benchmark: memory:// against rocksdb:// with many users.

For each store, one real worker (own topics and consumer group, on the local broker and
Redis): the events of N users are produced and applied (events/s, the worker's resident
memory), then the worker is stopped and started again and the time until it applies a
new event is taken (recovery: the memory store replays the whole changelog, RocksDB reads
its local files and only the changelog's tail). A first start with an empty table gives
the same-run baseline of start-up time."""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from nearline_rec.tools.bench import write_result
from nearline_rec.tools.localrun import (
    WorkerProcess,
    isolated_env,
    settings_for,
    start_services,
    stop_services,
)

T0 = 1_700_000_000.0


def _events(users: int, per_user: int, items: list[str], seed: int, tag: str) -> Iterator[Any]:
    from nearline_rec.core.events import UserEvent

    rng = random.Random(seed)
    for i in range(per_user):
        for u in range(users):
            yield UserEvent(
                event_id=f"{tag}-{u}-{i}",
                user_id=f"u{u:07d}",
                item_id=rng.choice(items),
                type="click",
                timestamp=T0 + i * 60.0 + u * 1e-3,
            )


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _disk_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 1)


def _first_event_s(worker: WorkerProcess, settings: Any, items: list[str], tag: str) -> float:
    """Seconds from the worker's start until it has applied one new event (Faust applies
    none before its table is recovered)."""
    from nearline_rec.producer import produce_events

    t0 = time.monotonic()
    worker.start()
    worker.wait_ready(timeout=1800)
    produce_events(settings, _events(1, 1, items, 1, tag))
    worker.wait_events(1, timeout=1800)
    return time.monotonic() - t0


def _one_store(store: str, users: int, per_user: int, items: list[str], work: Path) -> dict:
    from nearline_rec.kafka_clients import ensure_topics
    from nearline_rec.producer import produce_events, publish_items

    label = store.split(":")[0]
    data_dir = work / f"data-{label}"
    env = isolated_env(
        f"bench-store-{label}-{int(time.time())}",
        NEARLINE_WORKER__STORE=store,
        NEARLINE_WORKER__DATA_DIR=str(data_dir),
        NEARLINE_DEGRADE__MODE="normal",
    )
    s = settings_for(env)
    ensure_topics(s)
    publish_items(s, _items(work, s))
    worker = WorkerProcess(env, work, name=f"store-{label}", loglevel="warning")
    try:
        empty_start_s = _first_event_s(worker, s, items, "warm")
        total = users * per_user
        click.echo(f"{label}: producing {total:,} events of {users:,} users ...", err=True)
        t0 = time.monotonic()
        produce_events(s, _events(users, per_user, items, 7, "load"))
        produced_s = time.monotonic() - t0
        worker.wait_events(total + 1, timeout=max(600.0, total / 200))
        load_s = time.monotonic() - t0
        assert worker.proc is not None
        rss_loaded = _rss_mb(worker.proc.pid)
        worker.stop(timeout=120)
        click.echo(f"{label}: {total / load_s:,.0f} events/s; restarting ...", err=True)
        restart_s = _first_event_s(worker, s, items, "probe")
        rss_restarted = _rss_mb(worker.proc.pid)
        st = worker.status() or {}
    finally:
        worker.stop(timeout=120)
    return {
        "store": store,
        "users": users,
        "events": users * per_user,
        "produce_seconds": round(produced_s, 1),
        "load_seconds": round(load_s, 1),
        "events_per_second": round(users * per_user / load_s, 1),
        "rss_mb_after_load": rss_loaded,
        "rss_mb_after_restart": rss_restarted,
        "disk_mb": _disk_mb(data_dir) if data_dir.exists() else 0.0,
        "empty_start_to_first_event_s": round(empty_start_s, 1),
        "restart_to_first_event_s": round(restart_s, 1),
        "recovery_s": round(restart_s - empty_start_s, 1),
        "agent_crashes": sum((st.get("agent_crashes") or {}).values()),
    }


_ITEMS: list[Any] = []


def _items(work: Path, settings: Any) -> list[Any]:
    if not _ITEMS:
        from nearline_rec.data.sample import generate_sample
        from nearline_rec.producer import item_updates_from_files

        sample = generate_sample(work / "sample", n_items=2000, n_users=50, n_ratings=500)
        updates, _ = item_updates_from_files(
            sample.movies_path, sample.embeddings_path, dim=settings.items.embedding_dim
        )
        _ITEMS.extend(updates)
    return _ITEMS


def shared_counts_cost(redis_url: str, batch: int = 1000, rounds: int = 15) -> dict[str, Any]:
    """What counting a batch's events in the shared item statistics adds to the batch's Redis
    round trip: `write_lists` of `batch` users' lists with and without their `batch` counted
    events, in alternating rounds against the same Redis (medians)."""
    import asyncio

    import numpy as np

    from nearline_rec.core.popularity import CountedEvent
    from nearline_rec.settings import RedisSettings
    from nearline_rec.storage.redis_store import ListWrite, RedisStore

    prefix = f"bench-counts-{int(time.time())}:"
    items = [f"i{k}" for k in range(5000)]
    rng = random.Random(5)

    def writes(r: int) -> list[ListWrite]:
        return [
            ListWrite(
                f"u{r}-{u}",
                1,
                {"items": [{"item_id": rng.choice(items), "score": 1.0, "channel": "trending"}
                           for _ in range(20)],
                 "model_version": "m", "embedding_version": "e", "variant": ""},
                embedding=np.ones(32, np.float32),
            )
            for u in range(batch)
        ]  # fmt: skip

    async def measure() -> dict[str, Any]:
        store = RedisStore(RedisSettings(url=redis_url, key_prefix=prefix))
        plain, counted = [], []
        offset = 0
        try:
            for r in range(rounds):
                for with_counts in (r % 2 == 0, r % 2 == 1):
                    w = writes(2 * r + int(with_counts))
                    events = [
                        CountedEvent(0, offset + i, rng.choice(items), 1.0, T0 + offset + i)
                        for i in range(batch)
                    ]
                    offset += batch
                    t0 = time.perf_counter()
                    await store.write_lists(
                        w,
                        counted=events if with_counts else (),
                        count_topic="bench",
                        half_life=86400.0,
                    )
                    (counted if with_counts else plain).append(time.perf_counter() - t0)
            await store.client.eval(
                "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end",
                0,
                prefix + "*",
            )
        finally:
            await store.close()
        p, c = sorted(plain)[len(plain) // 2], sorted(counted)[len(counted) // 2]
        return {
            "batch_events": batch,
            "rounds": rounds,
            "median_ms_lists_only": round(p * 1000, 2),
            "median_ms_lists_and_counts": round(c * 1000, 2),
            "ratio": round(c / p, 3),
            "counts_us_per_event": round((c - p) / batch * 1e6, 2),
        }

    return asyncio.run(measure())


def run(out_dir: Path, *, users: int, per_user: int, stores: list[str]) -> dict[str, Any]:
    started = start_services(lambda m: click.echo(m, err=True))
    work = Path(tempfile.mkdtemp(prefix="nearline-bench-store-"))
    try:
        from nearline_rec.tools.localrun import settings_for as _settings

        items = [u.item_id for u in _items(work, _settings(isolated_env("bench-store-items")))]
        runs = [_one_store(store, users, per_user, items, work) for store in stores]
    finally:
        stop_services(started)
        shutil.rmtree(work, ignore_errors=True)
    by = {r["store"].split(":")[0]: r for r in runs}
    figures: dict[str, Any] = {"params": {"users": users, "per_user": per_user}, "runs": runs}
    figures["shared_counts_cost"] = shared_counts_cost(settings_for({}).redis.url)
    if "memory" in by and "rocksdb" in by:
        m, r = by["memory"], by["rocksdb"]
        figures["ratios_rocksdb_vs_memory"] = {
            "events_per_second": round(r["events_per_second"] / m["events_per_second"], 3),
            "rss_after_load": round(r["rss_mb_after_load"] / m["rss_mb_after_load"], 3),
            "rss_after_restart": round(r["rss_mb_after_restart"] / m["rss_mb_after_restart"], 3),
            "recovery_s": round(r["recovery_s"] / m["recovery_s"], 3) if m["recovery_s"] else None,
        }
    with open("/proc/loadavg") as f:
        figures["loadavg"] = f.read().split()[:3]
    write_result(out_dir, "store", figures)
    _plot(out_dir / "store.png", runs)
    click.echo(json.dumps(figures.get("ratios_rocksdb_vs_memory", {}), indent=2))
    return figures


def _plot(path: Path, runs: list[dict[str, Any]]) -> None:
    from nearline_rec.extras import pyplot

    plt = pyplot()

    names = [r["store"] for r in runs]
    panels = [
        ("events_per_second", "events/s (load)"),
        ("rss_mb_after_load", "worker RSS after load, MB"),
        ("rss_mb_after_restart", "worker RSS after restart, MB"),
        ("recovery_s", "recovery after restart, s"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (key, title) in zip(axes, panels, strict=True):
        ax.bar(names, [r[key] for r in runs], color=["#4c72b0", "#dd8452"][: len(runs)])
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"user-state store, {runs[0]['users']:,} users" if runs else "user-state store")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
