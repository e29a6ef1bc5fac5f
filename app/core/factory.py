"""Settings -> the pure core: the one place that maps settings sections onto a Recommender."""

from __future__ import annotations

from app.core.catalog import IndexConfig, ItemCatalog
from app.core.pipeline import PipelineConfig, Recommender
from app.core.rank import ModelError, load_model
from app.core.recall import ChannelConfig
from app.core.user_state import policy_from_settings
from app.settings import Settings


def build_recommender(settings: Settings) -> Recommender:
    """The pure core configured from settings (the worker, the CLI, evaluation, benchmarks)."""
    lsh = settings.lsh
    index = IndexConfig(
        w=lsh.w,
        m=lsh.m,
        tables=lsh.tables,
        probes=lsh.probes,
        combine=lsh.combine,
        vote_threshold=lsh.vote_threshold,
        seed=lsh.seed,
        exact_below=lsh.exact_below,
    )
    r = settings.recall
    channels = tuple(
        ChannelConfig(name, getattr(r, name).k, getattr(r, name).quota, getattr(r, name).enabled)
        for name in ("embedding", "item2item", "similar_users", "genre", "trending", "newest")
    )
    config = PipelineConfig(
        channels=channels,
        item2item_seeds=r.item2item_seeds,
        similar_users_n=r.similar_users_n,
        genre_min_ratings=r.genre_min_ratings,
        top_n=settings.ranking.top_n,
        max_per_genre=settings.ranking.max_per_genre,
        like_threshold=settings.embedding.like_threshold,
    )
    try:
        model = load_model(settings.ranking.model_path)
    except ModelError as exc:
        raise SystemExit(f"error: invalid setting NEARLINE_RANKING__MODEL_PATH: {exc}") from None
    return Recommender(
        ItemCatalog(settings.items.embedding_dim, index),
        model,
        config=config,
        policy=policy_from_settings(settings.embedding, settings.worker),
        popularity_half_life=r.popularity_half_life_seconds,
        embedding_version=settings.items.embedding_version,
    )
