"""Similar-users recall: recent likes of users whose embeddings share LSH buckets."""

from __future__ import annotations

import numpy as np

from nearline_rec.core.channels.registry import Channel, register
from nearline_rec.core.recall import Candidate, RecallContext, best


def similar_users_recall(ctx: RecallContext, k: int, n_users: int = 20) -> list[Candidate]:
    """Recent likes of users whose embeddings share LSH buckets with this user's."""
    if ctx.embedding is None or k <= 0:
        return []
    near = [(other, sim) for other, sim in ctx.similar_users(n_users) if sim > 0]
    if not near:
        return []
    liked, lengths = ctx.users.liked_newest_first([other for other, _ in near])
    all_keys = liked.astype(np.int64)
    sims = [sim for _, sim in near]
    if len(all_keys) == 0:
        return []
    # newer likes of closer users count more: sim / (1 + 0.1 * position in the user's list)
    starts = np.cumsum(lengths) - lengths
    position = np.arange(len(all_keys)) - np.repeat(starts, lengths)
    weights = np.repeat(np.asarray(sims), lengths) / (1.0 + 0.1 * position)
    ok = all_keys >= 0  # -1: not in the catalog when the user liked it
    ok[ok] = ctx.admissible_mask(all_keys[ok])
    distinct, at = np.unique(all_keys[ok], return_inverse=True)
    # bincount adds in input order, as a running sum per key would
    votes = np.bincount(at, weights=weights[ok], minlength=len(distinct))
    return best(distinct, votes, k, "similar_users")


CHANNEL = register(
    Channel(
        name="similar_users",
        code=2,
        k=40,
        quota=20,
        doc="Recent liked items of users in the same LSH buckets.",
        make=lambda options: (
            lambda ctx, k: similar_users_recall(ctx, k, int(options.get("similar_users_n", 20)))
        ),
    )
)
