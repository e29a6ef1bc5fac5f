"""Settings -> the pure core: the one place that maps settings sections onto a Recommender."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pydantic import ValidationError

from nearline_rec.core.catalog import IndexConfig, ItemCatalog
from nearline_rec.core.channels import REGISTRY
from nearline_rec.core.pipeline import PipelineConfig, Recommender
from nearline_rec.core.rank import ModelError, RankModel, load_model
from nearline_rec.core.recall import ChannelConfig
from nearline_rec.core.social import SocialPolicy
from nearline_rec.core.user_state import policy_from_settings
from nearline_rec.ranking import is_onnx, load_ranker
from nearline_rec.settings import RankingSettings, RecallSettings, Settings, SettingsError


def build_recommender(settings: Settings, *, learned_required: bool = True) -> Recommender:
    """The pure core configured from settings (the worker, the CLI, evaluation, benchmarks).
    With `learned_required` False an `.onnx` model that does not load leaves the linear
    model in place (the worker, which keeps looking for the file), instead of an error."""
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
        neighbour_cache=settings.recall.item2item_cache,
    )
    r = settings.recall
    config, model = _pipeline(
        settings, r, settings.ranking, "NEARLINE_RANKING__MODEL_PATH", learned_required
    )
    base = Recommender(
        ItemCatalog(settings.items.embedding_dim, index),
        model,
        config=config,
        policy=policy_from_settings(settings.embedding, settings.worker),
        popularity_half_life=r.popularity_half_life_seconds,
        embedding_version=settings.items.embedding_version,
        social=SocialPolicy(
            friends_max=r.friends_max,
            followers_max=r.friends_followers_max,
            fanout_per_like=r.friends_fanout_per_like,
            likes_kept=r.friends_likes_kept,
            backfill=r.friends_backfill,
        ),
        users_max=r.similar_users_max,
        search_threads=r.search_threads,
    )
    variants = settings.experiments.variants
    base.variant = variants[0].name
    return base


def build_variants(
    settings: Settings, base: Recommender, *, learned_required: bool = True
) -> dict[str, Recommender]:
    """One Recommender per experiment variant, all sharing the base's catalog, statistics
    and user directory; a variant differs only in its recall and ranking settings."""
    out: dict[str, Recommender] = {}
    for v in settings.experiments.variants:
        try:
            recall = RecallSettings.model_validate(
                _merge(settings.recall.model_dump(), v.overrides.get("recall", {}))
            )
            ranking = RankingSettings.model_validate(
                _merge(settings.ranking.model_dump(), v.overrides.get("ranking", {}))
            )
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise SettingsError(
                f"invalid setting NEARLINE_EXPERIMENTS__VARIANTS: variant {v.name!r} {where}:"
                f" {err['msg']}"
            ) from None
        config, model = _pipeline(
            settings, recall, ranking, "NEARLINE_EXPERIMENTS__VARIANTS", learned_required
        )
        out[v.name] = base.as_variant(v.name, config, model)
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _pipeline(
    settings: Settings,
    r: RecallSettings,
    ranking: RankingSettings,
    model_setting: str,
    learned_required: bool = True,
) -> tuple[PipelineConfig, RankModel]:
    # every registered channel has its settings section in RecallSettings, named alike
    channels = tuple(
        ChannelConfig(name, getattr(r, name).k, getattr(r, name).quota, getattr(r, name).enabled)
        for name in REGISTRY
    )
    config = PipelineConfig(
        channels=channels,
        channel_options={k: v for k, v in r.model_dump().items() if k not in REGISTRY},
        top_n=ranking.top_n,
        max_per_genre=ranking.max_per_genre,
        like_threshold=settings.embedding.like_threshold,
    )
    try:
        model = load_ranker(ranking.model_path)
    except ModelError as exc:
        if learned_required or not is_onnx(ranking.model_path):
            raise SettingsError(f"invalid setting {model_setting}: {exc}") from None
        return config, load_model(None)
    if model.scorer is not None:
        model = replace(model, fallback=load_model(None))
    return config, model
