"""Trending recall: the most popular items by time-decayed engagement."""

from __future__ import annotations

from nearline_rec.core.channels.registry import Channel, register
from nearline_rec.core.recall import Candidate, RecallContext, _take


def trending_recall(ctx: RecallContext, k: int) -> list[Candidate]:
    """Most popular items by time-decayed engagement from the stream."""
    if k <= 0:
        return []
    keys = ctx.stats.top_popular(ctx.catalog, k + len(ctx.exclude))
    pop = ctx.stats.popularity(ctx.catalog.capacity)
    return _take(ctx, keys, pop[keys], k, "trending")


CHANNEL = register(
    Channel(
        name="trending",
        code=4,
        k=30,
        quota=15,
        doc="Time-decayed popularity from the stream.",
        make=lambda options: trending_recall,
    )
)
