"""Friends recall: items the users this user follows liked recently (user-relations topic).

The likes arrive in the user's own state (app/core/social.py: fan-out on write), at most
`likes_kept` of them, so a list costs the same for a user with ten friends or ten thousand."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from nearline_rec.core.channels.registry import Channel, register
from nearline_rec.core.recall import Candidate, RecallContext, best

DEFAULT_HALF_LIFE = 7 * 24 * 3600.0


def friend_closeness(ctx: RecallContext) -> dict[str, float]:
    """1 + the share of a friend's recent likes the user has interacted with too: a friend
    of the same taste counts up to twice as much as one of none."""
    likes: dict[str, list[str]] = defaultdict(list)
    for friend, item, _ in ctx.user.friend_likes:
        likes[friend].append(item)
    seen = ctx.user.seen
    return {f: 1.0 + sum(i in seen for i in items) / len(items) for f, items in likes.items()}


def friends_recall(
    ctx: RecallContext, k: int, half_life: float = DEFAULT_HALF_LIFE
) -> list[Candidate]:
    """Items the user's friends liked, each scored by the sum over the friends who liked it
    of closeness x 0.5 ** (age / half_life): more friends, closer friends and newer likes
    rank higher. Seen and non-recommendable items are left out."""
    if k <= 0 or not ctx.user.friend_likes:
        return []
    friends = ctx.user.friends
    closeness = friend_closeness(ctx)
    scores: dict[int, float] = defaultdict(float)
    for friend, item, ts in ctx.user.friend_likes:
        if friends.get(friend, 0.0) <= 0:
            continue  # unfollowed: its likes are dropped on the way, this is belt and braces
        key = ctx.catalog.key(item)
        if key is None:
            continue
        age = max(ctx.now - ts, 0.0)
        scores[key] += closeness[friend] * 0.5 ** (age / half_life)
    if not scores:
        return []
    keys = np.fromiter(scores, dtype=np.int64, count=len(scores))
    vals = np.fromiter(scores.values(), dtype=np.float64, count=len(scores))
    ok = ctx.admissible_mask(keys)
    return best(keys[ok], vals[ok], k, "friends")


CHANNEL = register(
    Channel(
        name="friends",
        code=9,
        k=30,
        quota=15,
        doc="Items the user's friends liked recently (user-relations).",
        # merged first: a friend's like is the most explicit reason to show an item, so an
        # item another channel found too is credited to the friends (the evaluation counts it)
        order=-1,
        make=lambda options: (
            lambda ctx, k: friends_recall(
                ctx, k, float(options.get("friends_half_life_seconds", DEFAULT_HALF_LIFE))
            )
        ),
    )
)
