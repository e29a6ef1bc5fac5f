"""Embedding recall: the items nearest to the user embedding (LSH with exact re-rank)."""

from __future__ import annotations

from nearline_rec.core.channels.registry import Channel, register
from nearline_rec.core.recall import Candidate, RecallContext, nearest


def embedding_recall(ctx: RecallContext, k: int) -> list[Candidate]:
    """Items nearest to the user embedding (LSH with exact re-rank), admissible ones only:
    the index skips the others while it gathers candidates."""
    if ctx.embedding is None or k <= 0:
        return []
    return nearest(ctx, ctx.embedding, k, "embedding")


CHANNEL = register(
    Channel(
        name="embedding",
        code=0,
        k=100,
        quota=60,
        doc="User embedding -> nearest items (LSH).",
        make=lambda options: embedding_recall,
    )
)
