"""The worker's calibration in a child process (NEARLINE_LSH__CALIBRATION_IN=process): the
snapshot goes through shared memory to a process at a lower CPU priority, the chosen index
comes back and is swapped in after the changes made meanwhile are replayed, and the shared
memory is freed."""

from __future__ import annotations

import asyncio
import os
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import numpy as np

import nearline_rec.calibration
from nearline_rec.calibration import CalibrationRunner
from nearline_rec.core.catalog import IndexConfig, ItemCatalog
from nearline_rec.core.lsh_tune import mixture_vectors
from nearline_rec.settings import LSHSettings
from tests.unit.factories import item

N, DIM = 15_000, 32


def test_calibration_in_a_child_process_is_installed_with_the_changes_made_meanwhile(
    monkeypatch,
):
    created: list[str] = []

    class Recorded(SharedMemory):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            created.append(self.name)

    monkeypatch.setattr(nearline_rec.calibration, "SharedMemory", Recorded)
    x = mixture_vectors(N, DIM, n_clusters=8, spread=0.5, seed=3)
    cat = ItemCatalog(DIM, IndexConfig(exact_below=1000))
    cat.upsert_many([item(f"i{i}", v) for i, v in enumerate(x)])
    old = cat._lsh
    settings = LSHSettings(
        exact_below=1000,
        calibration_queries=60,
        calibration_budget_seconds=1.0,
        calibration_in="process",
        calibration_nice=5,
    )
    runner = CalibrationRunner(cat, settings)
    rng = np.random.default_rng(4)
    moved: list[str] = []

    async def scenario():
        task = asyncio.ensure_future(runner.run("start"))
        await asyncio.sleep(0)  # the run takes its snapshot
        step = 0
        while not task.done() and step < 100_000:  # the loop keeps applying item updates
            step += 1
            victim = f"i{int(rng.integers(0, N))}"
            cat.upsert_many([item(victim, rng.standard_normal(DIM))])
            moved.append(victim)
            assert cat._lsh is old  # the old index serves until the install
            await asyncio.sleep(0.005)
        return await task

    try:
        cal = asyncio.run(scenario())
        children = list(runner._process._processes.values())  # type: ignore[union-attr]
        assert [c.pid for c in children] != [os.getpid()] and len(children) == 1
        assert os.getpriority(os.PRIO_PROCESS, children[0].pid) == os.getpriority(
            os.PRIO_PROCESS, 0
        ) + min(5, 19 - os.getpriority(os.PRIO_PROCESS, 0))
    finally:
        runner.close()
    assert cal is not None and not cal.exact and runner.failures == 0, runner.last_error
    assert cat._lsh is cal.index and cat._lsh is not old
    assert runner.replayed >= len(set(moved)) > 0
    np.testing.assert_array_equal(cat._lsh.keys(), cat.live_keys())
    for item_id in set(moved):  # replayed: the new index holds the current vector
        np.testing.assert_array_equal(cat._lsh.vector(cat.key(item_id)), cat.vector(item_id))
    assert len(created) == 1  # the snapshot's shared memory, unlinked after
    assert not Path("/dev/shm", created[0].lstrip("/")).exists()
