"""`nearline bench <name>`: each benchmark is one subcommand."""

from __future__ import annotations

import json
from pathlib import Path

import click

from app.bench import DEFAULT_OUT
from app.cli import bench, one_line_errors

OUT = click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_OUT,
    show_default=True,
    help="Where JSON and PNG go.",
)


@bench.command("degrade")
@OUT
@click.option("--events", default=60_000, show_default=True, type=click.IntRange(1000, 10**7))
@click.option("--users", default=5_000, show_default=True, type=click.IntRange(10, 10**7))
@click.option("--lag-high", default=5_000, show_default=True, type=click.IntRange(1))
@click.option("--lag-low", default=500, show_default=True, type=click.IntRange(0))
@click.option("--hold", default=2.0, show_default=True, type=click.FloatRange(0))
@click.option("--timeout", default=300.0, show_default=True, type=click.FloatRange(10))
@one_line_errors
def bench_degrade(
    out_dir: Path, events: int, users: int, lag_high: int, lag_low: int, hold: float, timeout: float
) -> None:
    """A burst the worker cannot keep up with: lag, mode and throughput over time, with
    degradation vs a never-degrade baseline in the same run."""
    from app.bench.degrade import run

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
@click.option("--ef", "efs", default="16,32,64,128", show_default=True, help="hnswlib ef values.")
@click.option("--ef-construction", default=100, show_default=True, type=click.IntRange(10, 1000))
@one_line_errors
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
) -> None:
    """LSH vs exact numpy brute force vs hnswlib: recall@10, queries/s (single and batched),
    build time, insert/move/delete rate, memory; recall-vs-speed plot."""
    from app.bench.lsh import run

    size_list, dim_list = _ints(sizes), _ints(dims)
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
