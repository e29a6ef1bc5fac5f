"""Short-term taste recall: the items nearest to the user's last likes, newest weighted most."""

from __future__ import annotations

from nearline_rec.core.channels.registry import Channel, register
from nearline_rec.core.recall import Candidate, RecallContext, nearest


def short_term_recall(ctx: RecallContext, k: int) -> list[Candidate]:
    """Items by their recency-weighted cosine to the last liked items (`RecallContext.
    short_term`): one search with the weighted sum of those items' vectors, so an item near
    several recent likes ranks above one near a single older like."""
    query = ctx.short_term()
    if query is None or k <= 0:
        return []
    return nearest(ctx, query, k, "short_term")


CHANNEL = register(
    Channel(
        name="short_term",
        code=8,
        k=100,
        quota=60,
        doc="Recency-weighted sum of the last liked items' vectors -> nearest items.",
        make=lambda options: short_term_recall,
    )
)
