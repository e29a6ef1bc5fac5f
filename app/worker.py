"""Worker entry point: `faust -A app.worker worker` (or `nearline worker`)."""

from __future__ import annotations

import agents.degrade  # noqa: F401,E402  registers the lag monitor and recompute task
import agents.friends  # noqa: F401,E402  registers the user-relations and friend-activity agents
import agents.ingest  # noqa: F401,E402  registers the user-events agent
import agents.items  # noqa: F401,E402  registers the item-updates follower
import agents.views  # noqa: F401,E402  registers the web views
from app.blas import limit_blas_threads  # noqa: E402
from app.core.lsh import warm_up  # noqa: E402
from app.runtime import app  # noqa: F401  (the faust.App, built once from settings)

# One BLAS thread per worker process: workers scale out by processes, and threaded BLAS on
# cores shared with Kafka and Redis was 20x slower end to end (see app/blas.py).
limit_blas_threads(1)

# The LSH query kernels are compiled (numba) on first use: do it now, not in the first batch.
warm_up()
