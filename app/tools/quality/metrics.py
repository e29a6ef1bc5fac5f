"""Ranking metrics of next-event prediction: one relevant item per event, a list per event."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class MethodScore:
    """Accumulates HitRate@K, NDCG@K, MRR and coverage of one method over evaluated events."""

    k: int
    events: int = 0
    hits: int = 0
    ndcg_sum: float = 0.0
    rr_sum: float = 0.0
    shown: set[str] = field(default_factory=set)
    hit_channels: Counter[str] = field(default_factory=Counter)
    slot_channels: Counter[str] = field(default_factory=Counter)

    def add(self, target: str, items: Sequence[str], channels: Sequence[str] | None = None) -> int:
        """Score one event; returns the 1-based rank of target in items (0 = absent)."""
        self.events += 1
        top = items[: self.k]
        self.shown.update(top)
        if channels is not None:
            self.slot_channels.update(channels[: self.k])
        try:
            rank = list(items).index(target) + 1
        except ValueError:
            return 0
        self.rr_sum += 1.0 / rank  # MRR over the whole served list
        if rank <= self.k:
            self.hits += 1
            self.ndcg_sum += 1.0 / math.log2(rank + 1)  # one relevant item: IDCG = 1
            if channels is not None:
                self.hit_channels[channels[rank - 1]] += 1
        return rank

    def summary(self, catalog_size: int) -> dict[str, Any]:
        n = max(self.events, 1)
        out: dict[str, Any] = {
            "events": self.events,
            "hits": self.hits,
            f"hit_rate@{self.k}": self.hits / n,
            f"ndcg@{self.k}": self.ndcg_sum / n,
            "mrr": self.rr_sum / n,
            f"coverage@{self.k}": len(self.shown) / catalog_size if catalog_size else 0.0,
        }
        if self.slot_channels:
            hits = max(sum(self.hit_channels.values()), 1)
            slots = max(sum(self.slot_channels.values()), 1)
            out["channels"] = {
                ch: {
                    "hit_share": self.hit_channels[ch] / hits,
                    "hits": self.hit_channels[ch],
                    "slot_share": self.slot_channels[ch] / slots,
                }
                for ch in sorted(self.slot_channels, key=lambda c: -self.slot_channels[c])
            }
        return out


def score_lists(
    targets: Sequence[str], lists: Sequence[Sequence[str]], k: int, catalog_size: int
) -> dict[str, Any]:
    """Metrics of `lists[i]` against `targets[i]` (a convenience for known-answer checks)."""
    acc = MethodScore(k)
    for target, items in zip(targets, lists, strict=True):
        acc.add(target, items)
    return acc.summary(catalog_size)
