"""What every `nearline` command shares: one-line errors, the settings, list formatting.

Command modules (nearline_rec.tools.cli, nearline_rec.tools.ops,
nearline_rec.tools.quality.commands, nearline_rec.tools.bench.commands) import this
module; nearline_rec.tools.cli puts their commands on the `nearline` group."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from nearline_rec.settings import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])


def confine_threads(pid: int | str, cpus: set[int]) -> None:
    """As `taskset -a -p`: each thread of process `pid` ("self": this one) to `cpus` (a
    thread that ends meanwhile is skipped)."""
    for thread in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(thread), cpus)


def _expected_errors() -> tuple[type[BaseException], ...]:
    from kafka.errors import KafkaError
    from redis.exceptions import RedisClusterException, RedisError

    from nearline_rec.errors import NearlineError

    return (
        NearlineError,  # bad files, settings, model files, topics: each a one-line message
        KafkaError,
        RedisError,
        RedisClusterException,  # not a RedisError: an unreachable cluster, for one
        OSError,
    )


def one_line_errors(fn: F) -> F:
    """Expected failures print `error: ...` on one line and exit 1; bugs still trace."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _expected_errors() as exc:
            msg = " ".join(str(exc).split()) or type(exc).__name__
            if type(exc).__module__.startswith(("kafka", "redis")):
                msg = f"{type(exc).__name__}: {msg}"
            click.echo(f"error: {msg}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def settings() -> Settings:
    return load_settings()


class OneLineUsage(click.Group):
    """A bad flag or argument is one line too (`error: ...`, exit 2), like a bad file."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(*args, **kwargs)
        except click.UsageError as exc:
            where = f"{exc.ctx.command_path}: " if exc.ctx is not None else ""
            msg = " ".join(exc.format_message().split())
            click.echo(f"error: {where}{msg} (see --help)", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def format_list(value: dict[str, Any], limit: int = 10) -> str:
    head = (
        f"user {value['user_id']}  mode={value['mode']}  version={value['version']}  "
        f"model={value['model_version']}"
    )
    lines = [head]
    for i, item in enumerate(value["items"][:limit], 1):
        score = f" {item['score']:.3f}" if "score" in item else ""
        lines.append(
            f"  {i:2d}. {item.get('title') or item['item_id']:<48.48} "
            f"{item['channel']:<13}{score}".rstrip()
        )
    return "\n".join(lines)
