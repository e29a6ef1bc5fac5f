"""Newest recall: the most recently released items, by the stream's clock."""

from __future__ import annotations

import numpy as np

from nearline_rec.core.channels.registry import Channel, register
from nearline_rec.core.recall import Candidate, RecallContext, _take


def newest_recall(ctx: RecallContext, k: int) -> list[Candidate]:
    """Most recently released items that are out by the stream's clock."""
    if k <= 0:
        return []
    keys, neg_release = ctx.catalog.newest_order()
    # Sorted newest first: items not yet out by the stream's clock are a prefix to skip.
    start = int(np.searchsorted(neg_release, -ctx.now, side="left"))
    stop = start + k + len(ctx.exclude)
    if start >= len(keys):
        return []
    return _take(ctx, keys[start:stop], -neg_release[start:stop], k, "newest")


CHANNEL = register(
    Channel(
        name="newest",
        code=5,
        k=20,
        quota=10,
        doc="Most recently released items.",
        make=lambda options: newest_recall,
    )
)
