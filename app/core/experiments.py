"""A/B experiments: stable user -> variant assignment and the online hit-rate metric."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

METRICS = ("events", "events_on_list", "positives", "hits", "lists")


@dataclass(frozen=True)
class Variant:
    name: str
    share: float


def bucket(user_id: str, experiment: str) -> float:
    """A user's stable position in [0, 1) for one experiment (independent across experiments)."""
    digest = hashlib.blake2b(f"{experiment}\x00{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign(user_id: str, experiment: str, variants: Sequence[Variant]) -> str:
    """The variant whose cumulative share range holds the user's bucket."""
    x = bucket(user_id, experiment)
    edge = 0.0
    for v in variants:
        edge += v.share
        if x < edge:
            return v.name
    return variants[-1].name  # shares sum to 1 up to rounding


@dataclass
class OnlineMetric:
    """Per variant, from the stream itself: of the events that arrive, how many were on an item
    of the user's current list, and of the positive ones, how many (the hit rate)."""

    counts: Counter[str] = field(default_factory=Counter)

    def observe(self, variant: str, item_id: str, positive: bool, current_list: set[str]) -> None:
        on_list = item_id in current_list
        self.counts[f"{variant}:events"] += 1
        self.counts[f"{variant}:events_on_list"] += on_list
        if positive:
            self.counts[f"{variant}:positives"] += 1
            self.counts[f"{variant}:hits"] += on_list

    def list_written(self, variant: str) -> None:
        self.counts[f"{variant}:lists"] += 1


def summarize(counts: dict[str, int], variants: Sequence[Variant]) -> list[dict[str, float | str]]:
    """Rows for `nearline experiments`: traffic and the two online figures per variant."""
    rows: list[dict[str, float | str]] = []
    for v in variants:
        c = {m: int(counts.get(f"{v.name}:{m}", 0)) for m in METRICS}
        rows.append(
            {
                "variant": v.name,
                "share": v.share,
                **c,
                "hit_rate": c["hits"] / c["positives"] if c["positives"] else 0.0,
                "on_list_rate": c["events_on_list"] / c["events"] if c["events"] else 0.0,
            }
        )
    return rows
