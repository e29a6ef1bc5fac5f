"""Worker entry point: `faust -A app.worker worker` (or `nearline worker`).

Importing it registers the agents on the App of app.composition; the Runtime (catalogue,
recommender, store, ranker) is built in the worker's start-up hook below. A bad setting,
found either way, is one line (`error: ...`) and exit code 2."""

from __future__ import annotations

import sys
from typing import Any

from app.settings import SettingsError


def _stop(exc: SettingsError) -> None:
    print(f"error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None


try:
    from app.composition import app, runtime
except SettingsError as exc:
    _stop(exc)

import agents.degrade  # noqa: E402  registers the lag monitor and recompute task
import agents.friends  # noqa: E402  registers the user-relations and friend-activity agents
import agents.ingest  # noqa: E402  registers the user-events agent
import agents.items  # noqa: E402  registers the item-updates follower
import agents.views  # noqa: E402,F401  registers the web views
from app.blas import limit_blas_threads  # noqa: E402
from app.core.lsh import warm_up  # noqa: E402

__all__ = ["app"]


@app.on_worker_init.connect
def build_runtime(sender: Any, **kwargs: Any) -> None:
    """The worker starts: the catalogue, recommender and ranker are built now (the store
    connects on first use, on the worker's loop). A bad setting stops it on one line."""
    try:
        runtime()
    except SettingsError as exc:
        _stop(exc)
    # One BLAS thread per worker process: workers scale out by processes, and threaded BLAS
    # on cores shared with Kafka and Redis was 20x slower end to end (see app/blas.py).
    limit_blas_threads(1)
    # The LSH query kernels are compiled (numba) on first use: now, not in the first batch.
    warm_up()
