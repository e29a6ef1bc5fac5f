"""`nearline bench <name>`: each benchmark is one subcommand."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import click

from nearline_rec.extras import require
from nearline_rec.settings import WorkerSettings
from nearline_rec.tools.bench import DEFAULT_OUT
from nearline_rec.tools.clitools import F, one_line_errors


def needs_plot(fn: F) -> F:
    """Fail before a benchmark runs, not after, when its PNG cannot be drawn."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        require("matplotlib", "plot", "a benchmark's PNG")
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@click.group()
def bench() -> None:
    """Benchmarks against real Kafka and Redis (JSON + PNG in scripts/results/)."""


OUT = click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_OUT,
    show_default=True,
    help="Where JSON and PNG go.",
)


@bench.command("store")
@OUT
@click.option("--users", default=1_000_000, show_default=True, type=click.IntRange(100, 10**8))
@click.option("--per-user", default=1, show_default=True, type=click.IntRange(1, 1000))
@click.option(
    "--burst",
    default=20_000,
    show_default=True,
    type=click.IntRange(100, 10**7),
    help="Events of distinct users applied after recovery (events/s).",
)
@click.option(
    "--stores",
    default="memory://,rocksdb://",
    show_default=True,
    help="Comma-separated table stores to compare; `URL@N` also sets the similar-users"
    " directory's NEARLINE_RECALL__SIMILAR_USERS_MAX to N for that run.",
)
@one_line_errors
@needs_plot
def bench_store(out_dir: Path, users: int, per_user: int, burst: int, stores: str) -> None:
    """User state in memory against RocksDB: recovery time, worker memory and events/s,
    with N users' state written into the changelog (a real worker per store)."""
    from nearline_rec.tools.bench.store import run

    names = [x.strip() for x in stores.split(",") if x.strip()]
    bad = [
        x
        for x in names
        if x.split("://")[0] not in ("memory", "rocksdb")
        or not (x.partition("@")[2] or "0").isdigit()
    ]
    if bad or not names:
        raise click.BadParameter(
            f"--stores: {bad or stores!r}: use memory:// and/or rocksdb://, each optionally"
            " with @N (a whole number)"
        )
    run(out_dir, users=users, per_user=per_user, burst=burst, stores=names)
    click.echo(f"wrote {out_dir / 'store.json'} and {out_dir / 'store.png'}")


@bench.command("degrade")
@OUT
@click.option("--events", default=60_000, show_default=True, type=click.IntRange(1000, 10**7))
@click.option("--users", default=5_000, show_default=True, type=click.IntRange(10, 10**7))
@click.option("--lag-high", default=5_000, show_default=True, type=click.IntRange(1))
@click.option("--lag-low", default=500, show_default=True, type=click.IntRange(0))
@click.option("--hold", default=2.0, show_default=True, type=click.FloatRange(0))
@click.option("--timeout", default=300.0, show_default=True, type=click.FloatRange(10))
@one_line_errors
@needs_plot
def bench_degrade(
    out_dir: Path, events: int, users: int, lag_high: int, lag_low: int, hold: float, timeout: float
) -> None:
    """A burst the worker cannot keep up with: lag, mode and throughput over time, with
    degradation vs a never-degrade baseline in the same run."""
    from nearline_rec.tools.bench.degrade import run

    if lag_low >= lag_high:
        raise click.BadParameter("--lag-low must be below --lag-high")
    figures = run(
        out_dir,
        events=events,
        users=users,
        lag_high=lag_high,
        lag_low=lag_low,
        hold=hold,
        timeout=timeout,
    )
    click.echo(json.dumps(figures["summary"], indent=2))
    click.echo(f"wrote {out_dir / 'degrade.json'} and {out_dir / 'degrade.png'}")


def _ints(text: str) -> list[int]:
    try:
        out = [int(float(part)) for part in text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None
    if not out or min(out) <= 0:
        raise click.BadParameter(f"expected positive integers, got {text!r}")
    return out


@bench.command("lsh")
@OUT
@click.option("--sizes", default="100000,1000000", show_default=True, help="Catalogue sizes N.")
@click.option("--dims", default="32,64", show_default=True, help="Embedding dimensions d.")
@click.option("--quick", is_flag=True, help="N = 20k and 100k, fewer queries and passes (~1 min).")
@click.option("--queries", default=500, show_default=True, type=click.IntRange(20, 10_000))
@click.option("--passes", default=3, show_default=True, type=click.IntRange(1, 20))
@click.option("--update-ops", default=10_000, show_default=True, type=click.IntRange(100, 10**6))
@click.option("--no-hnsw", is_flag=True, help="Skip the hnswlib baseline.")
@click.option(
    "--ef",
    "efs",
    default="10,12,16,32,64,128",
    show_default=True,
    help="hnswlib ef values (from k = 10 up, so one reads below LSH's recall to compare at).",
)
@click.option("--ef-construction", default=100, show_default=True, type=click.IntRange(10, 1000))
@click.option(
    "--workload",
    "workloads",
    multiple=True,
    type=click.Choice(["clustered", "few-large", "wide-powerlaw", "movielens"]),
    help="Calibrated index and defaults vs exact and hnswlib on taste-like queries, per"
    " workload (repeatable); without it, the settings sweep on the clustered workload.",
)
@click.option(
    "--embeddings",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Item embeddings for --workload movielens (from nearline train-embeddings).",
)
@click.option("--calibration-budget", default=60.0, show_default=True, type=click.FloatRange(1))
@click.option("--target-recall", default=0.95, show_default=True, type=click.FloatRange(0, 1))
@click.option("--tag", default="workloads", show_default=True, help="Output: lsh-TAG.json/png.")
@one_line_errors
@needs_plot
def bench_lsh(
    out_dir: Path,
    sizes: str,
    dims: str,
    quick: bool,
    queries: int,
    passes: int,
    update_ops: int,
    no_hnsw: bool,
    efs: str,
    ef_construction: int,
    workloads: tuple[str, ...],
    embeddings: Path | None,
    calibration_budget: float,
    target_recall: float,
    tag: str,
) -> None:
    """LSH vs exact numpy brute force vs hnswlib: recall@10, queries/s (single and batched),
    build time, insert/move/delete rate, memory; recall-vs-speed plot. With --workload: the
    calibrated index and the defaults on each workload (lsh-TAG.json)."""
    from nearline_rec.tools.bench.lsh import run
    from nearline_rec.tools.bench.lsh_workloads import run_workloads

    size_list, dim_list = _ints(sizes), _ints(dims)
    if workloads:
        if "movielens" in workloads and embeddings is None:
            raise click.BadParameter("--workload movielens needs --embeddings FILE")
        figures = run_workloads(
            out_dir,
            workloads=list(workloads),
            sizes=size_list,
            dims=dim_list,
            embeddings=embeddings,
            n_queries=queries,
            passes=passes,
            hnsw=not no_hnsw,
            hnsw_efs=_ints(efs),
            ef_construction=ef_construction,
            calibration_budget_s=calibration_budget,
            target=target_recall,
            tag=tag,
            log=lambda m: click.echo(m, err=True),
        )
        click.echo(json.dumps(figures["summary"], indent=2))
        click.echo(f"wrote {out_dir / f'lsh-{tag}.json'} and {out_dir / f'lsh-{tag}.png'}")
        return
    if quick:
        size_list, queries, passes, update_ops = [20_000, 100_000], min(queries, 200), 2, 2000
    figures = run(
        out_dir,
        sizes=size_list,
        dims=dim_list,
        n_queries=queries,
        passes=passes,
        update_ops=update_ops,
        hnsw=not no_hnsw,
        hnsw_efs=_ints(efs),
        ef_construction=ef_construction,
        budget_s=60.0,
        log=lambda m: click.echo(m, err=True),
    )
    click.echo(json.dumps(figures["summary"], indent=2))
    click.echo(f"wrote {out_dir / 'lsh.json'} and {out_dir / 'lsh.png'}")


@bench.command("serve")
@OUT
@click.option(
    "--seconds",
    default=4.0,
    show_default=True,
    type=click.FloatRange(1, 120),
    help="Length of each measured round.",
)
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1, 20))
@click.option("--users", default=1000, show_default=True, type=click.IntRange(10, 1_000_000))
@click.option("--connections", default="1,16,128,512", show_default=True)
@click.option("--processes", default="1,2", show_default=True, help="serve process counts.")
@click.option("--burst", default=15_000, show_default=True, type=click.IntRange(1000, 10**7))
@click.option("--paced-share", default=0.3, show_default=True, type=click.FloatRange(0.01, 2))
@click.option(
    "--ratings",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A real ratings log (MovieLens ratings.csv or u.data): its users' lists are read"
    " (--users is then their number) and its later ratings are the worker's bursts.",
)
@click.option(
    "--movies",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Its movies file (movies.csv or u.item); with --ratings.",
)
@one_line_errors
@needs_plot
def bench_serve(
    out_dir: Path,
    seconds: float,
    repeats: int,
    users: int,
    connections: str,
    processes: str,
    burst: int,
    paced_share: float,
    ratings: Path | None,
    movies: Path | None,
) -> None:
    """`nearline serve` under 1..512 connections (wrk) vs bare Redis GET (redis-benchmark)
    at the same concurrency, 1 and 2 processes; p99 with 128 connections paced to
    --paced-share of bare Redis's req/s; the worker's events/s draining --burst events with
    and without that read load; how long a changed list stays stale in the cache."""
    from nearline_rec.tools.bench.serve import run

    if (ratings is None) != (movies is None):
        raise click.UsageError("--ratings and --movies go together")
    figures = run(
        out_dir,
        ratings=ratings,
        movies=movies,
        seconds=seconds,
        repeats=repeats,
        users=users,
        connections=_ints(connections),
        processes=_ints(processes),
        burst=burst,
        paced_share=paced_share,
        log=lambda m: click.echo(m, err=True),
    )
    shown = ("targets_128", "worker_events_per_s", "staleness_ms", "loadavg_after")
    summary = {k: figures[k] for k in shown}
    click.echo(json.dumps(summary, indent=2))
    click.echo(f"wrote {out_dir / 'serve.json'} and {out_dir / 'serve.png'}")


@bench.command("pipeline")
@OUT
@click.option("--items", "n_items", default=100_000, show_default=True, type=click.IntRange(1000))
@click.option("--dim", default=64, show_default=True, type=click.IntRange(2, 1024))
@click.option("--users", default=20_000, show_default=True, type=click.IntRange(10))
@click.option("--events", "n_events", default=40_000, show_default=True, type=click.IntRange(1000))
@click.option("--paced-seconds", default=20.0, show_default=True, type=click.FloatRange(2, 600))
@click.option(
    "--batch-size",
    default=WorkerSettings.model_fields["batch_size"].default,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Micro-batch size of the workers (the worker default).",
)
@click.option("--partitions", default=4, show_default=True, type=click.IntRange(1, 64))
@click.option("--core-events", default=10_000, show_default=True, type=click.IntRange(500))
@click.option("--no-scale", is_flag=True, help="Skip the one-vs-two-processes runs.")
@click.option("--timeout", default=300.0, show_default=True, type=click.FloatRange(10))
@click.option(
    "--model",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A learned ranker (.onnx with its card): also run the worker and the core with it "
    "(NEARLINE_RANKING__MODEL_PATH) beside the built-in linear ranker, in --rounds "
    "alternating rounds.",
)
@click.option("--rounds", default=2, show_default=True, type=click.IntRange(1, 10))
@one_line_errors
@needs_plot
def bench_pipeline(
    out_dir: Path,
    n_items: int,
    dim: int,
    users: int,
    n_events: int,
    paced_seconds: float,
    batch_size: int,
    partitions: int,
    core_events: int,
    no_scale: bool,
    timeout: float,
    model: Path | None,
    rounds: int,
) -> None:
    """Events/s per worker process end to end on real Kafka + Redis, lists/s, freshness
    p50/p99 at half that rate, one vs two processes; baselines: a bare consumer of the same
    topic and the in-process core. With --model, the same with a learned ONNX ranker beside
    the linear one, and the ranking stage's share of the time."""
    from nearline_rec.tools.bench.pipeline import run

    figures = run(
        out_dir,
        n_items=n_items,
        dim=dim,
        n_users=users,
        n_events=n_events,
        paced_seconds=paced_seconds,
        batch_size=batch_size,
        partitions=partitions,
        core_events=core_events,
        scale=not no_scale,
        timeout=timeout,
        model=model,
        rounds=rounds,
        log=lambda m: click.echo(m, err=True),
    )
    click.echo(json.dumps(figures["summary"], indent=2))
    click.echo(f"wrote {out_dir / 'pipeline.json'} and {out_dir / 'pipeline.png'}")


@bench.command("replay")
@OUT
@click.option(
    "--ratings",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A ratings file `nearline evaluate` reads (MovieLens ratings.csv or u.data).",
)
@click.option(
    "--movies",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Its movies file (movies.csv or u.item).",
)
@click.option(
    "--embeddings",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Item vectors to load instead of training them on the earliest 80% of the ratings.",
)
@click.option(
    "--model",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A learned ranker (.onnx with its card), run beside the built-in linear ranker.",
)
@click.option("--rounds", default=2, show_default=True, type=click.IntRange(1, 10))
@click.option(
    "--dim",
    default=32,
    show_default=True,
    type=click.IntRange(2, 1024),
    help="Dimension of the trained item vectors (must be that of --embeddings when given).",
)
@click.option(
    "--batch-size",
    default=WorkerSettings.model_fields["batch_size"].default,
    show_default=True,
    type=click.IntRange(1, 10_000),
)
@click.option("--partitions", default=4, show_default=True, type=click.IntRange(1, 64))
@click.option("--paced-seconds", default=10.0, show_default=True, type=click.FloatRange(2, 600))
@click.option("--timeout", default=300.0, show_default=True, type=click.FloatRange(10))
@one_line_errors
@needs_plot
def bench_replay(
    out_dir: Path,
    ratings: Path,
    movies: Path,
    embeddings: Path | None,
    model: Path | None,
    rounds: int,
    dim: int,
    batch_size: int,
    partitions: int,
    paced_seconds: float,
    timeout: float,
) -> None:
    """The worker end to end on a real ratings log replayed as the event stream: events/s,
    lists/s and freshness p99 of one process, with the linear and (--model) the learned
    ranker; baseline: a bare consumer of the same topic."""
    require("scipy", "quality", "training the item vectors")
    from nearline_rec.tools.bench.replay import run

    figures = run(
        out_dir,
        ratings=ratings,
        movies=movies,
        embeddings=embeddings,
        model=model,
        rounds=rounds,
        dim=dim,
        batch_size=batch_size,
        partitions=partitions,
        paced_seconds=paced_seconds,
        timeout=timeout,
        log=lambda m: click.echo(m, err=True),
    )
    click.echo(json.dumps(figures["summary"], indent=2))
    click.echo(f"wrote {out_dir / 'replay.json'} and {out_dir / 'replay.png'}")


@bench.command("memory")
@OUT
@click.option("--index-sizes", default="100000,1000000", show_default=True)
@click.option("--dims", default="32,64", show_default=True)
@click.option("--catalog-items", default=100_000, show_default=True, type=click.IntRange(1000))
@click.option("--users", default=100_000, show_default=True, type=click.IntRange(100))
@click.option("--events-per-user", default=10, show_default=True, type=click.IntRange(1, 1000))
@one_line_errors
@needs_plot
def bench_memory(
    out_dir: Path,
    index_sizes: str,
    dims: str,
    catalog_items: int,
    users: int,
    events_per_user: int,
) -> None:
    """Bytes per item in the index and catalogue, per user in Redis (MEMORY USAGE) and in the
    worker; 1M users extrapolated from the measured count."""
    from nearline_rec.tools.bench.memory import run

    figures = run(
        out_dir,
        index_sizes=_ints(index_sizes),
        dims=_ints(dims),
        catalog_items=catalog_items,
        users=users,
        events_per_user=events_per_user,
        log=lambda m: click.echo(m, err=True),
    )
    click.echo(json.dumps(figures["summary"], indent=2))
    click.echo(f"wrote {out_dir / 'memory.json'} and {out_dir / 'memory.png'}")


@bench.command("profile")
@OUT
@click.option("--items", default=100_000, show_default=True, type=click.IntRange(1000))
@click.option("--dim", default=64, show_default=True, type=click.IntRange(2, 1024))
@click.option("--events", default=6000, show_default=True, type=click.IntRange(200))
@click.option("--lsh-items", default=1_000_000, show_default=True, type=click.IntRange(1000))
@click.option("--queries", default=2000, show_default=True, type=click.IntRange(10))
@one_line_errors
def bench_profile(
    out_dir: Path, items: int, dim: int, events: int, lsh_items: int, queries: int
) -> None:
    """pyinstrument profiles of the in-process pipeline and of LSH queries (text files)."""
    from nearline_rec.tools.bench.profile import run

    for path in run(
        out_dir,
        items=items,
        dim=dim,
        events=events,
        lsh_n=lsh_items,
        queries=queries,
        log=lambda m: click.echo(m, err=True),
    ):
        click.echo(f"wrote {path}")


@bench.command("friends")
@OUT
@click.option("--plays", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="HetRec user_artists.dat (user TAB item TAB weight).")  # fmt: skip
@click.option("--relations", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="HetRec user_friends.dat (follower TAB followee).")  # fmt: skip
@click.option("--events", default=4000, show_default=True, type=click.IntRange(100, 10**6))
@click.option("--batch", default=500, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1, 50))
@one_line_errors
@needs_plot
def bench_friends(
    out_dir: Path, plays: Path, relations: Path, events: int, batch: int, repeats: int
) -> None:
    """Fan-out on write vs on read for the friends channel: events/s against a baseline
    without the graph, Redis and state bytes per user (Redis for the read side)."""
    from nearline_rec.tools.bench.friends import run
    from nearline_rec.tools.clitools import settings

    summary = run(
        out_dir, settings(), plays, relations, events=events, batch=batch, repeats=repeats
    )
    click.echo(json.dumps(summary, indent=2))
    click.echo(f"wrote {out_dir / 'friends-fanout.json'} and {out_dir / 'friends-fanout.png'}")
