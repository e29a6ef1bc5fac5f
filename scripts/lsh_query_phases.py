"""Where one compiled LSH query spends its time, phase by phase (hash, probe keys, delta, gather +
dedupe + sketch cut + re-rank, re-rank alone, keys + top-k), on a synthetic workload at a given
setting: medians over taste queries, each phase called on its own through the kernels that
`LSHIndex.search` chains. The figures show where to optimise; they are not a benchmark (no
baseline: compare two settings or two versions in one run for that).

    python scripts/lsh_query_phases.py few-large 100000 64 --w 2 --m 15 --L 24 --probes 6
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from nearline_rec.blas import limit_blas_threads
from nearline_rec.core.lsh import LSHIndex, LSHParams
from nearline_rec.core.lsh import kernels as K
from nearline_rec.core.lsh_tune import workload_vectors
from nearline_rec.tools.bench.lsh_workloads import workload_queries


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("workload")
    ap.add_argument("n", type=int)
    ap.add_argument("dim", type=int)
    ap.add_argument("--w", type=float, default=2.0)
    ap.add_argument("--m", type=int, default=15)
    ap.add_argument("--L", type=int, default=24)
    ap.add_argument("--probes", type=int, default=6)
    ap.add_argument("--keep", type=int, default=0, help="sketch cut (0 = re-rank all)")
    ap.add_argument("--queries", type=int, default=200)
    a = ap.parse_args()
    limit_blas_threads(1)
    x = workload_vectors(a.workload, a.n, a.dim)
    qs = workload_queries(x, a.queries)
    ix = LSHIndex(LSHParams(a.dim, w=a.w, m=a.m, L=a.L, probes=a.probes, sketch_keep=a.keep))
    ix.upsert_many(np.arange(a.n), x)
    n = ix._tail_n
    delta = (
        *ix._large,
        ix._large_dir,
        *ix._small,
        ix._small_dir,
        ix._tail_keys[:n],
        ix._tail_rows[:n],
        ix._tail_epochs[:n],
    )
    keep = max(a.keep, 40) if a.keep else 0
    none_allowed = np.zeros(0, np.bool_)
    names = ("hash", "probe keys", "delta", "gather+dedupe+cut+re-rank", "re-rank", "keys+top-10")
    phases: dict[str, list[float]] = {name: [] for name in names}
    kept = []
    keys = np.zeros(0, np.uint32)
    for rep in range(2):  # the first pass compiles and warms the caches
        for q in qs:
            t = [time.perf_counter_ns()]
            codes, frac, sketch = K.hash_query(q, ix._a, ix._b, a.w, ix._mult, ix._sketch_bits)
            t.append(time.perf_counter_ns())
            keys = K.probe_keys(codes, frac, a.probes, ix._steps, ix._table_tags, ix._key_shift)
            t.append(time.perf_counter_ns())
            extra = K._delta_rows(keys, delta, ix._epoch)
            t.append(time.perf_counter_ns())
            rows, scores = K.query(
                keys,
                ix._bucket_keys,
                ix._bucket_starts,
                ix._directory,
                ix._dir_shift,
                ix._entry_rows,
                ix._epoch,
                ix._dead_in_main > 0,
                extra,
                ix._excluded_rows(None),
                ix._mark,
                ix._sketch,
                np.uint64(sketch),
                keep,
                ix._vectors,
                q,
                ix._row_keys,
                none_allowed,
                False,
            )
            t.append(time.perf_counter_ns())
            K._dots(ix._vectors, rows, q)
            t.append(time.perf_counter_ns())
            K.top_small(scores, ix._row_keys[rows], 10)
            t.append(time.perf_counter_ns())
            if rep:
                for name, t0, t1 in zip(names, t[:-1], t[1:], strict=True):
                    phases[name].append((t1 - t0) / 1000)
                kept.append(len(rows))
    print(
        f"{a.workload} {a.n:,} x {a.dim}, w={a.w} m={a.m} L={a.L} probes={a.probes} "
        f"keep={a.keep}: {len(keys)} buckets, {np.mean(kept):.0f} rows re-ranked a query"
    )
    for name, us in phases.items():
        print(f"  {name:28s} median {np.median(us):8.1f} us")
    with open("/proc/loadavg") as f:
        print("load average", " ".join(f.read().split()[:3]))


if __name__ == "__main__":
    main()
