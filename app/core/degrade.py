"""Lag policy: when to degrade to the precomputed popularity list and when to recover."""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("normal", "degraded")
OVERRIDES = ("auto", "degraded", "normal")


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
    mode: str
    lag: int
    reason: str


class LagPolicy:
    """Hysteresis on consumer lag. Between the two thresholds the mode never changes, so a
    lag oscillating there cannot flap; the hold time filters spikes above `high`."""

    def __init__(self, thresholds: LagThresholds, override: str = "auto") -> None:
        self.thresholds = thresholds
        self.mode = "normal"
        self.override = "auto"
        self._above_since: float | None = None
        self.transitions: list[Transition] = []
        self.set_override(override, now=0.0)

    def set_override(self, override: str, now: float) -> str:
        if override not in OVERRIDES:
            raise ValueError(f"override must be one of {OVERRIDES}, got {override!r}")
        self.override = override
        if override != "auto":
            self._switch(override, now, -1, f"forced {override}")
        self._above_since = None
        return self.mode

    def observe(self, lag: int, now: float) -> str:
        """Feed one lag measurement; returns the mode to use from now on."""
        if self.override != "auto":
            return self.mode
        t = self.thresholds
        if self.mode == "normal":
            if lag >= t.high:
                if self._above_since is None:
                    self._above_since = now
                if now - self._above_since >= t.hold_seconds:
                    self._switch(
                        "degraded", now, lag, f"lag >= {t.high} for {now - self._above_since:.1f}s"
                    )
            else:
                self._above_since = None
        elif lag <= t.low:
            self._switch("normal", now, lag, f"lag <= {t.low}")
            self._above_since = None
        return self.mode

    def _switch(self, mode: str, now: float, lag: int, reason: str) -> None:
        if mode != self.mode:
            self.mode = mode
            self.transitions.append(Transition(now, mode, lag, reason))
