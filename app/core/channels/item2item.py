"""Item-to-item recall: neighbours of the user's last liked items."""

from __future__ import annotations

import numpy as np

from nearline_rec.core.channels.registry import Channel, register
from nearline_rec.core.recall import Candidate, RecallContext, _want, candidates


def item2item_recall(ctx: RecallContext, k: int, seeds: int = 5) -> list[Candidate]:
    """Neighbours of the last liked items; an item near several seeds keeps its best score.

    A seed's neighbour list is the same for every user, so it comes from the catalog's
    cache; the user's seen items are filtered out after the lookup."""
    if k <= 0:
        return []
    want = _want(ctx, k)
    found_keys, found_scores = [], []
    for item_id in reversed(ctx.user.liked[-seeds:]):
        key = ctx.catalog.key(item_id)
        if key is None:
            continue
        keys, scores = ctx.catalog.neighbours(key, want)
        found_keys.append(keys)
        found_scores.append(scores)
    if not found_keys:
        return []
    keys = np.concatenate(found_keys).astype(np.int64, copy=False)
    scores = np.concatenate(found_scores)
    ok = ctx.admissible_mask(keys)
    keys, scores = keys[ok], scores[ok]
    # Best score first (ties by key): the first occurrence of a key is its best score.
    order = np.lexsort((keys, -scores))
    keys, scores = keys[order], scores[order]
    first = np.sort(np.unique(keys, return_index=True)[1])[:k]
    return candidates(keys[first].tolist(), scores[first].astype(np.float64).tolist(), "item2item")


CHANNEL = register(
    Channel(
        name="item2item",
        code=1,
        k=60,
        quota=30,
        doc="Neighbours of the user's last liked items.",
        make=lambda options: (
            lambda ctx, k: item2item_recall(ctx, k, int(options.get("item2item_seeds", 5)))
        ),
    )
)
