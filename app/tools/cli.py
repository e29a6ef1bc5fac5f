"""The `nearline` command: worker, data loading, replay, inspection and the sample demo."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from nearline_rec.errors import ConfigurationError
from nearline_rec.settings import (
    Settings,
    SettingsError,
    cpu_list,
    iter_setting_docs,
    secret_setting_names,
)
from nearline_rec.tools.bench.commands import bench
from nearline_rec.tools.clitools import (
    OneLineUsage,
    confine_threads,
    format_list,
    one_line_errors,
    settings,
)
from nearline_rec.tools.ops import COMMANDS as OPS_COMMANDS
from nearline_rec.tools.quality.commands import COMMANDS as QUALITY_COMMANDS

__all__ = ["format_list", "main", "one_line_errors", "settings"]


@click.group(cls=OneLineUsage, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """nearline-rec: a streaming nearline recommendation worker (Faust + Kafka + Redis)."""


LOGLEVEL = click.option(
    "--loglevel",
    "-l",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)


@main.command()
@LOGLEVEL
@one_line_errors
def worker(loglevel: str) -> None:
    """Run a worker (as `faust -A nearline_rec.worker worker`); creates missing topics first."""
    from nearline_rec.kafka_clients import ensure_topics
    from nearline_rec.storage.redis_store import check_access

    s = settings()
    _pin("NEARLINE_WORKER__CPUS", s.worker.cpus)  # before Faust starts its threads
    check_access(s.redis)  # wrong credentials or certificate: one line now, not endless retries
    created = ensure_topics(s)
    if created:
        click.echo(f"created topics: {', '.join(created)}", err=True)
    from nearline_rec.worker import app

    faust_level = {"warning": "warn"}.get(loglevel, loglevel)  # Faust's own spelling
    sys.argv = [
        "nearline",
        "worker",
        "--loglevel",
        faust_level,
        "--web-host",
        s.worker.web_host,
        "--web-bind",
        s.worker.web_host,
        "--web-port",
        str(s.worker.web_port),
    ]
    app.main()


@main.command()
@click.option("--host", default=None, help="Address (default NEARLINE_SERVE__HOST).")
@click.option("--port", default=None, type=click.IntRange(1, 65535), help="NEARLINE_SERVE__PORT.")
@click.option(
    "--processes",
    default=None,
    type=click.IntRange(0, 256),
    help="NEARLINE_SERVE__PROCESSES (0: one per CPU it may run on).",
)
@LOGLEVEL
@one_line_errors
def serve(host: str | None, port: int | None, processes: int | None, loglevel: str) -> None:
    """Serve users' lists over HTTP: stateless read-only processes on one port (no consumer)."""
    import logging

    from nearline_rec.security import serve_cleartext_token
    from nearline_rec.storage.redis_store import check_access

    # the processes it forks read their settings from the environment
    for name, value in (("HOST", host), ("PORT", port), ("PROCESSES", processes)):
        if value is not None:
            os.environ[f"NEARLINE_SERVE__{name}"] = str(value)
    s = settings()
    check_access(s.redis)  # wrong credentials: one line now (a down Redis is served around)
    if warning := serve_cleartext_token(s):
        logging.getLogger("nearline.security").warning("%s", warning)
    from nearline_rec.serve_http import run

    if s.serve.nice:
        os.nice(s.serve.nice)  # the pre-forked processes inherit it
    if s.serve.sched_idle:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # inherited too
    cpus = _pin("NEARLINE_SERVE__CPUS", s.serve.cpus)  # inherited too
    processes = s.serve.processes or len(os.sched_getaffinity(0))
    click.echo(
        f"serving on http://{s.serve.host}:{s.serve.port} with {processes} process(es)"
        + (f" at nice +{s.serve.nice}" if s.serve.nice else "")
        + (" under SCHED_IDLE" if s.serve.sched_idle else "")
        + (f" on CPUs {s.serve.cpus}" if cpus else ""),
        err=True,
    )
    run(s, host=s.serve.host, port=s.serve.port, processes=processes, loglevel=loglevel)


def _pin(name: str, text: str) -> set[int]:
    """Confine this process (and what it starts) to the CPUs of setting `name`: each of
    its threads (the math library starts its own at import), as `taskset -a` would."""
    cpus = cpu_list(text)
    if cpus:
        try:
            confine_threads("self", cpus)
        except OSError as exc:
            raise ConfigurationError(
                f"{name}={text}: {exc.strerror} (this host has CPUs "
                f"{sorted(os.sched_getaffinity(0))})"
            ) from None
    return cpus


@main.command("init-topics")
@one_line_errors
def init_topics() -> None:
    """Create every topic with the configured partitions (idempotent)."""
    from nearline_rec.kafka_clients import ensure_topics

    created = ensure_topics(settings())
    click.echo(f"created: {', '.join(created) if created else 'nothing (all exist)'}")


@main.command("rebuild-lists")
@one_line_errors
def rebuild_lists() -> None:
    """Make every user's list again from the workers' state (after Redis lost data).

    Running workers notice within a lag check, write the item mirror and code registry
    first, then recompute their users at NEARLINE_DEGRADE__RECOMPUTE_RATE a second while
    events keep flowing; /status/ shows last_rebuild and dirty_users. Workers also do this
    by themselves when they see the code registry gone."""
    import asyncio
    import uuid

    from nearline_rec.storage.redis_store import RedisStore

    token = f"{uuid.uuid4().hex}"

    async def request() -> None:
        store = RedisStore(settings().redis)
        try:
            await store.request_rebuild(token)
        finally:
            await store.close()

    asyncio.run(request())
    click.echo(f"rebuild requested ({token}); workers start within a lag check")


@main.command("grow-partitions")
@click.argument("total", type=click.IntRange(2, 10_000))
@one_line_errors
def grow_partitions_cmd(total: int) -> None:
    """Grow user-events and the user-state changelog to TOTAL partitions, together.

    Running workers see the new partitions within NEARLINE_WORKER__METADATA_MAX_AGE and
    take them in a rebalance; users whose key now hashes to a new partition carry on there
    (idempotence is per partition). Set NEARLINE_TOPICS__PARTITIONS to TOTAL too, so new
    deployments create the topics alike."""
    from nearline_rec.kafka_clients import grow_partitions

    s = settings()
    before = grow_partitions(s, total)
    click.echo(
        ", ".join(f"{name}: {n} -> {total}" for name, n in before.items())
        + f"; set NEARLINE_TOPICS__PARTITIONS={total} for new deployments"
    )


@main.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--items", "n_items", default=2000, show_default=True, type=click.IntRange(10))
@click.option("--users", "n_users", default=600, show_default=True, type=click.IntRange(1))
@click.option("--ratings", "n_ratings", default=40000, show_default=True, type=click.IntRange(1))
@click.option("--dim", default=32, show_default=True, type=click.IntRange(2, 4096))
@click.option("--seed", default=7, show_default=True, type=int)
@one_line_errors
def sample(out_dir: Path, n_items: int, n_users: int, n_ratings: int, dim: int, seed: int) -> None:
    """Write a seeded sample: movies.csv, ratings.csv, embeddings.txt, truth.json."""
    from nearline_rec.data.sample import generate_sample

    info = generate_sample(
        out_dir,
        n_items=n_items,
        n_users=n_users,
        n_ratings=n_ratings,
        dim=dim,
        seed=seed,
        progress=True,
    )
    click.echo(
        f"wrote {info.n_items} items, {info.n_users} users, {info.n_ratings} ratings "
        f"(dim {info.dim}) to {info.out_dir}"
    )


@main.command("load-items")
@click.option(
    "--movies",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="MovieLens movies.csv (movieId,title,genres).",
)
@click.option(
    "--embeddings",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="item2vec text (<id>:<v1> <v2> ...), CSV (id,v1,...), or .npy with --ids.",
)
@click.option(
    "--ids",
    type=click.Path(dir_okay=False, path_type=Path),
    help="One id per line, for a .npy matrix.",
)
@one_line_errors
def load_items(movies: Path, embeddings: Path, ids: Path | None) -> None:
    """Check the files, then publish every item to the item-updates topic."""
    from nearline_rec.kafka_clients import ensure_topics
    from nearline_rec.producer import item_updates_from_files, publish_items
    from nearline_rec.progress import Progress

    s = settings()
    updates, unmatched = item_updates_from_files(
        movies, embeddings, dim=s.items.embedding_dim, ids_path=ids
    )
    ensure_topics(s)
    with Progress(len(updates), "items", "item") as bar:
        n = publish_items(s, updates, progress=bar.update)
    click.echo(
        f"published {n} items to {s.topics.item_updates}"
        + (
            f"; {len(unmatched)} movies have no embedding: kept for the genre, trending and "
            "newest channels"
            if unmatched
            else ""
        )
    )


@main.command("load-relations")
@click.argument("pairs", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--remove", is_flag=True, help="Publish unfollows instead of follows.")
@click.option("--both-ways", is_flag=True, help="Each pair is a friendship: follow both ways.")
@click.option(
    "--timestamp",
    type=click.FloatRange(0),
    help="Time of the changes (unix s; default: now). The last change of an edge wins.",
)
@one_line_errors
def load_relations(pairs: Path, remove: bool, both_ways: bool, timestamp: float | None) -> None:
    """Check a friends file (follower, followee per line; tab or comma), then publish it to
    the user-relations topic."""
    import time

    from nearline_rec.data.loaders import read_pairs
    from nearline_rec.kafka_clients import ensure_topics
    from nearline_rec.producer import publish_relations, relations_from_pairs
    from nearline_rec.progress import Progress

    s = settings()
    action = "remove" if remove else "add"
    when = time.time() if timestamp is None else timestamp
    rels = relations_from_pairs(
        read_pairs(pairs), action=action, timestamp=when, both_ways=both_ways
    )
    ensure_topics(s)
    with Progress(len(rels), "relations", "rel") as bar:
        n = publish_relations(s, rels, progress=bar.update)
    click.echo(f"published {n} relations ({action}) to {s.topics.user_relations}")


@main.command()
@click.argument("ratings", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--rate",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Events per second (0 = as fast as possible).",
)
@click.option("--limit", default=0, type=click.IntRange(0), help="Stop after N events (0 = all).")
@one_line_errors
def replay(ratings: Path, rate: float, limit: int) -> None:
    """Produce a MovieLens ratings file onto user-events, in file order."""
    import itertools

    from nearline_rec.data.loaders import LoadError, read_ratings
    from nearline_rec.kafka_clients import ensure_topics
    from nearline_rec.producer import events_from_ratings, produce_events
    from nearline_rec.progress import Progress

    s = settings()
    rows = read_ratings(ratings)  # whole file checked before the first event is produced
    if not rows:
        raise LoadError(ratings, None, "no ratings after the header")
    if limit:
        rows = rows[:limit]
    ensure_topics(s)
    with Progress(len(rows), "events", "ev") as bar:
        n = produce_events(
            s,
            itertools.islice(events_from_ratings(rows), len(rows)),
            rate=rate,
            progress=bar.update,
        )
    click.echo(f"produced {n} events to {s.topics.user_events}")


@main.command()
@click.argument("user_id")
@click.option("--json", "as_json", is_flag=True, help="Print the decoded list as JSON.")
@one_line_errors
def recs(user_id: str, as_json: bool) -> None:
    """Show a user's list as stored in Redis, with the channel of each item (titles from
    the item mirror in Redis; scores are not stored there)."""
    import asyncio

    from nearline_rec.storage.redis_store import RedisStore

    async def read() -> dict[str, Any] | None:
        store = RedisStore(settings().redis)
        try:
            return await store.read_list(user_id, titles="mirror")
        finally:
            await store.close()

    value = asyncio.run(read())
    if value is None:
        click.echo(f"error: no list in Redis for user {user_id!r}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(value, indent=2))
        return
    click.echo(format_list(value))


@main.command()
@click.argument("mode", type=click.Choice(["on", "off", "auto"]))
@one_line_errors
def degrade(mode: str) -> None:
    """Force degraded mode on every worker (on), force normal (off), or follow lag (auto)."""
    import asyncio

    from nearline_rec.core.modes import ModeOverride
    from nearline_rec.storage.redis_store import RedisStore

    value = {"on": ModeOverride.DEGRADED, "off": ModeOverride.NORMAL, "auto": ModeOverride.AUTO}[
        mode
    ]

    async def write() -> None:
        store = RedisStore(settings().redis)
        try:
            await store.write_override(value)
        finally:
            await store.close()

    asyncio.run(write())
    click.echo(f"mode override set to {value}; workers apply it within one lag check")


@main.command("tune-lsh")
@click.option(
    "--embeddings",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Embedding file to tune on (default: the catalog mirrored in Redis).",
)
@click.option("--ids", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-k", default=10, show_default=True, type=click.IntRange(1, 1000))
@click.option(
    "--queries",
    type=click.IntRange(10, 100000),
    help="Calibration queries (default NEARLINE_LSH__CALIBRATION_QUERIES).",
)
@click.option(
    "--target-recall",
    type=click.FloatRange(0, 1, min_open=True),
    help="Default NEARLINE_LSH__TARGET_RECALL.",
)
@click.option(
    "--budget",
    type=click.FloatRange(1),
    help="Seconds (default NEARLINE_LSH__CALIBRATION_BUDGET_SECONDS).",
)
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path))
@one_line_errors
def tune_lsh(
    embeddings: Path | None,
    ids: Path | None,
    k: int,
    queries: int | None,
    target_recall: float | None,
    budget: float | None,
    json_out: Path | None,
) -> None:
    """Calibrate the LSH index on the catalog as the worker does: recall@K against exact
    search on taste-like queries, the setting chosen (or exact search) and why."""
    import numpy as np

    from nearline_rec.core.lsh.calibrate import calibrate, describe
    from nearline_rec.factory import build_recommender

    s = settings()
    if embeddings is not None:
        from nearline_rec.data.loaders import read_embeddings

        _, matrix = read_embeddings(embeddings, ids_path=ids, expected_dim=s.items.embedding_dim)
    else:
        matrix = _catalog_from_redis(s)
    matrix = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    matrix = matrix.astype(np.float32)
    catalog = build_recommender(s).catalog
    config = dataclasses.replace(
        catalog.calibration_config(
            target_recall=target_recall or s.lsh.target_recall,
            queries=queries or s.lsh.calibration_queries,
            budget_seconds=budget or s.lsh.calibration_budget_seconds,
            memory_ratio=s.lsh.memory_ratio,
            k=k,
        ),
        base=catalog.config.params_for(len(matrix), matrix.shape[1]),
    )
    cal = calibrate(np.arange(len(matrix)), matrix, config, log=lambda m: click.echo(m, err=True))
    click.echo(
        f"{'w':>6} {'m':>3} {'L':>4} {'probes':>6} {'keep':>5} {'cap':>5} "
        f"{'recall@' + str(k):>10} {'cands':>8} {'cost us':>8} {'mem/raw':>7}"
    )
    for t in sorted(cal.trials, key=lambda t: t.cost_us):
        p = t.params
        mark = "  <- chosen" if p == cal.params else ""
        click.echo(
            f"{p.w:6.2f} {p.m:3d} {p.L:4d} {p.probes:6d} {p.sketch_keep:5d} {p.max_candidates:5d} "
            f"{t.recall:10.3f} {t.candidates:8.0f} {t.cost_us:8.1f} "
            f"{t.memory_bytes / cal.raw_bytes:7.2f}{mark}"
        )
    sm = cal.summary()
    click.echo(
        f"\n{'exact search' if cal.exact else 'LSH'}: {cal.reason}\n"
        f"measured recall@{k} {cal.recall:.3f} on {cal.heldout_queries} held-out taste queries"
        f" (target {cal.target}, {'met' if cal.meets_target else 'NOT met'}); "
        f"{sm['qps']:.0f} q/s against exact {sm['exact_qps']:.0f} q/s, one query at a time; "
        f"memory {sm['memory_vs_raw']}x the raw vectors; {len(cal.trials)} settings, "
        f"{cal.builds} builds, {cal.seconds:.1f} s on {len(matrix)} items"
    )
    if cal.params is not None:
        p = cal.params
        click.echo(
            f"the worker calibrates itself (NEARLINE_LSH__CALIBRATE); to pin this setting: "
            f"NEARLINE_LSH__W={p.w} NEARLINE_LSH__M={p.m} NEARLINE_LSH__TABLES={p.L} "
            f"NEARLINE_LSH__PROBES={p.probes}"
        )
    if json_out:
        doc = {
            **sm,
            "trials": [
                {
                    **describe(t.params),
                    "recall": t.recall,
                    "candidates": t.candidates,
                    "cost_us": t.cost_us,
                    "memory_bytes": t.memory_bytes,
                }
                for t in cal.trials
            ],
        }
        json_out.write_text(json.dumps(doc, indent=2))


def _catalog_from_redis(s: Settings) -> Any:
    import numpy as np
    import redis

    from nearline_rec.storage import keys
    from nearline_rec.storage.redis_store import decode_vector

    client = redis.Redis.from_url(
        s.redis.url,
        username=s.redis.username,
        password=s.redis.password.get_secret_value() if s.redis.password else None,
    )
    ids = sorted(m.decode() for m in client.smembers(keys.items_index(s.redis.key_prefix)))
    if not ids:
        raise SettingsError(
            "no items in Redis: run `nearline load-items` and a worker first, "
            "or pass --embeddings FILE"
        )
    pipe = client.pipeline()
    for item_id in ids:
        pipe.hget(keys.item(s.redis.key_prefix, item_id), "vec")
    rows = [decode_vector(v) for v in pipe.execute() if v]  # empty: no vector, or deleted
    return np.vstack(rows)


@main.command("settings")
@click.option("--markdown", is_flag=True, help="Print the settings table of docs/settings.md.")
def show_settings(markdown: bool) -> None:
    """List every setting with its environment variable and default."""
    from nearline_rec.security import MASK, mask_secrets

    rows = iter_setting_docs()
    if markdown:
        click.echo("| variable | default | meaning |\n|---|---|---|")
        for env, default, doc in rows:
            click.echo(f"| `{env}` | `{mask_secrets(default)}` | {doc} |")
        return
    secret = secret_setting_names()
    given = {name.upper(): value for name, value in os.environ.items()}  # names ignore case
    for env, default, doc in rows:
        current = given.get(env)
        shown = default if current is None else MASK if env in secret else current
        # any URL-ish value may hold a password (redis://user:pw@host, ?password=)
        click.echo(f"{env}={mask_secrets(shown)}  # {doc}")


@main.command()
@click.option("--users", "show_users", default=5, show_default=True, type=click.IntRange(1, 100))
@click.option("--events", "n_events", default=20000, show_default=True, type=click.IntRange(100))
@click.option("--keep-services", is_flag=True, help="Leave services the demo started running.")
@one_line_errors
def demo(show_users: int, n_events: int, keep_services: bool) -> None:
    """Run the worker on the built-in sample and print a few users' lists."""
    from nearline_rec.tools.demo import run_demo

    run_demo(show_users=show_users, n_events=n_events, keep_services=keep_services)


# Commands defined in their own modules, which import nearline_rec.tools.clitools and never this
# module.
for _command in (*OPS_COMMANDS, *QUALITY_COMMANDS, bench):
    main.add_command(_command)


if __name__ == "__main__":
    main()
