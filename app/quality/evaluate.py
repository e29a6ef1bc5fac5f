"""Replay evaluation: time split, warm up on the past, replay the future event by event.

Every method is asked, for each positive event in the test part, whether the item
was in the user's list as it stood just before the event. Lists are recomputed
after each of the user's events (as the worker does with a batch of one), so the
pipeline list at an event is exactly what the worker would have had in Redis.
The full pipeline is the Recommender the worker runs (app.factory); the
baselines are computed in the same replay, on the same events and the same state.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.core.channels.genre import genre_recall
from app.core.channels.trending import trending_recall
from app.core.events import ItemUpdate, UserEvent, decode_item_update, encode_item_update
from app.core.pipeline import Recommender
from app.core.recall import RecallContext
from app.core.user_state import UserState
from app.data.loaders import LoadError, Movie, read_embeddings, read_movies
from app.errors import BadInput
from app.factory import build_recommender
from app.producer import events_from_ratings, join_items
from app.progress import Progress
from app.quality.metrics import MethodScore
from app.quality.ratings import RatingTable
from app.quality.train import Embeddings, TrainConfig, TrainingError, train_embeddings
from app.settings import Settings

METHODS = ("pipeline", "popularity", "trending", "genre")
LABELS = {
    "pipeline": "full pipeline",
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


@dataclass(frozen=True)
class Scored:
    """One scored event: its position in the replay and each method's list before it."""

    index: int
    user_id: str
    item_id: str
    lists: dict[str, tuple[str, ...]]
    channels: tuple[str, ...]


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
    if embeddings_path is not None:
        ids, matrix = read_embeddings(embeddings_path, expected_dim=dim)
        emb_info: dict[str, Any] = {"source": str(embeddings_path), "items": len(ids)}
    else:
        tc = train_config or TrainConfig(dim=dim, rating_center=settings.embedding.rating_center)
        if tc.dim != dim:
            raise EvaluationError(f"training dim {tc.dim} != NEARLINE_ITEMS__EMBEDDING_DIM {dim}")
        try:
            trained: Embeddings = train_embeddings(
                table.head(n_train), tc, movies=movies, progress=config.progress
            )
        except TrainingError as exc:
            raise EvaluationError(f"{ratings_path}: train part: {exc}") from None
        ids, matrix = trained.item_ids, trained.items
        emb_info = {"source": "trained on the train part", **trained.info}
    updates = catalog_updates(movies, ids, matrix)
    if not updates:
        raise LoadError(str(embeddings_path or ratings_path), None, "no item embeddings")
    events = list(events_from_ratings(table.rows()))
    return Prepared(events=events, n_train=n_train, updates=updates, embeddings=emb_info)


class Baselines:
    """The comparison lists, from the same state and stream statistics as the pipeline."""

    def __init__(self, rec: Recommender, genre_min_ratings: int) -> None:
        self.rec = rec
        self.genre_min_ratings = genre_min_ratings
        self.counts = np.zeros(0)

    def observe(self, item_id: str) -> None:
        key = self.rec.catalog.key(item_id)
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
    base = Baselines(rec, settings.recall.genre_min_ratings)
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
                lists, channels = before
                if rec.catalog.key(ev.item_id) is None:
                    out.unknown_item += 1
                out.scored.append(Scored(i, ev.user_id, ev.item_id, lists, channels))
        state = states.get(ev.user_id)
        if state is None:
            state = states[ev.user_id] = UserState(user_id=ev.user_id)
        if rec.apply(state, ev, i):
            base.observe(ev.item_id)
            rec.touch(state)
            if needed[i]:
                rec_list = rec.recommend(state)
                lists = {"pipeline": tuple(it.item_id for it in rec_list.items)}
                lists.update(base.lists(state, top_n))
                current[ev.user_id] = (lists, tuple(it.channel for it in rec_list.items))
            else:
                current[ev.user_id] = ({}, ())  # the user has a list; nobody will score it
        bar.update(1)
    bar.close()
    out.seconds = time.perf_counter() - t0
    return out


def score(replay_out: Replay, k: int, catalog_size: int) -> dict[str, Any]:
    """Metrics per method over the scored events."""
    accs = {m: MethodScore(k) for m in METHODS}
    for s in replay_out.scored:
        for m in METHODS:
            accs[m].add(s.item_id, s.lists[m], s.channels if m == "pipeline" else None)
    return {m: {"label": LABELS[m], **accs[m].summary(catalog_size)} for m in METHODS}


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
        "replay_seconds": round(out.seconds, 2),
    }
    return report, out


def build_model_version(settings: Settings) -> str:
    from app.core.rank import load_model

    return load_model(settings.ranking.model_path).version


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


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "quality.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    png_path = out_dir / "quality.png"
    plot(report, png_path)
    return json_path, png_path


def plot(report: dict[str, Any], path: Path) -> None:
    """Grouped bars of the metrics per method, and the pipeline's hits by channel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = report["k"]
    methods = list(report["methods"])
    metrics = [f"hit_rate@{k}", f"ndcg@{k}", "mrr"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
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
