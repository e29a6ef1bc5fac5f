"""`nearline train-ranker`: a learned ranker fitted to replayed real behaviour, exported to ONNX.

The earlier part of a ratings log (`train_share`, the same split `nearline evaluate` uses, so
a ranker trained and evaluated on one file never sees the evaluation's test part) is split
again by time: the first part trains the item embeddings and warms up user state and the
stream statistics; the rest is replayed event by event through the Recommender the worker
runs. At each positive event of a user with history, the recall channels run on the user's
state just before the event and every merged candidate becomes a row of
`nearline_rec.core.rank.LEARNED_FEATURES`; its label is 1 for the item the user went on to
like. Groups
whose liked item recall did not find teach nothing to a ranker and are left out.

Two well-kept learners are fitted on the earlier 80% of the groups and compared on the rest
(NDCG@10 and HitRate@10 among the candidates, with the built-in linear ranker on the same
rows): LightGBM's lambdarank and scikit-learn's logistic regression. The better one is
exported to ONNX (onnxmltools / skl2onnx) with a model card beside it.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nearline_rec.core.rank import FEATURES, LEARNED_FEATURES, RankModel, learned_features
from nearline_rec.core.recall import merge
from nearline_rec.core.user_state import UserState
from nearline_rec.factory import build_recommender
from nearline_rec.progress import Progress
from nearline_rec.settings import Settings
from nearline_rec.tools.quality.evaluate import (
    EvalConfig,
    EvaluationError,
    load_catalog,
    prepare,
    split_index,
)

KINDS = ("lightgbm", "logistic")


@dataclass(frozen=True)
class LearnConfig:
    train_share: float = 0.8
    """The earliest share of ratings this command may read (evaluate's train part)."""
    example_share: float = 0.3
    """The last share of that part yields the examples; the rest warms up."""
    threshold: float = 3.5
    """A rating at or above this is a positive event."""
    negatives: int = 40
    """Negatives sampled per training group (validation groups keep every candidate)."""
    valid_share: float = 0.2
    """The latest share of the groups is held out to compare the learners."""
    kind: str = "auto"
    """"lightgbm", "logistic", or "auto" (the better on the held-out groups)."""
    seed: int = 42
    trees: int = 150
    progress: bool = False
    embedding_method: str = "ppmi-svd"
    """How the item vectors are trained on the warm-up part
    (nearline_rec.tools.quality.train.METHODS)."""


@dataclass
class Examples:
    x: np.ndarray
    """(rows, len(LEARNED_FEATURES)) float32."""
    y: np.ndarray
    """1 for the item the user liked next, else 0."""
    group: np.ndarray
    """Group number of each row (one group per scored event, in time order)."""
    info: dict[str, Any] = field(default_factory=dict)


def build_examples(
    settings: Settings, ratings: Path, movies: Path, config: LearnConfig
) -> Examples:
    """Replay the log through the real recall channels; one group of rows per positive event."""
    warm_share = config.train_share * (1.0 - config.example_share)
    prepared = prepare(
        settings,
        ratings,
        movies,
        None,
        EvalConfig(
            train_share=warm_share, progress=False, embedding_method=config.embedding_method
        ),
    )
    events = prepared.events
    n_warm = prepared.n_train
    n_end = split_index(len(events), config.train_share)
    if n_end <= n_warm:
        raise EvaluationError("the example part is empty: raise --train-share")
    rec = build_recommender(settings)
    load_catalog(rec, prepared.updates)
    probe = RankModel("features", rec.model.weights, features=LEARNED_FEATURES)
    rng = np.random.default_rng(config.seed)
    states: dict[str, UserState] = {}
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    groups: list[np.ndarray] = []
    n_groups = positives = missed = 0
    bar = Progress(n_end, "replay", "ev", enabled=config.progress)
    for i, ev in enumerate(events[:n_end]):
        state = states.get(ev.user_id)
        if (
            i >= n_warm
            and state is not None
            and ev.rating is not None
            and ev.rating >= config.threshold
        ):
            positives += 1
            target = rec.catalog.key(ev.item_id)
            ctx = rec.context(state)
            if target is not None and (ctx.embedding is not None or state.liked):
                cands = merge(rec.recall(state))
                keys = np.array([c.key for c in cands], np.int64)
                hit = keys == target
                if hit.any():
                    x = learned_features(cands, ctx, probe)
                    xs.append(x)
                    ys.append(hit.astype(np.float32))
                    groups.append(np.full(len(keys), n_groups, np.int64))
                    n_groups += 1
                else:
                    missed += 1
        if state is None:
            state = states[ev.user_id] = UserState(user_id=ev.user_id)
        if rec.apply(state, ev, i):
            rec.touch(state)
        bar.update(1)
    bar.close()
    if n_groups < 10:
        raise EvaluationError(
            f"only {n_groups} positive events whose item recall found: too little to learn from"
        )
    x, y, g = np.vstack(xs), np.concatenate(ys), np.concatenate(groups)
    x, y, g = _sample_negatives(x, y, g, n_groups, config, rng)
    return Examples(
        x,
        y,
        g,
        info={
            "events_read": n_end,
            "warm_up_events": n_warm,
            "example_events": n_end - n_warm,
            "positive_events": positives,
            "groups": n_groups,
            "groups_item_not_recalled": missed,
            "rows": len(y),
            "embeddings": prepared.embeddings,
        },
    )


def _sample_negatives(
    x: np.ndarray,
    y: np.ndarray,
    g: np.ndarray,
    n_groups: int,
    config: LearnConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training groups keep their positive and `negatives` sampled negatives; the held-out
    groups keep every candidate, so they are scored as the ranker will see them."""
    first_valid = n_groups - max(int(round(n_groups * config.valid_share)), 1)
    keep = (y > 0) | (g >= first_valid)
    train_neg = np.flatnonzero((g < first_valid) & (y == 0))
    order = rng.permutation(len(train_neg))
    taken = np.zeros(n_groups, np.int64)
    for idx in train_neg[order].tolist():
        grp = int(g[idx])
        if taken[grp] < config.negatives:
            taken[grp] += 1
            keep[idx] = True
    return x[keep], y[keep], g[keep]


# -- learners --------------------------------------------------------------------------------


def _sizes(g: np.ndarray) -> list[int]:
    """Group sizes in order (rows of a group are contiguous)."""
    _, counts = np.unique(g, return_counts=True)
    return counts.tolist()


def fit(kind: str, x: np.ndarray, y: np.ndarray, g: np.ndarray | None, config: LearnConfig) -> Any:
    """The learner fitted on rows `x`, labels `y`, groups `g` (lambdarank needs them)."""
    if kind == "lightgbm":
        import lightgbm as lgb

        model = lgb.LGBMRanker(
            objective="lambdarank",
            n_estimators=config.trees,
            learning_rate=0.05,
            num_leaves=31,
            min_child_samples=20,
            random_state=config.seed,
            deterministic=True,
            force_row_wise=True,
            num_threads=1,
            verbose=-1,
        )
        assert g is not None, "lambdarank needs the groups"
        model.fit(x, y, group=_sizes(g))
        return model
    if kind == "logistic":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
        model.fit(x, y)
        return model
    raise ValueError(f"unknown learner {kind!r}; known: {', '.join(KINDS)}")


def predict(kind: str, model: Any, x: np.ndarray) -> np.ndarray:
    """The training library's own scores (what the ONNX export must reproduce)."""
    if kind == "lightgbm":
        return np.asarray(model.predict(x), np.float64)
    return np.asarray(model.predict_proba(x)[:, 1], np.float64)


def linear_scores(x: np.ndarray, model: RankModel) -> np.ndarray:
    """The built-in linear ranker on LEARNED_FEATURES rows (its features are the first)."""
    w = np.array([model.weights[f] for f in FEATURES])
    out = x[:, : len(FEATURES)].astype(np.float64) @ w
    for j, name in enumerate(LEARNED_FEATURES):
        if name.startswith("channel_"):
            out += x[:, j] * model.channel_bonus.get(name.removeprefix("channel_"), 0.0)
    return out


def group_metrics(
    scores: np.ndarray, y: np.ndarray, g: np.ndarray, k: int = 10
) -> dict[str, float]:
    """HitRate@k and NDCG@k of the positive among each group's candidates (ties by row)."""
    hits = ndcg = 0.0
    groups = np.unique(g)
    for grp in groups.tolist():
        rows = np.flatnonzero(g == grp)
        order = rows[np.lexsort((rows, -scores[rows]))]
        rank = int(np.flatnonzero(y[order] > 0)[0]) + 1
        if rank <= k:
            hits += 1
            ndcg += 1.0 / math.log2(rank + 1)
    n = max(len(groups), 1)
    return {f"hit_rate@{k}": hits / n, f"ndcg@{k}": ndcg / n, "groups": float(len(groups))}


# -- export ----------------------------------------------------------------------------------


def to_onnx(kind: str, model: Any, n_features: int) -> tuple[bytes, str, int]:
    """ONNX bytes, the output to read and its column."""
    if kind == "lightgbm":
        import onnxmltools
        from onnxmltools.convert.common.data_types import FloatTensorType

        onx = onnxmltools.convert_lightgbm(
            model, initial_types=[("features", FloatTensorType([None, n_features]))], zipmap=False
        )
        return onx.SerializeToString(), onx.graph.output[0].name, 0
    from skl2onnx import to_onnx as skl_to_onnx
    from sklearn.linear_model import LogisticRegression

    onx = skl_to_onnx(
        model,
        np.zeros((1, n_features), np.float32),
        options={LogisticRegression: {"zipmap": False}},
    )
    return onx.SerializeToString(), "probabilities", 1


def digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def train_ranker(
    settings: Settings, ratings: Path, movies: Path, out_dir: Path, config: LearnConfig
) -> dict[str, Any]:
    """Build the examples, fit and compare the learners, export the chosen one; the card."""
    t0 = time.perf_counter()
    ex = build_examples(settings, ratings, movies, config)
    n_groups = int(ex.info["groups"])
    first_valid = n_groups - max(int(round(n_groups * config.valid_share)), 1)
    tr, va = ex.group < first_valid, ex.group >= first_valid
    kinds = KINDS if config.kind == "auto" else (config.kind,)
    linear = build_recommender(settings).model
    compared: dict[str, dict[str, float]] = {
        f"linear {linear.version}": group_metrics(
            linear_scores(ex.x[va], linear), ex.y[va], ex.group[va]
        )
    }
    fitted = {}
    for kind in kinds:
        fitted[kind] = fit(kind, ex.x[tr], ex.y[tr], ex.group[tr], config)
        compared[kind] = group_metrics(
            predict(kind, fitted[kind], ex.x[va]), ex.y[va], ex.group[va]
        )
    chosen = max(kinds, key=lambda kd: (compared[kd]["ndcg@10"], kd == "lightgbm"))
    onnx_bytes, output, column = to_onnx(chosen, fitted[chosen], len(LEARNED_FEATURES))
    data = digest(ratings, movies)
    version = f"{chosen}-{data[:8]}-{hashlib.sha256(onnx_bytes).hexdigest()[:8]}"
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / "ranker.onnx"
    model_path.write_bytes(onnx_bytes)
    card = {
        "version": version,
        "kind": chosen,
        "features": list(LEARNED_FEATURES),
        "output": output,
        "column": column,
        "recency_half_life_days": linear.recency_half_life_days,
        "training_data": {
            "ratings": Path(ratings).name,
            "movies": Path(movies).name,
            "sha256": data,
        },
        "examples": {k: v for k, v in ex.info.items() if k != "embeddings"},
        # without the training time: the card of a run is the card of the same inputs
        "embeddings": {k: v for k, v in ex.info["embeddings"].items() if k != "seconds"},
        "config": {
            "train_share": config.train_share,
            "example_share": config.example_share,
            "threshold": config.threshold,
            "negatives": config.negatives,
            "valid_share": config.valid_share,
            "seed": config.seed,
            "trees": config.trees,
            "embedding_method": config.embedding_method,
        },
        "offline_metrics": {
            "held_out_groups": n_groups - first_valid,
            "note": "positive among the merged recall candidates of each held-out event",
            "models": compared,
        },
    }
    card_file = out_dir / "ranker.card.json"
    card_file.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return {
        "model": model_path,
        "card": card_file,
        "card_doc": card,
        "seconds": time.perf_counter() - t0,
        "fitted": fitted[chosen],
        "examples": ex,
    }
