"""Where the time goes: pyinstrument profiles of the pipeline's hot path (in-process core at
N items) and of LSH queries at 1M x 64, written as text next to the benchmark results."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Log = Callable[[str], None]


def _profiler() -> Any:
    try:
        from pyinstrument import Profiler
    except ImportError:
        raise SystemExit("error: pyinstrument is missing: pip install -e '.[bench]'") from None
    return Profiler(interval=0.0005)


def profile_pipeline(out: Path, n_items: int, dim: int, n_events: int, log: Log) -> Path:
    from nearline_rec.tools.bench.core import build_processor, raw_batches, run_batches
    from nearline_rec.tools.bench.workload import catalogue

    cat = catalogue(n_items, dim)
    proc = build_processor(cat)
    table: dict[bytes, bytes] = {}
    run_batches(proc, raw_batches(cat, 3000, 20_000, 200, seed=11), table)  # warm
    batches = raw_batches(cat, n_events, 20_000, 200)
    prof = _profiler()
    prof.start()
    times, events, lists = run_batches(proc, batches, table)
    prof.stop()
    path = out / "profile-pipeline.txt"
    head = (
        f"# in-process core, {n_items:,} items x {dim}, {events} events in batches of 200: "
        f"{events / sum(times):.0f} events/s, {lists / sum(times):.0f} lists/s\n"
    )
    path.write_text(head + prof.output_text(unicode=False, color=False))
    log(head.strip())
    return path


def profile_lsh(out: Path, n: int, dim: int, n_queries: int, log: Log) -> Path:
    from nearline_rec.core.lsh import LSHIndex, default_params
    from nearline_rec.tools.bench.lsh_measure import workload

    x, qs = workload(n, dim, n_queries)
    index = LSHIndex(default_params(n, dim))
    index.upsert_many(np.arange(n), x)
    index.search(qs[0], 10)
    prof = _profiler()
    prof.start()
    for q in qs:
        index.search(q, 10)
    prof.stop()
    path = out / "profile-lsh.txt"
    head = f"# LSHIndex.search, {n:,} x {dim}, {n_queries} queries one at a time, k=10\n"
    path.write_text(head + prof.output_text(unicode=False, color=False))
    log(head.strip())
    return path


def run(
    out_dir: Path, *, items: int, dim: int, events: int, lsh_n: int, queries: int, log: Log
) -> list[Path]:
    from nearline_rec.blas import limit_blas_threads

    limit_blas_threads(1)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        profile_pipeline(out_dir, items, dim, events, log),
        profile_lsh(out_dir, lsh_n, 64, queries, log),
    ]
