"""The worker's LSH calibration: at start and after the catalogue changed, off the event loop.

The core calibrator (app/core/lsh/calibrate.py) runs against a snapshot of the live items, in
a child process at a lower CPU priority (`NEARLINE_LSH__CALIBRATION_IN=process`, the default:
the snapshot goes through shared memory, the chosen index comes back pickled) or on a worker
thread (`thread`: it shares the GIL and the CPU with the event loop). The event loop keeps
processing meanwhile, and the changes it applies are logged and replayed onto the new index
before the swap (`ItemCatalog.install_calibration`, one assignment on the event loop). A probe
task measures how late the event loop wakes while a calibration runs: /status/ and /metrics
show it.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from nearline_rec.core.catalog import ItemCatalog
from nearline_rec.core.lsh.calibrate import Calibration, CalibrationConfig
from nearline_rec.logs import log_fields
from nearline_rec.settings import LSHSettings

log = logging.getLogger("nearline.calibration")

_PROBE_S = 0.02
"""Interval of the event-loop stall probe."""
_PROBE_KEEP = 30_000
"""Wake-ups the probe remembers (10 minutes at _PROBE_S), for the window before a
calibration."""


class CalibrationRunner:
    """Starts calibrations, installs their result and keeps what an operator reads."""

    def __init__(
        self,
        catalog: ItemCatalog,
        settings: LSHSettings,
        events_done: Callable[[], int] = lambda: 0,
    ) -> None:
        self.catalog = catalog
        self.settings = settings
        self._events_done = events_done
        self.events_during = 0
        self.install_s = 0.0
        """Time the event loop spent replaying the changes and swapping the index in."""
        """Events the worker finished while the last calibration ran (it does not block them)."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lsh-calibrate")
        self._process: ProcessPoolExecutor | None = None
        """The calibration process (started on first use, kept for the next calibration)."""
        self._task: asyncio.Task[None] | None = None
        self.runs = 0
        self.failures = 0
        self.last_error: str | None = None
        self.measured_at: float | None = None
        self.trigger: str | None = None
        """Why the last calibration ran: "start" or "changed"."""
        self.replayed = 0
        """Changes applied while the last calibration ran, replayed onto its index."""
        self.loop_stall_max_s = 0.0
        """Longest the event loop woke late during the last calibration."""
        self.loop_stall_p99_s = 0.0
        self.loop_stall_before_max_s = 0.0
        """Longest it woke late in as long a time just before the calibration (the baseline:
        what the loop's own work and the machine's load cost without a calibration)."""
        self.loop_stall_before_p99_s = 0.0
        self.running_since: float | None = None
        self._wakes: deque[tuple[float, float, float]] = deque(maxlen=_PROBE_KEEP)
        """(loop time slept from, woke at, lateness) of the probe's recent wake-ups."""
        self._probe: asyncio.Task[None] | None = None
        self._thread_id: int | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def due(self) -> bool:
        """A recalibration is due: enough of the catalogue changed since the last one."""
        cat = self.catalog
        if not self.settings.calibrate or self.running or cat.calibration is None:
            return False
        return cat.changed >= self.settings.recalibrate_share * max(cat.calibration.n_items, 1)

    def maybe_start(self) -> bool:
        """Start a background recalibration when one is due (call after catalogue changes)."""
        if not self.due():
            return False
        self._task = asyncio.ensure_future(self.run("changed"))
        return True

    async def run(self, trigger: str) -> Calibration | None:
        """Calibrate on a thread and install the result on the event loop; None when
        calibration is off, the catalogue is below exact_below, or it failed (logged and
        counted; the old index keeps serving)."""
        cat = self.catalog
        if not self.settings.calibrate or len(cat) < max(cat.config.exact_below, 1):
            return None
        s = self.settings
        config = cat.calibration_config(
            target_recall=s.target_recall,
            queries=s.calibration_queries,
            budget_seconds=s.calibration_budget_seconds,
            memory_ratio=s.memory_ratio,
        )
        keys, vectors = cat.calibration_snapshot()
        loop = asyncio.get_running_loop()
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._probe_loop())
            await asyncio.sleep(0)  # the probe's first sleep starts now
        self.running_since = time.time()
        began = loop.time()
        events_before = self._events_done()
        try:
            cal = await loop.run_in_executor(self._executor, self._calibrate, keys, vectors, config)
        except Exception as exc:
            cat.abandon_calibration()
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("lsh calibration failed")
            return None
        finally:
            self.running_since = None
        ended = loop.time()
        self.events_during = self._events_done() - events_before
        installing = time.perf_counter()
        self.replayed = cat.install_calibration(cal)
        self.install_s = time.perf_counter() - installing
        self.runs += 1
        self.trigger = trigger
        self.measured_at = time.time()
        self.last_error = None
        self.loop_stall_max_s, self.loop_stall_p99_s = self._stalls(began, ended)
        self.loop_stall_before_max_s, self.loop_stall_before_p99_s = self._stalls(
            2 * began - ended, began
        )
        log_fields(
            log,
            "lsh calibrated",
            trigger=trigger,
            index="exact" if cal.exact else "lsh",
            recall=round(cal.recall, 4),
            queries=cal.heldout_queries,
            seconds=round(cal.seconds, 1),
            replayed=self.replayed,
            events_during=self.events_during,
            install_ms=round(1000 * self.install_s, 1),
            loop_stall_max_ms=round(1000 * self.loop_stall_max_s, 1),
            loop_stall_before_max_ms=round(1000 * self.loop_stall_before_max_s, 1),
        )
        return cal

    def _calibrate(self, keys: Any, vectors: Any, config: Any) -> Calibration:
        """On the runner's thread: calibrate here, or in the calibration process; then replay
        onto the new index the changes made so far (the install replays only the rest)."""
        if self.settings.calibration_in == "process":
            cal = self._calibrate_in_process(keys, vectors, config)
        else:
            from nearline_rec.core.lsh.calibrate import calibrate

            self._thread_id = threading.get_ident()
            try:
                cal = calibrate(keys, self.catalog.gather_snapshot(keys, vectors), config)
            finally:
                self._thread_id = None
        self.catalog.replay_changes(cal)
        return cal

    def _calibrate_in_process(
        self, keys: np.ndarray, vectors: np.ndarray, config: CalibrationConfig
    ) -> Calibration:
        """Copy the snapshot's rows into shared memory (on this thread, in chunks), calibrate
        in the child process and wait for its result here; the shared memory is freed either
        way, and a child that died is replaced at the next calibration."""
        shape = (len(keys), vectors.shape[1])
        shm = SharedMemory(create=True, size=max(4 * shape[0] * shape[1], 1))
        try:
            x = np.ndarray(shape, dtype=np.float32, buffer=shm.buf)
            ItemCatalog.gather_snapshot(keys, vectors, out=x)
            del x
            if self._process is None:
                self._process = ProcessPoolExecutor(
                    max_workers=1,
                    mp_context=multiprocessing.get_context("spawn"),  # threads: never fork
                    initializer=_calibration_process_init,
                    initargs=(self.settings.calibration_nice,),
                )
            try:
                return self._process.submit(
                    _calibrate_shared, shm.name, shape, keys, config
                ).result()
            except BrokenProcessPool:
                self._process = None
                raise
        finally:
            shm.close()
            shm.unlink()

    def _stalls(self, start: float, end: float) -> tuple[float, float]:
        """(max, p99) lateness of the probe's sleeps overlapping [start, end) of loop time
        (a stall longer than the window counts for it too)."""
        late = sorted(
            lateness for slept, woke, lateness in self._wakes if slept < end and woke >= start
        )
        if not late:
            return 0.0, 0.0
        return late[-1], late[int(0.99 * (len(late) - 1))]

    async def _probe_loop(self) -> None:
        """Sleep _PROBE_S at a time for as long as the worker runs, recording how late each
        wake-up was; a wake-up over 250 ms late during a calibration logs where the
        calibration thread was then."""
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(_PROBE_S)
            now = loop.time()
            late = max(0.0, now - t - _PROBE_S)
            self._wakes.append((t, now, late))
            thread = self._thread_id
            if late > 0.25 and thread is not None:
                frame = sys._current_frames().get(thread)
                where = traceback.extract_stack(frame)[-3:] if frame is not None else []
                log.info(
                    "event loop woke %.0f ms late; calibration thread at %s",
                    1000 * late,
                    " < ".join(f"{f.name}:{f.lineno}" for f in reversed(where)),
                )

    def status(self) -> dict[str, Any]:
        """The calibration block of /status/ (and of /metrics, `nearline status`)."""
        cal = self.catalog.calibration
        out: dict[str, Any] = {
            "enabled": self.settings.calibrate,
            "running": self.running_since is not None,
            "runs": self.runs,
            "failures": self.failures,
            "last_error": self.last_error,
            "measured_at": self.measured_at,
            "trigger": self.trigger,
            "changed_since": self.catalog.changed,
            "recalibrate_at": None
            if cal is None
            else int(self.settings.recalibrate_share * max(cal.n_items, 1)),
            "replayed": self.replayed,
            "events_during": self.events_during,
            "install_ms": round(1000 * self.install_s, 2),
            "loop_stall_max_ms": round(1000 * self.loop_stall_max_s, 2),
            "loop_stall_p99_ms": round(1000 * self.loop_stall_p99_s, 2),
            "loop_stall_before_max_ms": round(1000 * self.loop_stall_before_max_s, 2),
            "loop_stall_before_p99_ms": round(1000 * self.loop_stall_before_p99_s, 2),
        }
        if cal is not None:
            out.update(cal.summary())
        return out

    def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._process is not None:
            self._process.shutdown(wait=False, cancel_futures=True)


def _calibration_process_init(nice: int) -> None:
    """In the calibration process: a lower CPU priority than the worker's event loop, one
    BLAS thread like the worker (app/blas.py), and an exit when the worker is gone (killed,
    it cannot shut the process down)."""
    from nearline_rec.blas import limit_blas_threads

    limit_blas_threads(1)
    if nice:
        os.nice(nice)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent: int, every_s: float = 1.0) -> None:
    while os.getppid() == parent:
        time.sleep(every_s)
    os._exit(1)


def _calibrate_shared(
    shm_name: str, shape: tuple[int, int], keys: np.ndarray, config: CalibrationConfig
) -> Calibration:
    """In the calibration process: calibrate on the vectors in shared memory (the calibrator
    copies them, sorted by key, before it returns)."""
    from nearline_rec.core.lsh.calibrate import calibrate

    shm = SharedMemory(name=shm_name)
    try:
        x = np.ndarray(shape, dtype=np.float32, buffer=shm.buf)
        try:
            return calibrate(keys, x, config)
        finally:
            del x
    finally:
        shm.close()
