"""Evaluation of the friends channel on data with a friend graph and no timestamps (HetRec
2011 Last.fm: user_artists.dat + user_friends.dat): a per-user random holdout.

Each user's listened items are split at random (seeded): the held-out part is what the list
should find. The rest is replayed as like events in a random order through the same core
the worker runs, with the friend graph applied as the worker applies it (relations split
into follow / follower records, each like forwarded to the followers with the same caps),
so a user's friends' likes reach the user's state exactly as they would through Kafka.
Then one list per user, with the friends channel on and off (the only difference), scored
against the user's held-out items: HitRate@K, NDCG@K, and the share of hits per channel."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nearline_rec.core.events import UserEvent
from nearline_rec.core.pipeline import Recommender
from nearline_rec.core.social import Activity, Relation, split_relation
from nearline_rec.core.user_state import UserState
from nearline_rec.data.loaders import Rating
from nearline_rec.factory import build_recommender
from nearline_rec.progress import Progress
from nearline_rec.settings import Settings
from nearline_rec.tools.quality.evaluate import EvaluationError, catalog_updates, load_catalog
from nearline_rec.tools.quality.metrics import MethodScore
from nearline_rec.tools.quality.ratings import RatingTable
from nearline_rec.tools.quality.train import TrainConfig, TrainingError, train_embeddings

T0 = 1_700_000_000.0
VARIANTS = {"with": "full pipeline with the friends channel", "without": "without it"}
README_START = "<!-- friends-eval:start (written by nearline evaluate --plays) -->"
README_END = "<!-- friends-eval:end -->"


@dataclass(frozen=True)
class HoldoutConfig:
    k: int = 10
    holdout: float = 0.2
    """Share of each user's items held out (at least one)."""
    min_items: int = 5
    """Users with fewer items are replayed but not scored."""
    seed: int = 42
    progress: bool = False


def split(
    plays: Sequence[tuple[str, str, float]], cfg: HoldoutConfig
) -> tuple[list[tuple[str, str]], dict[str, list[str]]]:
    """(train pairs in a seeded random order, held-out items per user)."""
    rng = np.random.default_rng(cfg.seed)
    per_user: dict[str, list[str]] = {}
    for user, item, _ in plays:
        per_user.setdefault(user, []).append(item)
    train: list[tuple[str, str]] = []
    test: dict[str, list[str]] = {}
    for user, items in per_user.items():
        items = list(dict.fromkeys(items))
        n_test = max(1, round(cfg.holdout * len(items))) if len(items) >= cfg.min_items else 0
        order = rng.permutation(len(items))
        held = {items[i] for i in order[:n_test]}
        if held:
            test[user] = sorted(held)
        train.extend((user, i) for i in items if i not in held)
    shuffled = [train[i] for i in rng.permutation(len(train))]
    return shuffled, test


def deliver(rec: Recommender, states: dict[str, UserState], acts: Iterable[Activity]) -> int:
    """Apply friend-activity records to their users' states, and what they send on (a
    backfill for a new follower), as the worker's friend-activity agent does. Returns the
    number of records applied."""
    queue = deque(acts)
    n = 0
    while queue:
        act = queue.popleft()
        state = states.setdefault(act.user, UserState(user_id=act.user))
        queue.extend(rec.apply_social(state, act).forwards)
        n += 1
    return n


def replay(
    settings: Settings,
    updates: list[Any],
    train: list[tuple[str, str]],
    pairs: Sequence[tuple[str, str]],
    friends_on: bool,
    progress: bool,
) -> tuple[Recommender, dict[str, UserState], int]:
    recall = settings.recall.model_copy(
        update={"friends": settings.recall.friends.model_copy(update={"enabled": friends_on})}
    )
    rec = build_recommender(settings.model_copy(update={"recall": recall}))
    load_catalog(rec, updates)
    states: dict[str, UserState] = {}
    relations = [Relation(f"rel-{a}-{b}", a, b, "add", T0 - 1.0) for a, b in dict.fromkeys(pairs)]
    forwarded = deliver(rec, states, (act for rel in relations for act in split_relation(rel)))
    bar = Progress(len(train), "replay", "ev", enabled=progress)
    for offset, (user, item) in enumerate(train):
        state = states.setdefault(user, UserState(user_id=user))
        ev = UserEvent(f"p-{user}-{item}", user, item, "like", T0 + offset)
        if rec.apply(state, ev, offset):
            rec.touch(state)
            forwarded += deliver(rec, states, rec.like_forwards(state, ev))
        bar.update(1)
    bar.close()
    return rec, states, forwarded


def evaluate_holdout(
    settings: Settings,
    plays: Sequence[tuple[str, str, float]],
    pairs: Sequence[tuple[str, str]],
    cfg: HoldoutConfig,
    *,
    sources: dict[str, str] | None = None,
) -> dict[str, Any]:
    if cfg.k > settings.ranking.top_n:
        raise EvaluationError(
            f"--k {cfg.k} is longer than the lists (NEARLINE_RANKING__TOP_N="
            f"{settings.ranking.top_n})"
        )
    t0 = time.perf_counter()
    train, test = split(plays, cfg)
    table = RatingTable.from_ratings(Rating(u, i, 5.0, float(n)) for n, (u, i) in enumerate(train))
    tc = TrainConfig(dim=settings.items.embedding_dim, seed=cfg.seed)
    try:
        emb = train_embeddings(table, tc, progress=cfg.progress)
    except TrainingError as exc:
        raise EvaluationError(f"train part: {exc}") from None
    updates = catalog_updates([], emb.item_ids, emb.items)
    users = {u for u, _ in train} | set(test)
    edges = [(a, b) for a, b in pairs if a in users and b in users]
    methods: dict[str, Any] = {}
    for name, on in (("with", True), ("without", False)):
        rec, states, forwarded = replay(settings, updates, train, edges, on, cfg.progress)
        acc = MethodScore(cfg.k)
        cold = 0
        for user, held in test.items():
            state = states.get(user)
            if state is None or not state.n_events:
                cold += len(held)
                continue
            got = rec.recommend(state)
            items = [i.item_id for i in got.items]
            channels = [i.channel for i in got.items]
            for target in held:
                acc.add(target, items, channels)
        methods[name] = {
            "label": VARIANTS[name],
            **acc.summary(len(updates)),
            "friend_records_applied": forwarded,
            "held_out_of_users_without_history": cold,
        }
    with_friends = methods["with"].get("channels", {}).get("friends", {})
    return {
        "dataset": sources or {},
        "protocol": (
            f"per-user random holdout of {cfg.holdout:.0%} of each user's items (users with"
            f" >= {cfg.min_items}), seed {cfg.seed}; the rest replayed as likes in a random"
            " order; one list per user"
        ),
        "k": cfg.k,
        "users": len(users),
        "users_scored": len(test),
        "friend_edges": len(edges),
        "train_likes": len(train),
        "held_out": sum(len(v) for v in test.values()),
        "catalog_items": len(updates),
        "social_policy": {
            "likes_kept": settings.recall.friends_likes_kept,
            "fanout_per_like": settings.recall.friends_fanout_per_like,
            "friends_max": settings.recall.friends_max,
        },
        "methods": methods,
        "friends_share_of_hits": with_friends.get("hit_share", 0.0),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def table_lines(report: dict[str, Any]) -> list[str]:
    k = report["k"]
    lines = [
        f"| Last.fm 2k, per-user holdout | HitRate@{k} | NDCG@{k} | friends' share of hits |",
        "|---|---|---|---|",
    ]
    for m in report["methods"].values():
        share = m.get("channels", {}).get("friends", {}).get("hit_share", 0.0)
        lines.append(
            f"| {m['label']} | {m[f'hit_rate@{k}']:.4f} | {m[f'ndcg@{k}']:.4f} | {share:.1%} |"
        )
    return lines


def write_readme(report: dict[str, Any], readme: Path) -> None:
    """Replace the table between the markers in the README with this report's."""
    text = readme.read_text(encoding="utf-8")
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise EvaluationError(f"{readme}: no friends evaluation markers to write between")
    body = "\n".join([README_START, *table_lines(report), ""])
    readme.write_text(text[:start] + body + text[end:], encoding="utf-8")
