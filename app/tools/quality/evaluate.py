"""Replay evaluation: time split, warm up on the past, replay the future event by event.

Every method is asked, for each positive event in the test part, whether the item
was in the user's list as it stood just before the event. Lists are recomputed
after each of the user's events (as the worker does with a batch of one), so the
pipeline list at an event is exactly what the worker would have had in Redis.
The full pipeline is the Recommender the worker runs (nearline_rec.factory); the
baselines are computed in the same replay, on the same events and the same state.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from nearline_rec.core.channels.genre import genre_recall
from nearline_rec.core.channels.trending import trending_recall
from nearline_rec.core.events import ItemUpdate, UserEvent, encode_item_update
from nearline_rec.core.pipeline import Recommender
from nearline_rec.core.rank import RankModel
from nearline_rec.core.recall import RecallContext
from nearline_rec.core.user_state import UserState
from nearline_rec.data.loaders import LoadError, Movie, read_embeddings, read_movies
from nearline_rec.errors import BadInput
from nearline_rec.extras import has
from nearline_rec.factory import build_recommender
from nearline_rec.producer import events_from_ratings, join_items
from nearline_rec.progress import Progress
from nearline_rec.records import decode_item_update
from nearline_rec.settings import Settings
from nearline_rec.tools.quality.baselines import ShortTermBaseline
from nearline_rec.tools.quality.metrics import MethodScore
from nearline_rec.tools.quality.ratings import RatingTable
from nearline_rec.tools.quality.train import (
    Embeddings,
    TrainConfig,
    TrainingError,
    train_embeddings,
)

METHODS = ("pipeline", "short_term", "popularity", "trending", "genre")
LABELS = {
    "pipeline": "full pipeline",
    "short_term": "short-term item-to-item + popularity",
    "popularity": "global popularity (all-time counts)",
    "trending": "trending (decayed popularity)",
    "genre": "top-rated in liked genres",
}


class EvaluationError(BadInput):
    """The inputs cannot be evaluated (one line, printed by the CLI)."""


@dataclass(frozen=True)
class EvalConfig:
    k: int = 10
    """Cut-off of HitRate@K, NDCG@K and coverage."""
    train_share: float = 0.8
    """The earliest share of ratings (by time) trains embeddings and warms up user state."""
    threshold: float = 4.0
    """A test rating at or above this is a positive event (it is scored)."""
    progress: bool = False
    ablation: bool = True
    """Also replay the pipeline without each recall channel (same replay, shared state)."""
    rankers: tuple[RankModel, ...] = ()
    """Other ranking models, each scored on the same candidates as an ablation variant."""
    embedding_method: str = "ppmi-svd"
    """How the pipeline's item vectors are trained on the train part
    (nearline_rec.tools.quality.train.METHODS);
    the short-term baseline keeps PPMI + SVD whatever this is."""


@dataclass(frozen=True)
class Scored:
    """One scored event: its position in the replay and each method's list before it."""

    index: int
    user_id: str
    item_id: str
    lists: dict[str, tuple[str, ...]]
    channels: tuple[str, ...]
    variant_channels: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Recall channel of each item of each ablation variant's list."""


@dataclass
class Replay:
    """What a replay produced: the scored events and counts of the ones left out."""

    scored: list[Scored] = field(default_factory=list)
    positives: int = 0
    cold: int = 0
    """Positive events of users with no earlier event (no list existed: skipped)."""
    unknown_item: int = 0
    """Scored events whose item is not in the catalog (no method can hit them)."""
    seconds: float = 0.0


@dataclass(frozen=True)
class Prepared:
    """Inputs of a run: the events in replay order, the split and the catalog updates."""

    events: list[UserEvent]
    n_train: int
    updates: list[ItemUpdate]
    embeddings: dict[str, Any]
    cooccurrence: tuple[list[str], np.ndarray]
    """PPMI + SVD item vectors of the train part (the short-term baseline's)."""


def check(settings: Settings, config: EvalConfig) -> None:
    if config.k > settings.ranking.top_n:
        raise EvaluationError(
            f"--k {config.k} is longer than the lists (NEARLINE_RANKING__TOP_N="
            f"{settings.ranking.top_n})"
        )
    if not 0.0 < config.train_share < 1.0:
        raise EvaluationError(f"train share must be between 0 and 1, got {config.train_share}")


def split_index(n: int, share: float) -> int:
    """Index of the first test event (at least one event on each side)."""
    if n < 2:
        raise EvaluationError(f"need at least 2 ratings to split by time, got {n}")
    return min(max(int(round(n * share)), 1), n - 1)


def catalog_updates(
    movies: Sequence[Movie], ids: Sequence[str], vectors: np.ndarray
) -> list[ItemUpdate]:
    """Item upserts as `nearline load-items` publishes them (every movie, with or without a
    vector), exactly as the worker decodes them from item-updates (the encoding rounds
    vectors to 6 decimals; both modes see the same)."""
    dim = vectors.shape[1]
    return [
        decode_item_update(u.item_id.encode(), encode_item_update(u), dim=dim)
        for u in join_items(movies, ids, vectors)[0]
    ]


def prepare(
    settings: Settings,
    ratings_path: str | Path,
    movies_path: str | Path,
    embeddings_path: str | Path | None,
    config: EvalConfig,
    *,
    train_config: TrainConfig | None = None,
) -> Prepared:
    """Read and check the files, split by time, train (or load) the item embeddings."""
    check(settings, config)
    movies = read_movies(movies_path)
    table = RatingTable.read(ratings_path)
    n_train = split_index(len(table), config.train_share)
    dim = settings.items.embedding_dim
    tc = train_config or TrainConfig(
        method=config.embedding_method, dim=dim, rating_center=settings.embedding.rating_center
    )
    if tc.dim != dim:
        raise EvaluationError(f"training dim {tc.dim} != NEARLINE_ITEMS__EMBEDDING_DIM {dim}")
    given = None if embeddings_path is None else read_embeddings(embeddings_path, expected_dim=dim)
    try:
        trained: Embeddings | None = train_embeddings(
            table.head(n_train), tc, movies=movies, progress=config.progress
        )
    except TrainingError as exc:
        if given is None:
            raise EvaluationError(f"{ratings_path}: train part: {exc}") from None
        trained = None  # the short-term baseline then uses the given vectors
    if trained is not None:
        # the baseline's vectors: PPMI + SVD of the co-occurrence (first; genre-filled follow)
        base = trained
        if tc.method != "ppmi-svd":
            base = train_embeddings(table.head(n_train), replace(tc, method="ppmi-svd"))
        n_cooc = int(base.info["items_trained"])
        cooc = (base.item_ids[:n_cooc], base.items[:n_cooc])
    if given is not None:
        ids, matrix = given
        emb_info: dict[str, Any] = {"source": str(embeddings_path), "items": len(ids)}
        if trained is None:
            cooc = (ids, matrix)
    else:
        assert trained is not None
        ids, matrix = trained.item_ids, trained.items
        emb_info = {"source": "trained on the train part", **trained.info}
    updates = catalog_updates(movies, ids, matrix)
    if not updates:
        raise LoadError(str(embeddings_path or ratings_path), None, "no item embeddings")
    events = list(events_from_ratings(table.rows()))
    return Prepared(
        events=events, n_train=n_train, updates=updates, embeddings=emb_info, cooccurrence=cooc
    )


class Baselines:
    """The comparison lists, from the same state and stream statistics as the pipeline."""

    def __init__(
        self, rec: Recommender, genre_min_ratings: int, short_term: ShortTermBaseline
    ) -> None:
        self.rec = rec
        self.genre_min_ratings = genre_min_ratings
        self.counts = np.zeros(0)
        self.short_term = short_term

    def observe(self, event: UserEvent) -> None:
        self.short_term.observe(event.user_id, event.item_id, event.rating)
        key = self.rec.catalog.key(event.item_id)
        if key is None:
            return
        if key >= len(self.counts):
            self.counts = np.concatenate([self.counts, np.zeros(key + 1024 - len(self.counts))])
        self.counts[key] += 1

    def popularity(self, ctx: RecallContext, n: int) -> list[int]:
        cap = ctx.catalog.capacity
        counts = np.zeros(cap)
        counts[: min(cap, len(self.counts))] = self.counts[:cap]
        ok = ctx.catalog.recommendable_mask[:cap] & (counts > 0)
        keys = np.flatnonzero(ok)
        keys = keys[np.lexsort((keys, -counts[keys]))]  # ties by key, like the core
        out: list[int] = []
        for key in keys.tolist():
            if key not in ctx.exclude:
                out.append(key)
                if len(out) == n:
                    break
        return out

    def lists(self, state: UserState, n: int) -> dict[str, tuple[str, ...]]:
        ctx = self.rec.context(state)
        item_id = self.rec.catalog.item_id
        return {
            "short_term": tuple(
                item_id(k) for k in self.short_term.recommend(state.user_id, ctx.exclude, n)
            ),
            "popularity": tuple(item_id(k) for k in self.popularity(ctx, n)),
            "trending": tuple(item_id(c.key) for c in trending_recall(ctx, n)),
            "genre": tuple(item_id(c.key) for c in genre_recall(ctx, n, self.genre_min_ratings)),
        }


def load_catalog(rec: Recommender, updates: Sequence[ItemUpdate]) -> None:
    rec.catalog.upsert_many(updates)
    rec.catalog.reindex()  # as the worker does once the item follower caught up


def replay(
    settings: Settings,
    prepared: Prepared,
    config: EvalConfig,
    *,
    recommender: Callable[[Settings], Recommender] = build_recommender,
) -> Replay:
    """Warm up on the train part, then score every positive test event of a known user."""
    t0 = time.perf_counter()
    rec = recommender(settings)
    load_catalog(rec, prepared.updates)
    top_n = settings.ranking.top_n
    ids, vectors = prepared.cooccurrence
    base = Baselines(
        rec,
        settings.recall.genre_min_ratings,
        ShortTermBaseline(rec.catalog, ids, vectors, config.threshold),
    )
    variants = ablation_variants(rec) if config.ablation else {}
    for model in config.rankers:
        variants[f"ranker {model.version}"] = (frozenset(), model)
    events, n_train = prepared.events, prepared.n_train
    positive = [
        i >= n_train and ev.rating is not None and ev.rating >= config.threshold
        for i, ev in enumerate(events)
    ]
    # The list made after event i stands until the user's next event: it is needed
    # only when that next event is scored.
    needed = [False] * len(events)
    next_positive: dict[str, bool] = {}
    for i in range(len(events) - 1, -1, -1):
        needed[i] = next_positive.get(events[i].user_id, False)
        next_positive[events[i].user_id] = positive[i]

    states: dict[str, UserState] = {}
    current: dict[str, tuple[dict[str, tuple[str, ...]], tuple[str, ...]]] = {}
    out = Replay()
    bar = Progress(len(events), "replay", "ev", enabled=config.progress)
    for i, ev in enumerate(events):
        if positive[i]:
            out.positives += 1
            before = current.get(ev.user_id)
            if before is None:
                out.cold += 1
            else:
                lists, channels, var_channels = before
                if rec.catalog.key(ev.item_id) is None:
                    out.unknown_item += 1
                out.scored.append(Scored(i, ev.user_id, ev.item_id, lists, channels, var_channels))
        state = states.get(ev.user_id)
        if state is None:
            state = states[ev.user_id] = UserState(user_id=ev.user_id)
        if rec.apply(state, ev, i):
            base.observe(ev)
            rec.touch(state)
            if needed[i]:
                rec_list = rec.recommend(state)
                lists = {"pipeline": tuple(it.item_id for it in rec_list.items)}
                lists.update(base.lists(state, top_n))
                var_channels = {}
                for name, v_list in rec.recommend_variants(state, variants).items():
                    lists[name] = tuple(it.item_id for it in v_list.items)
                    var_channels[name] = tuple(it.channel for it in v_list.items)
                current[ev.user_id] = (
                    lists,
                    tuple(it.channel for it in rec_list.items),
                    var_channels,
                )
            else:
                current[ev.user_id] = ({}, (), {})  # the user has a list; nobody will score it
        bar.update(1)
    bar.close()
    out.seconds = time.perf_counter() - t0
    return out


def ablation_variants(rec: Recommender) -> dict[str, tuple[frozenset[str], RankModel | None]]:
    """The pipeline without each of its recall channels (`Recommender.recommend_variants`)."""
    return {f"without {cfg.name}": (frozenset([cfg.name]), None) for cfg, _ in rec.channels}


def score(replay_out: Replay, k: int, catalog_size: int) -> dict[str, Any]:
    """Metrics per method over the scored events."""
    accs = {m: MethodScore(k) for m in METHODS}
    for s in replay_out.scored:
        for m in METHODS:
            accs[m].add(s.item_id, s.lists[m], s.channels if m == "pipeline" else None)
    return {m: {"label": LABELS[m], **accs[m].summary(catalog_size)} for m in METHODS}


def score_ablation(replay_out: Replay, k: int, catalog_size: int) -> dict[str, Any]:
    """Metrics of each ablation variant (same events as the methods)."""
    names = list(replay_out.scored[0].variant_channels) if replay_out.scored else []
    accs = {name: MethodScore(k) for name in names}
    for s in replay_out.scored:
        for name in names:
            accs[name].add(s.item_id, s.lists[name], s.variant_channels[name])
    return {name: acc.summary(catalog_size) for name, acc in accs.items()}


def evaluate(
    settings: Settings,
    prepared: Prepared,
    config: EvalConfig,
) -> tuple[dict[str, Any], Replay]:
    """The in-process report (JSON-ready) and the replay it came from."""
    check(settings, config)
    out = replay(settings, prepared, config)
    if not out.scored:
        raise EvaluationError(
            "no positive test event of a user with earlier events: nothing to score "
            f"(threshold {config.threshold}, {len(prepared.events) - prepared.n_train} test events)"
        )
    n_items = len(prepared.updates)
    report = {
        "k": config.k,
        "threshold": config.threshold,
        "train_share": config.train_share,
        "embedding_method": config.embedding_method,
        "events": {
            "total": len(prepared.events),
            "train": prepared.n_train,
            "test": len(prepared.events) - prepared.n_train,
            "split_time": prepared.events[prepared.n_train].timestamp,
            "positive_test": out.positives,
            "scored": len(out.scored),
            "skipped_cold_users": out.cold,
            "scored_item_not_in_catalog": out.unknown_item,
        },
        "catalog_items": n_items,
        "embeddings": prepared.embeddings,
        "model_version": build_model_version(settings),
        "methods": score(out, config.k, n_items),
        "ablation": score_ablation(out, config.k, n_items),
        "replay_seconds": round(out.seconds, 2),
    }
    return report, out


def build_model_version(settings: Settings) -> str:
    from nearline_rec.ranking import load_ranker

    return load_ranker(settings.ranking.model_path).version


def table_lines(report: dict[str, Any]) -> list[str]:
    """The quality table as markdown rows (docs/quality.md and CLI output)."""
    k = report["k"]
    lines = [
        f"| method | HitRate@{k} | NDCG@{k} | MRR | coverage@{k} |",
        "|---|---|---|---|---|",
    ]
    for m, r in report["methods"].items():
        name = f"**{r['label']}**" if m == "pipeline" else r["label"]
        lines.append(
            f"| {name} | {r[f'hit_rate@{k}']:.4f} | {r[f'ndcg@{k}']:.4f} | {r['mrr']:.4f} "
            f"| {r[f'coverage@{k}']:.3f} |"
        )
    return lines


def ablation_lines(report: dict[str, Any]) -> list[str]:
    """The ablation table: the pipeline, then each variant, with the change in HitRate@K."""
    k = report["k"]
    ablation = report.get("ablation") or {}
    if not ablation:
        return []
    hr, nd = f"hit_rate@{k}", f"ndcg@{k}"
    base = report["methods"]["pipeline"]
    lines = [
        f"| pipeline variant | HitRate@{k} | change | NDCG@{k} | MRR | coverage@{k} |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in [("full pipeline", base), *ablation.items()]:
        lines.append(
            f"| {name} | {r[hr]:.4f} | {r[hr] - base[hr]:+.4f} | {r[nd]:.4f} | {r['mrr']:.4f} "
            f"| {r[f'coverage@{k}']:.3f} |"
        )
    return lines


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path | None]:
    """quality.json, and quality.png when matplotlib (the `plot` extra) is installed: the JSON
    holds every figure, the PNG only draws them, so a runtime-only install still evaluates."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "quality.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if not has("matplotlib"):
        return json_path, None
    png_path = out_dir / "quality.png"
    plot(report, png_path)
    return json_path, png_path


def plot(report: dict[str, Any], path: Path) -> None:
    """Grouped bars of the metrics per method, and the pipeline's hits by channel."""
    from nearline_rec.extras import pyplot

    plt = pyplot()

    k = report["k"]
    methods = list(report["methods"])
    metrics = [f"hit_rate@{k}", f"ndcg@{k}", "mrr"]
    ablation = report.get("ablation") or {}
    fig, axes = plt.subplots(
        1,
        3 if ablation else 2,
        figsize=(17 if ablation else 12, 4.5),
        gridspec_kw={"width_ratios": [3, 2, 2] if ablation else [3, 2]},
    )
    ax, ax2 = axes[0], axes[1]
    width = 0.8 / len(methods)
    x = np.arange(len(metrics))
    for j, m in enumerate(methods):
        vals = [report["methods"][m][name] for name in metrics]
        bars = ax.bar(x + (j - (len(methods) - 1) / 2) * width, vals, width, label=m)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(x, [f"HitRate@{k}", f"NDCG@{k}", "MRR"])
    ax.set_ylabel("score")
    ev = report["events"]
    ax.set_title(f"replay of {ev['test']} test events, {ev['scored']} positive events scored")
    ax.legend(fontsize=8)
    channels = report["methods"]["pipeline"].get("channels", {})
    names = list(channels)
    y = np.arange(len(names))
    ax2.barh(y - 0.2, [channels[c]["hit_share"] for c in names], 0.4, label="share of hits")
    ax2.barh(y + 0.2, [channels[c]["slot_share"] for c in names], 0.4, label=f"share of top-{k}")
    ax2.set_yticks(y, names)
    ax2.invert_yaxis()
    ax2.set_title("full pipeline: recall channel of each item")
    ax2.legend(fontsize=8)
    if ablation:
        ax3 = axes[2]
        hr = f"hit_rate@{k}"
        names = ["full pipeline", *ablation]
        vals = [report["methods"]["pipeline"][hr], *(ablation[n][hr] for n in ablation)]
        bars = ax3.barh(np.arange(len(names)), vals, 0.6)
        ax3.bar_label(bars, fmt="%.4f", fontsize=7)
        if "short_term" in report["methods"]:
            ax3.axvline(report["methods"]["short_term"][hr], color="k", ls="--", lw=1)
        ax3.set_yticks(np.arange(len(names)), names)
        ax3.invert_yaxis()
        ax3.set_title(f"ablation: HitRate@{k} (dashed: short-term baseline)")
    if "e2e" in report:
        e = report["e2e"]
        hr = f"hit_rate@{k}"
        fig.suptitle(
            f"end-to-end through the worker: HitRate@{k} {e['methods']['pipeline'][hr]:.4f}"
            f" (in-process {report['methods']['pipeline'][hr]:.4f}),"
            f" identical lists {e['agreement']['identical_top_k']:.1%}",
            fontsize=9,
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
