"""`nearline demo`: the real worker on the built-in sample, end to end, with a short report."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
SERVICES = REPO / "scripts" / "services.sh"


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_services() -> list[str]:
    """Start local Kafka/Redis when none is configured and none answers; return what started."""
    started = []
    wanted = []
    if "NEARLINE_KAFKA__BOOTSTRAP_SERVERS" not in os.environ and not port_open("127.0.0.1", 9092):
        wanted.append("kafka")
    if "NEARLINE_REDIS__URL" not in os.environ and not port_open("127.0.0.1", 6379):
        wanted.append("redis")
    for name in wanted:
        if not SERVICES.exists():
            raise OSError(
                f"{name} is not running and {SERVICES} is missing: start it yourself "
                "or set NEARLINE_KAFKA__BOOTSTRAP_SERVERS / NEARLINE_REDIS__URL"
            )
        click.echo(f"starting local {name} (scripts/services.sh start {name}) ...", err=True)
        subprocess.run(["bash", str(SERVICES), "start", name], check=True)
        started.append(name)
    return started


def stop_services(names: list[str]) -> None:
    for name in names:
        subprocess.run(["bash", str(SERVICES), "stop", name], check=False)


def get_status(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status/", timeout=2) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data
    except (OSError, ValueError):
        return None


def wait_for(pred: Any, proc: subprocess.Popen[bytes], log: Path, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").splitlines()[-15:]
            raise OSError(
                f"worker exited ({proc.returncode}) while waiting for {what}; "
                f"log {log}: " + " | ".join(tail)
            )
        time.sleep(0.5)
    raise OSError(f"timed out after {timeout:.0f}s waiting for {what} (worker log: {log})")


def run_demo(*, show_users: int = 5, n_events: int = 20000, keep_services: bool = False) -> None:
    from app.data.loaders import read_movies, read_ratings
    from app.data.sample import generate_sample
    from app.kafka_clients import ensure_topics
    from app.producer import (
        events_from_ratings,
        item_updates_from_files,
        produce_events,
        produce_raw,
        publish_items,
    )
    from app.settings import load_settings

    t0 = time.monotonic()
    started = start_services()
    proc: subprocess.Popen[bytes] | None = None
    try:
        run = f"demo-{int(time.time())}"
        port = free_port()
        overrides = {
            "NEARLINE_WORKER__APP_ID": run,
            "NEARLINE_WORKER__WEB_PORT": str(port),
            "NEARLINE_TOPICS__USER_EVENTS": f"{run}-user-events",
            "NEARLINE_TOPICS__ITEM_UPDATES": f"{run}-item-updates",
            "NEARLINE_TOPICS__RECOMMENDATIONS": f"{run}-recommendations",
            "NEARLINE_TOPICS__USER_EVENTS_DLQ": f"{run}-user-events-dlq",
            "NEARLINE_TOPICS__ITEM_UPDATES_DLQ": f"{run}-item-updates-dlq",
            "NEARLINE_REDIS__KEY_PREFIX": f"{run}:",
        }
        os.environ.update(overrides)
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
        with tqdm(total=len(updates), desc="load items", file=sys.stderr) as bar:
            publish_items(s, updates, progress=bar.update)

        log = work / "worker.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker", "-l", "warning"],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=dict(os.environ),
            )
        wait_for(
            lambda: (get_status(port) or {}).get("catalog_ready"),
            proc,
            log,
            180,
            "the worker to load the catalog",
        )

        ratings = read_ratings(info.ratings_path)
        bad = [b"not json", b'{"event_id": "x"}', b"\xff\xfe"]
        t_events = time.monotonic()
        with tqdm(total=len(ratings), desc="replay events", file=sys.stderr) as bar:
            produce_events(s, events_from_ratings(ratings), progress=bar.update)
        produce_raw(s, s.topics.user_events, [(b"demo-bad", v) for v in bad])
        total = len(ratings) + len(bad)

        with tqdm(total=total, desc="worker consumed", file=sys.stderr) as bar:

            def consumed() -> bool:
                st = get_status(port) or {}
                n = st.get("counters", {}).get("events_in", 0)
                bar.update(n - bar.n)
                return bool(n >= total)

            wait_for(consumed, proc, log, 600, "the worker to consume the events")
        elapsed = time.monotonic() - t_events
        status = get_status(port) or {}
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
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
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
    from app.cli import format_list
    from app.storage.redis_store import RedisStore

    genres = {m.item_id: m.genres for m in movies}
    per_user: dict[str, Counter[str]] = {}
    for r in ratings:
        if r.rating >= 4.0:
            per_user.setdefault(r.user_id, Counter()).update(genres.get(r.item_id, ()))
    active = Counter(r.user_id for r in ratings).most_common(show_users)

    async def read(users: list[str]) -> list[Any]:
        store = RedisStore(s.redis)
        try:
            return [await store.read_list(u) for u in users]
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
