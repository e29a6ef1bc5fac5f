"""Genre / high-rating rule: best-rated items of the genres the user rated highly."""

from __future__ import annotations

from nearline_rec.core.channels.registry import Channel, register
from nearline_rec.core.recall import Candidate, RecallContext, liked_genres


def genre_recall(ctx: RecallContext, k: int, min_ratings: int = 3) -> list[Candidate]:
    """Best-rated items of the genres the user rated highly, split by how often each appears."""
    genres = liked_genres(ctx)
    if not genres or k <= 0:
        return []
    total = sum(genres.values())
    rating = ctx.stats.bayes_rating(ctx.catalog.capacity)
    out: dict[int, float] = {}
    for genre, count in sorted(genres.items(), key=lambda gc: (-gc[1], gc[0])):
        share = max(1, round(k * count / total))
        keys = ctx.stats.genre_top(ctx.catalog, genre, min_ratings, share + len(ctx.exclude))
        fresh = [key for key in keys[ctx.admissible_mask(keys)].tolist() if key not in out]
        for key in fresh[:share]:
            out[key] = float(rating[key]) * count / total
    ranked = sorted(out.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    return [Candidate(key, score, "genre") for key, score in ranked]


CHANNEL = register(
    Channel(
        name="genre",
        code=3,
        k=40,
        quota=20,
        doc="Best-rated items of genres the user rated highly.",
        make=lambda options: (
            lambda ctx, k: genre_recall(ctx, k, int(options.get("genre_min_ratings", 3)))
        ),
    )
)
