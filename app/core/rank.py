"""Light ranking: a linear model over precomputed embeddings and a few features, then diversity."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from nearline_rec.core.channels import CHANNELS
from nearline_rec.core.recall import Candidate, RecallContext, liked_genres
from nearline_rec.errors import BadInput

FEATURES = ("similarity", "recall_score", "popularity", "recency", "genre_match", "short_term")
LEARNED_FEATURES = (
    *FEATURES,
    "rating_count",
    "rating_mean",
    "user_activity",
    *(f"channel_{c}" for c in CHANNELS),
)
"""What a learned model may read, one column each: the linear ranker's features, the item's
all-time rating count (log, over the largest) and shrunk mean rating (/ 5), the user's event
count (log1p / log1p(1000), capped at 1), and a 0/1 column per recall channel (the channel the
merge credited)."""
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default-ranker.json"

Scorer = Callable[[np.ndarray], np.ndarray]
"""A learned model: (n, len(model.features)) float32 rows -> n scores."""


class ModelError(BadInput):
    """The ranking model file is unusable; the message is one line naming the file."""


@dataclass(frozen=True)
class RankModel:
    version: str
    weights: dict[str, float]
    channel_bonus: dict[str, float] = field(default_factory=dict)
    recency_half_life_days: float = 365.0
    scorer: Scorer | None = field(default=None, compare=False)
    """A learned model's scoring function (from an ONNX file, app/ranking.py); None: linear."""
    features: tuple[str, ...] = ()
    """The columns `scorer` reads, in order (names from LEARNED_FEATURES)."""
    fallback: RankModel | None = field(default=None, compare=False)
    """The linear model that ranks a batch when the learned scorer fails or is slow."""

    def with_scorer(self, scorer: Scorer | None) -> RankModel:
        return replace(self, scorer=scorer)


def load_model(path: str | Path | None = None) -> RankModel:
    path = Path(path) if path else DEFAULT_MODEL
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: ranking model file not found") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ranking model file ({exc.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: not a JSON ranking model ({exc})") from None
    if not isinstance(doc, dict) or doc.get("kind") != "linear":
        raise ModelError(f'{path}: expected an object with "kind": "linear"')
    version = doc.get("version")
    if not isinstance(version, str) or not version:
        raise ModelError(f'{path}: "version" must be a non-empty string')
    weights = doc.get("weights", {})
    bonus = doc.get("channel_bonus", {})
    if not isinstance(weights, dict) or not isinstance(bonus, dict):
        raise ModelError(f'{path}: "weights" and "channel_bonus" must be JSON objects')
    unknown = set(weights) - set(FEATURES)
    if unknown:
        raise ModelError(f"{path}: unknown feature(s) {sorted(unknown)}; known: {list(FEATURES)}")
    unknown = set(bonus) - set(CHANNELS)
    if unknown:
        raise ModelError(f"{path}: unknown channel(s) {sorted(unknown)}; known: {list(CHANNELS)}")
    for name, value in [*weights.items(), *bonus.items()]:
        if not _finite_number(value):
            raise ModelError(f"{path}: weight {name!r} must be a finite number")
    half_life = doc.get("recency_half_life_days", 365.0)
    if not _finite_number(half_life) or half_life <= 0:
        raise ModelError(f'{path}: "recency_half_life_days" must be a finite number > 0')
    return RankModel(
        version=version,
        weights={f: float(weights.get(f, 0.0)) for f in FEATURES},
        channel_bonus={k: float(v) for k, v in bonus.items()},
        recency_half_life_days=float(half_life),
    )


def _finite_number(value: object) -> bool:
    # bool is an int subclass, but `true` as a weight is a mistake, not 1.0
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class Ranked(NamedTuple):
    key: int
    score: float
    channel: str


def features(cands: list[Candidate], ctx: RecallContext, model: RankModel) -> np.ndarray:
    """(n, len(FEATURES)) matrix, each column roughly in [0, 1]."""
    return _features(*_columns(cands), ctx, model)[0]


def _columns(cands: list[Candidate]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """keys (int64), recall scores (float64) and channels of the candidates, each in one
    pass at C speed (the candidates are tuples)."""
    if not cands:
        return np.zeros(0, np.int64), np.zeros(0, np.float64), []
    keys, scores, channels = zip(*cands, strict=True)
    return np.array(keys, dtype=np.int64), np.array(scores, dtype=np.float64), list(channels)


def _features(
    keys: np.ndarray, score: np.ndarray, channels: list[str], ctx: RecallContext, model: RankModel
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """`features` from the candidates' columns; also the channel code of each candidate and
    the channel names in code order."""
    n = keys.shape[0]
    x = np.zeros((n, len(FEATURES)), dtype=np.float64)
    codes: dict[str, int] = {}
    if n == 0:
        return x, np.zeros(0, np.int64), []
    vectors = ctx.catalog.vectors(keys) if ctx.embedding is not None or ctx.user.liked else None
    if ctx.embedding is not None:
        x[:, 0] = vectors @ ctx.embedding
    short = ctx.short_term()
    if short is not None:
        x[:, 5] = vectors @ short
    # recall scores live on different scales per channel: rank-normalise within the channel
    codes.update((name, code) for code, name in enumerate(dict.fromkeys(channels)))
    channel = np.fromiter(map(codes.__getitem__, channels), dtype=np.int64, count=n)
    order = np.lexsort((np.arange(n), -score, channel))  # by channel, best first, stable
    ch_sorted = channel[order]
    first = np.empty(n, dtype=bool)
    first[0] = True
    np.not_equal(ch_sorted[1:], ch_sorted[:-1], out=first[1:])
    group_start = np.flatnonzero(first)
    group_size = np.diff(np.append(group_start, n))
    rank_in = np.arange(n) - np.repeat(group_start, group_size)
    x[order, 1] = 1.0 - rank_in / np.repeat(group_size, group_size)
    pop = ctx.stats.popularity(ctx.catalog.capacity)
    top = ctx.stats.popularity_max(ctx.catalog.capacity)
    if top > 0:
        x[:, 2] = np.log1p(pop[keys]) / math.log1p(top)
    age_days = np.maximum(ctx.now - ctx.catalog.release_ts[keys], 0.0) / 86400.0
    x[:, 3] = 0.5 ** (age_days / model.recency_half_life_days)
    genres = liked_genres(ctx)
    total = sum(genres.values())
    if total:
        # per item: (user's count of each of its genres, summed) / (total * its genre count)
        matched = np.zeros(n, dtype=np.int64)
        for name, count in genres.items():
            matched += count * ctx.catalog.genre_mask(name)[keys]
        n_genres = ctx.catalog.genre_counts(keys)
        has = n_genres > 0
        x[has, 4] = matched[has] / (total * n_genres[has]) * len(genres)
        x[:, 4] = np.minimum(x[:, 4], 1.0)
    return x, channel, list(codes)


def learned_features(cands: list[Candidate], ctx: RecallContext, model: RankModel) -> np.ndarray:
    """(n, len(model.features)) float32: the columns a learned model reads, in its order."""
    keys, recall_scores, channels = _columns(cands)
    x, channel, names = _features(keys, recall_scores, channels, ctx, model)
    return _learned(keys, x, channel, names, ctx, model.features)


def _learned(
    keys: np.ndarray,
    x: np.ndarray,
    channel: np.ndarray,
    names: list[str],
    ctx: RecallContext,
    wanted: tuple[str, ...],
) -> np.ndarray:
    cols: dict[str, np.ndarray] = {f: x[:, i] for i, f in enumerate(FEATURES)}
    cap = ctx.catalog.capacity
    count = ctx.stats.rating_count(cap)
    top = float(count.max()) if len(count) else 0.0
    cols["rating_count"] = np.log1p(count[keys]) / math.log1p(top) if top > 0 else 0 * x[:, 0]
    cols["rating_mean"] = ctx.stats.bayes_rating(cap)[keys] / 5.0
    activity = min(math.log1p(ctx.user.n_events) / math.log1p(1000), 1.0)
    cols["user_activity"] = np.full(len(keys), activity)
    for code, name in enumerate(names):
        cols[f"channel_{name}"] = (channel == code).astype(np.float64)
    zero = np.zeros(len(keys))
    return np.column_stack([cols.get(f, zero) for f in wanted]).astype(np.float32)


def rank(
    cands: list[Candidate], ctx: RecallContext, model: RankModel, *, top_n: int, max_per_genre: int
) -> list[Ranked]:
    """Score candidates, then take the best while capping items per primary genre."""
    if not cands:
        return []
    keys, recall_scores, channels = _columns(cands)
    x, channel, names = _features(keys, recall_scores, channels, ctx, model)
    if model.scorer is not None:
        scores = np.asarray(
            model.scorer(_learned(keys, x, channel, names, ctx, model.features)), np.float64
        ).ravel()
    else:
        w = np.array([model.weights[f] for f in FEATURES])
        bonus = np.array([model.channel_bonus.get(name, 0.0) for name in names])[channel]
        scores = x @ w + bonus
    return diversify(cands, keys, scores, ctx, top_n=top_n, max_per_genre=max_per_genre)


def diversify(
    cands: list[Candidate],
    keys: np.ndarray,
    scores: np.ndarray,
    ctx: RecallContext,
    *,
    top_n: int,
    max_per_genre: int,
) -> list[Ranked]:
    """The best `top_n` by score (ties by key) with at most `max_per_genre` per primary
    genre, topped up from what the cap held back when the catalog is narrow."""
    order = np.lexsort((keys, -scores))  # deterministic: ties by key
    primary = ctx.catalog.primary_genres(keys).tolist()
    rounded = scores.tolist()
    out: list[Ranked] = []
    per_genre: dict[int, int] = {}
    skipped: list[int] = []
    for i in order.tolist():
        g = primary[i]
        if per_genre.get(g, 0) >= max_per_genre:
            skipped.append(i)
            continue
        per_genre[g] = per_genre.get(g, 0) + 1
        out.append(Ranked(cands[i].key, round(rounded[i], 6), cands[i].channel))
        if len(out) == top_n:
            return out
    # a narrow catalog may not fill the list under the cap: fill from what the cap held back
    for i in skipped[: top_n - len(out)]:
        out.append(Ranked(cands[i].key, round(rounded[i], 6), cands[i].channel))
    return out
