"""Worker entry point: `faust -A nearline_rec.worker worker` (or `nearline worker`).

Importing it registers the agents on the App of nearline_rec.composition; the Runtime (catalogue,
recommender, store, ranker) is built in the worker's start-up hook below. A bad setting,
found either way, is one line (`error: ...`) and exit code 2."""

from __future__ import annotations

import sys
from typing import Any

from nearline_rec.settings import SettingsError


def _stop(exc: SettingsError) -> None:
    print(f"error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None


try:
    from nearline_rec.composition import app, runtime
except SettingsError as exc:
    _stop(exc)

import nearline_rec.agents.degrade  # noqa: E402  registers the lag monitor and recompute task
import nearline_rec.agents.friends  # noqa: E402  registers the user-relations and friend-activity agents
import nearline_rec.agents.ingest  # noqa: E402  registers the user-events agent
import nearline_rec.agents.items  # noqa: E402  registers the item-updates follower
import nearline_rec.agents.views  # noqa: E402,F401  registers the web views
from nearline_rec.blas import limit_blas_threads  # noqa: E402
from nearline_rec.core.lsh import warm_up  # noqa: E402

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
