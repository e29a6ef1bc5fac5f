"""Re-measure the tuning choices recorded in docs/quality.md.

    nearline sample /tmp/sample && python scripts/tune_quality.py /tmp/sample

Each row is one replay evaluation (nearline_rec.tools.quality.evaluate, the in-process mode) of the
sample with one setting changed from the row it names; rows print as a markdown table.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nearline_rec.core.rank import DEFAULT_MODEL
from nearline_rec.settings import ChannelSettings, Settings, load_settings
from nearline_rec.tools.quality.evaluate import EvalConfig, prepare, replay, score

DAY = 86_400

# The shipped values before tuning, so every effect is measured from a fixed start.
BEFORE_MODEL = {"popularity": 0.35, "recency": 0.1}
BEFORE = {
    "recall.popularity_half_life_seconds": 1 * DAY,
    "embedding.half_life_seconds": 14 * DAY,
}


def variant(base: Settings, changes: dict[str, Any]) -> Settings:
    """Settings with `section.field` changes; `model.<feature>` edits the ranking model."""
    sections: dict[str, dict[str, Any]] = {}
    model: dict[str, float] = {}
    for key, value in changes.items():
        section, name = key.split(".", 1)
        if section == "model":
            model[name] = value
        else:
            if section == "recall" and isinstance(value, tuple):
                value = ChannelSettings(k=value[0], quota=value[1], enabled=value[1] > 0)
            sections.setdefault(section, {})[name] = value
    if model:
        doc = json.loads(Path(DEFAULT_MODEL).read_text())
        doc["weights"].update(model)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(doc, f)
        sections.setdefault("ranking", {})["model_path"] = f.name
    update = {s: getattr(base, s).model_copy(update=v) for s, v in sections.items()}
    return base.model_copy(update=update)


def main(sample: Path) -> None:
    base = load_settings()
    config = EvalConfig()
    prepared = prepare(base, sample / "ratings.csv", sample / "movies.csv", None, config)
    before = {**BEFORE, **{f"model.{k}": v for k, v in BEFORE_MODEL.items()}}
    after_ranker = {**before, "model.popularity": 0.8, "model.recency": 0.0}
    after_pop = {**after_ranker, "recall.popularity_half_life_seconds": 30 * DAY}
    tuned: dict[str, Any] = {}  # the shipped defaults
    rows: list[tuple[str, dict[str, Any]]] = [
        ("defaults before tuning", before),
        ("ranker popularity 0.35 -> 0.2", {**before, "model.popularity": 0.2}),
        ("ranker popularity 0.35 -> 0.5", {**before, "model.popularity": 0.5}),
        ("ranker popularity 0.35 -> 0.8", {**before, "model.popularity": 0.8}),
        ("ranker popularity 0.35 -> 1.2", {**before, "model.popularity": 1.2}),
        ("ranker genre_match 0.4 -> 0", {**before, "model.genre_match": 0.0}),
        ("ranker recall_score 0 -> 0.2", {**before, "model.recall_score": 0.2}),
        ("ranker popularity 0.8, recency 0.1 -> 0", after_ranker),
        (
            "... + popularity half-life 1 d -> 7 d",
            {**after_ranker, "recall.popularity_half_life_seconds": 7 * DAY},
        ),
        ("... + popularity half-life 1 d -> 30 d", after_pop),
        (
            "... + popularity half-life 1 d -> 90 d",
            {**after_ranker, "recall.popularity_half_life_seconds": 90 * DAY},
        ),
        ("... + user half-life 14 d -> 7 d", {**after_pop, "embedding.half_life_seconds": 7 * DAY}),
        ("... + user half-life 14 d -> 30 d (shipped defaults)", tuned),
        ("shipped, user half-life 90 d", {"embedding.half_life_seconds": 90 * DAY}),
        ("shipped, rating center 3.0 -> 2.5", {"embedding.rating_center": 2.5}),
        ("shipped, rating center 3.0 -> 3.5", {"embedding.rating_center": 3.5}),
        ("shipped, without embedding channel", {"recall.embedding": (100, 0)}),
        ("shipped, without item2item channel", {"recall.item2item": (60, 0)}),
        ("shipped, without similar_users channel", {"recall.similar_users": (40, 0)}),
        ("shipped, without trending channel", {"recall.trending": (30, 0)}),
        (
            "shipped, without genre and newest channels",
            {"recall.genre": (40, 0), "recall.newest": (20, 0)},
        ),
        ("shipped, embedding k/quota 100/60 -> 200/120", {"recall.embedding": (200, 120)}),
        ("shipped, trending k/quota 30/15 -> 60/40", {"recall.trending": (60, 40)}),
        ("shipped, diversity cap 8 -> 12 per genre", {"ranking.max_per_genre": 12}),
    ]
    k = config.k
    print(f"| variant | HitRate@{k} | NDCG@{k} | MRR | coverage@{k} | best baseline HitRate@{k} |")
    print("|---|---|---|---|---|---|")
    for label, changes in rows:
        t0 = time.perf_counter()
        out = replay(variant(base, changes), prepared, config)
        methods = score(out, k, len(prepared.updates))
        p = methods["pipeline"]
        best = max(m[f"hit_rate@{k}"] for name, m in methods.items() if name != "pipeline")
        print(
            f"| {label} | {p[f'hit_rate@{k}']:.4f} | {p[f'ndcg@{k}']:.4f} | {p['mrr']:.4f} "
            f"| {p[f'coverage@{k}']:.3f} | {best:.4f} |",
            flush=True,
        )
        print(f"  ({time.perf_counter() - t0:.0f}s)", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/tune_quality.py SAMPLE_DIR")
    main(Path(sys.argv[1]))
