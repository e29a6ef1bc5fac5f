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
