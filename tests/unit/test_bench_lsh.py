"""The LSH benchmark's update pass: what it reports and that it leaves the index as it was."""

from __future__ import annotations

import numpy as np

from nearline_rec.core.lsh import LSHIndex, LSHParams
from nearline_rec.tools.bench.lsh import bench_updates
from nearline_rec.tools.bench.lsh_measure import workload


def test_bench_updates_restores_the_index_and_measures_queries_with_a_delta():
    x, qs = workload(3000, 16, 20)
    index = LSHIndex(LSHParams(dim=16, m=8, L=8, probes=4, sketch_keep=50))
    index.upsert_many(np.arange(3000), x)
    before = index.buckets()
    out = bench_updates(index, x, 300, queries=qs, query_params=index.params)
    # 300 inserted and 300 moved rows were pending when the queries ran
    assert out["delta_rows"] >= 600
    assert out["qps_with_delta"] > 0
    assert out["ops"] == 300 and out["move_per_s"] > 0
    # inserted keys deleted, moved vectors moved back, delta merged
    assert index.delta_rows() == 0
    assert len(index) == 3000
    assert index.buckets() == before
