"""Lag policy: when to degrade to the precomputed popularity list and when to recover."""

from __future__ import annotations

from dataclasses import dataclass

from nearline_rec.core.modes import ModeOverride, WorkerMode

MODES = tuple(WorkerMode)
OVERRIDES = tuple(ModeOverride)


@dataclass(frozen=True)
class LagThresholds:
    high: int
    """Enter degraded mode when lag stays at or above this..."""
    low: int
    """...and leave it when lag falls to or below this."""
    hold_seconds: float
    """...for at least this long (a short spike does not degrade)."""

    def __post_init__(self) -> None:
        if self.low < 0 or self.high <= 0:
            raise ValueError("lag thresholds must be positive")
        if self.low >= self.high:
            raise ValueError(f"low threshold {self.low} must be below high threshold {self.high}")
        if self.hold_seconds < 0:
            raise ValueError("hold_seconds must be >= 0")


@dataclass(frozen=True)
class Transition:
    at: float
    mode: WorkerMode
    lag: int
    reason: str


class LagPolicy:
    """Hysteresis on consumer lag. Between the two thresholds the mode never changes, so a
    lag oscillating there cannot flap; the hold time filters spikes above `high`."""

    def __init__(
        self, thresholds: LagThresholds, override: ModeOverride | str = ModeOverride.AUTO
    ) -> None:
        self.thresholds = thresholds
        self.mode = WorkerMode.NORMAL
        self.override = ModeOverride.AUTO
        self._above_since: float | None = None
        self.transitions: list[Transition] = []
        self.set_override(override, now=0.0)

    def set_override(self, override: ModeOverride | str, now: float) -> WorkerMode:
        if override not in OVERRIDES:
            names = tuple(o.value for o in OVERRIDES)
            raise ValueError(f"override must be one of {names}, got {override!r}")
        self.override = ModeOverride(override)
        if self.override != ModeOverride.AUTO:
            self._switch(WorkerMode(override), now, -1, f"forced {self.override}")
        self._above_since = None
        return self.mode

    def observe(self, lag: int, now: float) -> WorkerMode:
        """Feed one lag measurement; returns the mode to use from now on."""
        if self.override != ModeOverride.AUTO:
            return self.mode
        t = self.thresholds
        if self.mode == WorkerMode.NORMAL:
            if lag >= t.high:
                if self._above_since is None:
                    self._above_since = now
                if now - self._above_since >= t.hold_seconds:
                    self._switch(
                        WorkerMode.DEGRADED,
                        now,
                        lag,
                        f"lag >= {t.high} for {now - self._above_since:.1f}s",
                    )
            else:
                self._above_since = None
        elif lag <= t.low:
            self._switch(WorkerMode.NORMAL, now, lag, f"lag <= {t.low}")
            self._above_since = None
        return self.mode

    def _switch(self, mode: WorkerMode, now: float, lag: int, reason: str) -> None:
        if mode != self.mode:
            self.mode = mode
            self.transitions.append(Transition(now, mode, lag, reason))
