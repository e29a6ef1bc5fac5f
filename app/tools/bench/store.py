"""User-state store benchmark: memory:// against rocksdb:// with many users.

For each store, one real worker (own topics and consumer group, on the local broker and
Redis). Pushing a million users' first events through a worker takes hours here (one list
per event), so the users' state is written straight into the table's changelog topic
instead: for each user, the state the worker's own code makes of `per_user` events
(`apply_event`, a last list of `top_n` items, `UserState.to_bytes`), keyed and partitioned
as the worker writes it (Kafka's murmur2 partitioner, on the user id). Then, per store:

1. baseline: a start on an empty table, until the worker applies its first event;
2. cold recovery: a start on the seeded changelog (both stores read all of it), until the
   worker applies a new event; its resident memory then;
3. a burst of events of distinct users picked at random among all of them (each one loads
   a state from the store): events/s and resident memory after it;
4. warm recovery: the worker stopped and started again (the memory store reads the whole
   changelog again, RocksDB its local files and the changelog's tail only).
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Catalog:
    """The items every store's run publishes, made once per benchmark."""

    updates: list[Any]

    @property
    def ids(self) -> list[str]:
        return [u.item_id for u in self.updates]


def make_catalog(work: Path, settings: Any) -> Catalog:
    from nearline_rec.data.sample import generate_sample
    from nearline_rec.producer import item_updates_from_files

    sample = generate_sample(work / "sample", n_items=2000, n_users=50, n_ratings=500)
    updates, _ = item_updates_from_files(
        sample.movies_path, sample.embeddings_path, dim=settings.items.embedding_dim
    )
    return Catalog(updates)


def _user(u: int) -> str:
    return f"u{u:07d}"


def _event(u: int, item: str, i: int, tag: str) -> Any:
    from nearline_rec.core.events import UserEvent

    return UserEvent(
        event_id=f"{tag}-{u}-{i}",
        user_id=_user(u),
        item_id=item,
        type="click",
        timestamp=T0 + i * 60.0 + u * 1e-3,
    )


def state_records(
    settings: Any, catalog: Catalog, users: int, per_user: int, seed: int = 7
) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of each user's state as the worker stores it after `per_user` click
    events: the worker's own `apply_event` and encoding, and a last list of `top_n` items.
    No source offsets are kept, so every later event of the user is new to it."""
    import numpy as np
    from kafka.partitioner.default import murmur2

    from nearline_rec.core.user_state import UserState, apply_event, policy_from_settings

    policy = policy_from_settings(settings.embedding, settings.worker)
    vectors = {u.item_id: np.asarray(u.embedding, dtype=np.float32) for u in catalog.updates}
    ids = catalog.ids
    rng = random.Random(seed)
    top_n = settings.ranking.top_n
    for u in range(users):
        state = UserState(user_id=_user(u))
        for i in range(per_user):
            apply_event(state, _event(u, rng.choice(ids), i, "seed"), -1, vectors.get, policy)
        first = rng.randrange(len(ids) - top_n)
        state.last_list = ids[first : first + top_n]
        key = state.user_id.encode()
        state.partition = (murmur2(key) & 0x7FFFFFFF) % settings.topics.partitions
        yield key, state.to_bytes()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _disk_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 1)


def _start_to_first_event_s(worker: WorkerProcess, settings: Any, item: str, tag: str) -> float:
    """Seconds from the worker's start until it has applied one new event (Faust applies
    none before its table is recovered)."""
    from nearline_rec.producer import produce_events

    t0 = time.monotonic()
    worker.start()
    worker.wait_ready(timeout=3600)
    produce_events(settings, [_event(0, item, 0, tag)])
    worker.wait_events(1, timeout=3600)
    return time.monotonic() - t0


def _directory_fill(worker: WorkerProcess, settings: Any, users: int) -> dict:
    """After the recovery the similar-users directory is filled from the table, in the
    background (every user here has a taste vector): seconds until it holds
    min(users, similar_users_max), seconds until its scans of the table are done (the burst
    then runs on a worker doing nothing else), and the resident memory then."""
    cap = settings.recall.similar_users_max
    want = min(users, cap) if cap else users
    t0 = time.monotonic()
    worker.wait(
        lambda s: s.get("users_indexed", 0) >= want, 3600, f"{want:,} users in the directory"
    )
    held_s = time.monotonic() - t0
    # the fill scans the table again after a first scan that found users; after that
    # second scan it is idle (unless the table changes)
    st = worker.wait(
        lambda s: s["counters"].get("directory_scans", 0) >= 2, 3600, "the directory's scans"
    )
    assert worker.proc is not None
    return {
        "directory_max_users": cap,
        "directory_held_s": round(held_s, 1),
        "directory_fill_s": round(time.monotonic() - t0, 1),
        "users_indexed": st.get("users_indexed", 0),
        "rss_mb_after_fill": _rss_mb(worker.proc.pid),
    }


def _burst(
    worker: WorkerProcess, settings: Any, catalog: Catalog, users: int, n: int, tag: str
) -> dict:
    """n events of n distinct users picked at random: events/s until all are applied."""
    from nearline_rec.producer import produce_events

    rng = random.Random(11)
    ids = catalog.ids
    picked = rng.sample(range(users), min(n, users))
    done0 = (worker.status() or {"counters": {}})["counters"].get("events_done", 0)
    t0 = time.monotonic()
    produce_events(settings, (_event(u, rng.choice(ids), 1, f"{tag}-burst") for u in picked))
    produced_s = time.monotonic() - t0
    st = worker.wait_events(done0 + len(picked), timeout=max(900.0, len(picked) / 20))
    took = time.monotonic() - t0
    assert worker.proc is not None
    return {
        "burst_events": len(picked),
        "burst_produce_seconds": round(produced_s, 1),
        "burst_seconds": round(took, 1),
        "events_per_second": round(len(picked) / took, 1),
        "burst_events_applied": st["counters"].get("events_applied", 0),
        "rss_mb_after_burst": _rss_mb(worker.proc.pid),
    }


def _store_env(run: str, spec: str, data_dir: Path) -> dict[str, str]:
    """`spec` is a store URL, optionally with `@N`: the similar-users directory's
    NEARLINE_RECALL__SIMILAR_USERS_MAX for that run (`rocksdb://@0`: every user)."""
    store, _, cap = spec.partition("@")
    extra = {"NEARLINE_RECALL__SIMILAR_USERS_MAX": cap} if cap else {}
    return isolated_env(
        run,
        NEARLINE_WORKER__STORE=store,
        NEARLINE_WORKER__DATA_DIR=str(data_dir),
        NEARLINE_DEGRADE__MODE="normal",
        **extra,
    )


def _label(spec: str) -> str:
    store, _, cap = spec.partition("@")
    return store.split(":")[0] + (f"-max{cap}" if cap else "")


def _prepare(env: dict[str, str], catalog: Catalog) -> Any:
    from nearline_rec.kafka_clients import ensure_topics
    from nearline_rec.producer import publish_items

    s = settings_for(env)
    ensure_topics(s)
    publish_items(s, catalog.updates)
    return s


def seed_changelog(env: dict[str, str], catalog: Catalog, users: int, per_user: int) -> dict:
    """Every user's state written into the changelog of the run `env` names."""
    from nearline_rec.kafka_clients import changelog_topic
    from nearline_rec.producer import produce_raw

    s = settings_for(env)
    click.echo(f"writing {users:,} users' state into the changelog ...", err=True)
    t0 = time.monotonic()
    n = produce_raw(s, changelog_topic(s), state_records(s, catalog, users, per_user))
    took = time.monotonic() - t0
    click.echo(f"{n:,} states in {took:.0f} s", err=True)
    return {"states_seeded": n, "seed_seconds": round(took, 1)}


def _one_store(
    store: str, seeded_run: str, users: int, burst: int, catalog: Catalog, work: Path
) -> dict:
    """One store on the seeded changelog (runs of the stores share it, one after the other,
    each with its own data directory); the baseline start on an empty table of its own."""
    label = _label(store)
    item = catalog.ids[0]
    base_env = _store_env(f"{seeded_run}-empty-{label}", store, work / f"empty-{label}")
    base = WorkerProcess(base_env, work, name=f"empty-{label}", loglevel="warning")
    try:
        empty_start_s = _start_to_first_event_s(base, _prepare(base_env, catalog), item, label)
    finally:
        base.stop(timeout=120)
    data_dir = work / f"data-{label}"
    env = _store_env(seeded_run, store, data_dir)
    s = settings_for(env)
    worker = WorkerProcess(env, work, name=f"store-{label}", loglevel="warning")
    try:
        click.echo(f"{label}: recovering {users:,} users from the changelog ...", err=True)
        cold_s = _start_to_first_event_s(worker, s, item, f"{label}-cold")
        assert worker.proc is not None
        rss_recovered = _rss_mb(worker.proc.pid)
        click.echo(f"{label}: recovered in {cold_s:.0f} s; filling the directory ...", err=True)
        fill = _directory_fill(worker, s, users)
        click.echo(f"{label}: filled in {fill['directory_fill_s']:.0f} s; burst ...", err=True)
        burst_figures = _burst(worker, s, catalog, users, burst, label)
        worker.stop(timeout=120)
        click.echo(f"{label}: {burst_figures['events_per_second']} events/s; restart", err=True)
        warm_s = _start_to_first_event_s(worker, s, item, f"{label}-warm")
        rss_restarted = _rss_mb(worker.proc.pid)
        st = worker.status() or {}
    finally:
        worker.stop(timeout=120)
    return {
        "store": store,
        "empty_start_to_first_event_s": round(empty_start_s, 1),
        "cold_start_to_first_event_s": round(cold_s, 1),
        "cold_recovery_s": round(cold_s - empty_start_s, 1),
        "rss_mb_after_recovery": rss_recovered,
        **fill,
        **burst_figures,
        "restart_to_first_event_s": round(warm_s, 1),
        "recovery_s": round(warm_s - empty_start_s, 1),
        "rss_mb_after_restart": rss_restarted,
        "disk_mb": _disk_mb(data_dir) if data_dir.exists() else 0.0,
        "agent_crashes": sum((st.get("agent_crashes") or {}).values()),
    }


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


def run(
    out_dir: Path, *, users: int, per_user: int, burst: int, stores: list[str]
) -> dict[str, Any]:
    with open("/proc/loadavg") as f:
        load_before = f.read().split()[:3]
    started = start_services(lambda m: click.echo(m, err=True))
    work = Path(tempfile.mkdtemp(prefix="nearline-bench-store-"))
    try:
        run_id = f"bench-store-{int(time.time())}"
        catalog = make_catalog(work, settings_for(isolated_env(run_id)))
        _prepare(isolated_env(run_id), catalog)
        seeded = seed_changelog(isolated_env(run_id), catalog, users, per_user)
        runs = [_one_store(store, run_id, users, burst, catalog, work) for store in stores]
    finally:
        stop_services(started)
        shutil.rmtree(work, ignore_errors=True)
    by = {_label(r["store"]): r for r in runs}
    figures: dict[str, Any] = {
        "params": {"users": users, "per_user": per_user, "burst": burst, **seeded},
        "runs": runs,
    }
    figures["shared_counts_cost"] = shared_counts_cost(settings_for({}).redis.url)
    if "memory" in by and "rocksdb" in by:
        m, r = by["memory"], by["rocksdb"]
        figures["ratios_rocksdb_vs_memory"] = {
            key: round(r[key] / m[key], 3) if m[key] else None
            for key in (
                "events_per_second",
                "rss_mb_after_recovery",
                "rss_mb_after_fill",
                "directory_fill_s",
                "rss_mb_after_burst",
                "rss_mb_after_restart",
                "cold_recovery_s",
                "recovery_s",
            )
        }
    with open("/proc/loadavg") as f:
        figures["loadavg"] = {"before": load_before, "after": f.read().split()[:3]}
    write_result(out_dir, "store", figures)
    _plot(out_dir / "store.png", runs, users)
    click.echo(json.dumps(figures.get("ratios_rocksdb_vs_memory", {}), indent=2))
    return figures


def _plot(path: Path, runs: list[dict[str, Any]], users: int) -> None:
    from nearline_rec.extras import pyplot

    plt = pyplot()

    names = [r["store"] for r in runs]
    panels = [
        ("events_per_second", "events/s (burst after recovery)"),
        ("rss_mb_after_burst", "worker RSS after the burst, MB"),
        ("cold_recovery_s", "recovery from the changelog, s"),
        ("recovery_s", "recovery after a restart, s"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (key, title) in zip(axes, panels, strict=True):
        ax.bar(names, [r[key] for r in runs], color=["#4c72b0", "#dd8452"][: len(runs)])
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"user-state store, {users:,} users")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
