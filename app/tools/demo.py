"""`nearline demo`: the real worker on the built-in sample, end to end, with a short report."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import click

from nearline_rec.progress import Progress
from nearline_rec.tools.localrun import WorkerProcess, isolated_env, start_services, stop_services


def run_demo(*, show_users: int = 5, n_events: int = 20000, keep_services: bool = False) -> None:
    from nearline_rec.data.loaders import read_movies, read_ratings
    from nearline_rec.data.sample import generate_sample
    from nearline_rec.kafka_clients import ensure_topics
    from nearline_rec.producer import (
        events_from_ratings,
        item_updates_from_files,
        produce_events,
        produce_raw,
        publish_items,
    )
    from nearline_rec.settings import load_settings

    t0 = time.monotonic()
    started = start_services(lambda msg: click.echo(msg, err=True))
    worker: WorkerProcess | None = None
    try:
        # own topics, group and key prefix: a demo never mixes with earlier runs' data
        os.environ.update(isolated_env(f"demo-{int(time.time())}"))
        s = load_settings()
        work = Path(tempfile.mkdtemp(prefix="nearline-demo-"))
        info = generate_sample(
            work, n_items=2000, n_users=400, n_ratings=n_events, dim=s.items.embedding_dim, seed=7
        )
        click.echo(
            f"sample: {info.n_items} items, {info.n_users} users, {info.n_ratings} "
            f"ratings in {work}",
            err=True,
        )
        ensure_topics(s)
        updates, _ = item_updates_from_files(
            info.movies_path, info.embeddings_path, dim=s.items.embedding_dim
        )
        with Progress(len(updates), "load items", "item") as bar:
            publish_items(s, updates, progress=bar.update)

        worker = WorkerProcess({}, work, loglevel="warning").start()
        worker.wait_ready(timeout=180)

        ratings = read_ratings(info.ratings_path)
        bad = [b"not json", b'{"event_id": "x"}', b"\xff\xfe"]
        t_events = time.monotonic()
        with Progress(len(ratings), "replay events", "ev") as bar:
            produce_events(s, events_from_ratings(ratings), progress=bar.update)
        produce_raw(s, s.topics.user_events, [(b"demo-bad", v) for v in bad])
        total = len(ratings) + len(bad)

        with Progress(total, "worker consumed", "ev") as bar:

            def consumed(st: dict[str, Any]) -> bool:
                n = st.get("counters", {}).get("events_in", 0)
                bar.update(n - bar.n)
                return bool(n >= total)

            worker.wait(consumed, 600, "the worker to consume the events")
        elapsed = time.monotonic() - t_events
        # a replay this fast puts the worker behind: it serves degraded lists, then recomputes
        # every such user once it has caught up; the lists below are the recomputed ones
        worker.wait(
            lambda st: st["mode"] == "normal" and st["dirty_users"] == 0,
            300,
            "the worker to recompute users served degraded lists",
        )
        status = worker.status() or {}
        _report(
            s,
            ratings,
            read_movies(info.movies_path),
            status,
            show_users,
            elapsed,
            time.monotonic() - t0,
        )
    finally:
        if worker is not None:
            worker.stop()
        if started and not keep_services:
            stop_services(started)


def _report(
    s: Any,
    ratings: list[Any],
    movies: list[Any],
    status: dict[str, Any],
    show_users: int,
    elapsed: float,
    wall: float,
) -> None:
    from nearline_rec.storage.redis_store import RedisStore
    from nearline_rec.tools.clitools import format_list

    genres = {m.item_id: m.genres for m in movies}
    per_user: dict[str, Counter[str]] = {}
    for r in ratings:
        if r.rating >= 4.0:
            per_user.setdefault(r.user_id, Counter()).update(genres.get(r.item_id, ()))
    active = Counter(r.user_id for r in ratings).most_common(show_users)

    async def read(users: list[str]) -> list[Any]:
        store = RedisStore(s.redis)
        try:
            return [await store.read_list(u, titles="mirror") for u in users]
        finally:
            await store.close()

    lists = asyncio.run(read([u for u, _ in active]))
    for (user, n), value in zip(active, lists, strict=True):
        liked = ", ".join(g for g, _ in per_user.get(user, Counter()).most_common(3))
        click.echo(f"\n{n} events; liked genres: {liked or '-'}")
        click.echo(format_list(value) if value else f"user {user}: no list in Redis")
        if value:
            hits = sum(
                1
                for i in value["items"]
                if set(genres.get(i["item_id"], ())) & set(per_user.get(user, {}))
            )
            click.echo(f"  {hits}/{len(value['items'])} items share a liked genre")
    c = status.get("counters", {})
    click.echo(
        f"\nsummary: {status.get('items')} items ({status.get('index')} index), "
        f"{c.get('events_in', 0)} events in {elapsed:.1f}s "
        f"({c.get('events_in', 0) / max(elapsed, 1e-9):.0f}/s), "
        f"{c.get('lists_written', 0)} lists written, dead letters: "
        f"{status.get('dead_letters', {})}, total {wall:.0f}s"
    )
    degraded = c.get("lists_degraded", 0)
    if degraded:
        spans = [t for t in status.get("transitions", []) if t["mode"] == "degraded"]
        click.echo(
            f"overload: the replay outran the worker (lag was "
            f"{spans[0]['lag'] if spans else '?'} events when it degraded), so {degraded} lists "
            f"were served from "
            f"the precomputed popularity list; after it caught up, "
            f"{c.get('dirty_recomputed', 0)} users were recomputed in the background"
        )
