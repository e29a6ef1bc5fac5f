"""The worker's LSH calibration: on a thread, at start and after the catalogue changed.

The core calibrator (app/core/lsh/calibrate.py) runs on one worker thread against a snapshot
of the live items; the event loop keeps processing meanwhile, and the changes it applies are
logged and replayed onto the new index before the swap (`ItemCatalog.install_calibration`,
one assignment on the event loop). A probe task measures how late the event loop wakes while a
calibration runs (the GIL is shared with the thread): /status/ and /metrics show it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from app.core.catalog import ItemCatalog
from app.core.lsh.calibrate import Calibration
from app.logs import log_fields
from app.settings import LSHSettings

log = logging.getLogger("nearline.calibration")

_PROBE_S = 0.02
"""Interval of the event-loop stall probe while a calibration runs."""


class CalibrationRunner:
    """Starts calibrations, installs their result and keeps what an operator reads."""

    def __init__(self, catalog: ItemCatalog, settings: LSHSettings) -> None:
        self.catalog = catalog
        self.settings = settings
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lsh-calibrate")
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
        self.running_since: float | None = None

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
        self.running_since = time.time()
        stalls: list[float] = []
        done = asyncio.Event()
        probe = asyncio.ensure_future(_probe_loop(done, stalls))
        try:
            cal = await loop.run_in_executor(self._executor, _calibrate, cat, keys, vectors, config)
        except Exception as exc:
            cat.abandon_calibration()
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("lsh calibration failed")
            return None
        finally:
            done.set()
            await probe
            self.running_since = None
        self.replayed = cat.install_calibration(cal)
        self.runs += 1
        self.trigger = trigger
        self.measured_at = time.time()
        self.last_error = None
        stalls.sort()
        self.loop_stall_max_s = stalls[-1] if stalls else 0.0
        self.loop_stall_p99_s = stalls[int(0.99 * (len(stalls) - 1))] if stalls else 0.0
        log_fields(
            log,
            "lsh calibrated",
            trigger=trigger,
            index="exact" if cal.exact else "lsh",
            recall=round(cal.recall, 4),
            queries=cal.heldout_queries,
            seconds=round(cal.seconds, 1),
            replayed=self.replayed,
            loop_stall_max_ms=round(1000 * self.loop_stall_max_s, 1),
        )
        return cal

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
            "loop_stall_max_ms": round(1000 * self.loop_stall_max_s, 2),
            "loop_stall_p99_ms": round(1000 * self.loop_stall_p99_s, 2),
        }
        if cal is not None:
            out.update(cal.summary())
        return out

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _calibrate(cat: ItemCatalog, keys: Any, vectors: Any, config: Any) -> Calibration:
    from app.core.lsh.calibrate import calibrate

    x = cat.gather_snapshot(keys, vectors)
    return calibrate(keys, x, config)


async def _probe_loop(done: asyncio.Event, stalls: list[float]) -> None:
    """Sleep _PROBE_S at a time until `done`, recording how late each wake-up was."""
    loop = asyncio.get_running_loop()
    while not done.is_set():
        t = loop.time()
        await asyncio.sleep(_PROBE_S)
        stalls.append(max(0.0, loop.time() - t - _PROBE_S))
