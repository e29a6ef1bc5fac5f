"""Offline quality: training recovers planted tastes, metrics have known answers, the
evaluation runs on any MovieLens-format file, and CLI errors are one line."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from nearline_rec.core.channels import CHANNELS
from nearline_rec.data.loaders import read_embeddings
from nearline_rec.data.sample import generate_sample
from nearline_rec.tools.cli import main
from nearline_rec.tools.quality.e2e import compare
from nearline_rec.tools.quality.evaluate import EvalConfig, Prepared, Replay, Scored, split_index
from nearline_rec.tools.quality.metrics import score_lists
from nearline_rec.tools.quality.ratings import RatingTable
from nearline_rec.tools.quality.train import (
    TrainConfig,
    TrainingError,
    cooccurrence,
    ppmi,
    train_embeddings,
)


@pytest.fixture(scope="module")
def small_sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    return generate_sample(out, n_items=300, n_users=120, n_ratings=6000, dim=16, seed=5)


def _one_line_error(res) -> str:
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 1, res.output
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


# -- training ----------------------------------------------------------------------------


def test_training_puts_items_of_one_taste_closer_than_across_tastes(small_sample):
    truth = json.loads(small_sample.truth_path.read_text())
    table = RatingTable.read(small_sample.ratings_path)
    emb = train_embeddings(table, TrainConfig(dim=16, seed=3))
    taste = np.array([truth["items"][i]["taste"] for i in emb.item_ids])
    sims = emb.items @ emb.items.T
    same = taste[:, None] == taste[None, :]
    np.fill_diagonal(same, False)
    across = taste[:, None] != taste[None, :]
    assert sims[same].mean() > sims[across].mean() + 0.3
    # nearest neighbours mostly share the planted taste
    np.fill_diagonal(sims, -np.inf)
    nn = np.argsort(-sims, axis=1)[:, :5]
    assert (taste[nn] == taste[:, None]).mean() > 0.8
    assert np.allclose(np.linalg.norm(emb.items, axis=1), 1.0, atol=1e-5)


def test_training_is_seeded_and_writes_the_item2vec_format(small_sample, tmp_path):
    table = RatingTable.read(small_sample.ratings_path)
    a = train_embeddings(table, TrainConfig(dim=8, seed=1))
    b = train_embeddings(table, TrainConfig(dim=8, seed=1))
    assert a.item_ids == b.item_ids and np.array_equal(a.items, b.items)
    out, users = tmp_path / "items.txt", tmp_path / "users.txt"
    res = CliRunner().invoke(
        main,
        [
            "train-embeddings",
            "--ratings",
            str(small_sample.ratings_path),
            "--dim",
            "8",
            "--out",
            str(out),
            "--users-out",
            str(users),
            "--seed",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    ids, matrix = read_embeddings(out, expected_dim=8)
    assert ids == a.item_ids
    assert np.allclose(matrix, a.items, atol=1e-5)
    user_ids, user_matrix = read_embeddings(users, expected_dim=8)
    assert len(user_ids) == user_matrix.shape[0] > 0


@pytest.mark.parametrize("method", ["als", "bpr"])
def test_implicit_methods_learn_the_planted_tastes_and_are_seeded(small_sample, method):
    truth = json.loads(small_sample.truth_path.read_text())
    table = RatingTable.read(small_sample.ratings_path)
    cfg = TrainConfig(method=method, dim=16, seed=3, iterations=30, learning_rate=0.05)
    emb = train_embeddings(table, cfg)
    again = train_embeddings(table, cfg)
    assert emb.item_ids == again.item_ids and np.array_equal(emb.items, again.items)
    assert emb.items.shape == (len(emb.item_ids), 16)  # BPR's bias column is not a dimension
    assert np.allclose(np.linalg.norm(emb.items, axis=1), 1.0, atol=1e-5)
    # every item someone liked has a vector, and only those
    liked = {table.item_ids[i] for i in np.unique(table.item[table.rating >= 3.5])}
    assert set(emb.item_ids) == liked
    taste = np.array([truth["items"][i]["taste"] for i in emb.item_ids])
    sims = emb.items @ emb.items.T
    np.fill_diagonal(sims, -np.inf)
    nn = np.argsort(-sims, axis=1)[:, :5]
    assert (taste[nn] == taste[:, None]).mean() > 0.6
    assert emb.info["interactions"] > 0 and "cooccurrence_nnz" not in emb.info


def test_unknown_embedding_method_is_a_one_line_error(small_sample, tmp_path):
    with pytest.raises(TrainingError, match="unknown embedding method 'svd'"):
        train_embeddings(RatingTable.read(small_sample.ratings_path), TrainConfig(method="svd"))
    res = CliRunner().invoke(
        main,
        [
            "train-embeddings",
            "--ratings",
            str(small_sample.ratings_path),
            "--out",
            str(tmp_path / "x.txt"),
            "--embedding-method",
            "svd",
        ],
    )
    assert res.exit_code == 2 and "'svd' is not one of" in res.output


def test_evaluate_with_als_keeps_ppmi_for_the_short_term_baseline(small_sample, tmp_path):
    """The pipeline's vectors follow --embedding-method; the baseline's stay PPMI + SVD."""
    from nearline_rec.settings import load_settings
    from nearline_rec.tools.quality.evaluate import prepare

    ratings, movies = _movielens_files(tmp_path, small_sample)
    s = load_settings(items={"embedding_dim": 16})
    ppmi_run = prepare(s, ratings, movies, None, EvalConfig())
    als_run = prepare(s, ratings, movies, None, EvalConfig(embedding_method="als"))
    assert als_run.embeddings["interactions"] > 0
    assert "cooccurrence_nnz" in ppmi_run.embeddings
    assert als_run.cooccurrence[0] == ppmi_run.cooccurrence[0]
    assert np.array_equal(als_run.cooccurrence[1], ppmi_run.cooccurrence[1])
    vec = {u.item_id: u.embedding for u in als_run.updates if u.embedding is not None}
    base = dict(zip(*ppmi_run.cooccurrence, strict=True))
    shared = sorted(set(vec) & set(base))
    assert shared and not all(np.allclose(vec[i], base[i]) for i in shared)


def test_user_vectors_point_at_the_users_taste(small_sample):
    truth = json.loads(small_sample.truth_path.read_text())
    table = RatingTable.read(small_sample.ratings_path)
    emb = train_embeddings(table, TrainConfig(dim=16))
    item_taste = np.array([truth["items"][i]["taste"] for i in emb.item_ids])
    n_tastes = truth["params"]["n_tastes"]
    centroids = np.vstack([emb.items[item_taste == t].mean(axis=0) for t in range(n_tastes)])
    main_taste = [
        truth["users"][u]["tastes"][int(np.argmax(truth["users"][u]["weights"]))]
        for u in emb.user_ids
    ]
    closest = np.argmax(emb.users @ centroids.T, axis=1)
    assert (closest == np.array(main_taste)).mean() > 0.8


def test_ppmi_of_a_known_count_matrix():
    import scipy.sparse as sp

    counts = sp.csr_matrix(np.array([[0, 2, 0], [2, 0, 1], [0, 1, 0]], dtype=float))
    m = ppmi(counts, smoothing=1.0).toarray()
    total, row = 6.0, np.array([2.0, 3.0, 1.0])
    expected_01 = math.log(2 / total / (row[0] / total * row[1] / total))
    assert m[0, 1] == pytest.approx(expected_01)
    assert m[0, 2] == 0.0 and m[1, 1] == 0.0  # no co-occurrence, no PMI


def test_cooccurrence_only_pairs_liked_items_of_one_user_within_the_window():
    from nearline_rec.data.loaders import Rating

    rows = [
        Rating("u1", "a", 5, 1),
        Rating("u1", "b", 5, 2),
        Rating("u1", "c", 1, 3),
        Rating("u1", "d", 5, 4),
        Rating("u2", "e", 5, 1),
    ]
    table = RatingTable.from_ratings(rows)
    c = cooccurrence(table, TrainConfig(window=1, min_rating=4.0)).toarray()
    code = {item: i for i, item in enumerate(table.item_ids)}
    assert c[code["a"], code["b"]] == c[code["b"], code["a"]] == 1.0
    assert c[code["b"], code["d"]] == 1.0  # c was disliked: b and d become neighbours
    assert c[code["a"], code["d"]] == 0.0  # outside the window
    assert c[:, code["e"]].sum() == 0.0  # another user's item


# -- metrics -----------------------------------------------------------------------------


def test_metrics_known_answer():
    targets = ["a", "b", "c", "d"]
    lists = [
        ["a", "x", "y"],  # rank 1
        ["x", "y", "b"],  # rank 3
        ["x", "y", "z", "c"],  # rank 4: beyond K=3, still counts for MRR
        ["x", "y", "z"],  # absent
    ]
    got = score_lists(targets, lists, k=3, catalog_size=10)
    assert got["hit_rate@3"] == pytest.approx(2 / 4)
    assert got["ndcg@3"] == pytest.approx((1.0 + 1 / math.log2(4)) / 4)
    assert got["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 4) / 4)
    assert got["coverage@3"] == pytest.approx(5 / 10)  # a, b, x, y, z shown in top 3


def test_split_keeps_both_sides():
    assert split_index(10, 0.8) == 8
    assert split_index(2, 0.99) == 1 and split_index(2, 0.01) == 1


# -- evaluation on user files ------------------------------------------------------------


def _movielens_files(tmp_path: Path, sample) -> tuple[Path, Path]:
    """The sample rewritten as MovieLens ships it: ratings sorted by user, not by time,
    string-sorted ids, and a movie without genres."""
    ratings = sample.ratings_path.read_text().splitlines()
    header, rows = ratings[0], ratings[1:]
    rows.sort(key=lambda r: (int(r.split(",")[0]), int(r.split(",")[3])))
    r_path = tmp_path / "ml-ratings.csv"
    r_path.write_text("\n".join([header, *rows]) + "\n")
    m_path = tmp_path / "ml-movies.csv"
    m_path.write_text(sample.movies_path.read_text())
    return r_path, m_path


def pipe_events(report: dict) -> int:
    return report["methods"]["pipeline"]["events"]


def test_evaluate_runs_on_a_movielens_format_file(small_sample, tmp_path, monkeypatch):
    monkeypatch.setenv("NEARLINE_ITEMS__EMBEDDING_DIM", "16")
    ratings, movies = _movielens_files(tmp_path, small_sample)
    out = tmp_path / "report"
    res = CliRunner().invoke(
        main, ["evaluate", "--ratings", str(ratings), "--movies", str(movies), "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    report = json.loads((out / "quality.json").read_text())
    assert (out / "quality.png").stat().st_size > 1000
    assert set(report["methods"]) == {"pipeline", "short_term", "popularity", "trending", "genre"}
    # the ablation: one variant per recall channel, scored on the same events
    assert set(report["ablation"]) == {f"without {c}" for c in CHANNELS}
    for r in report["ablation"].values():
        assert r["events"] == pipe_events(report)
        assert sum(c["hits"] for c in r["channels"].values()) == r["hits"]
    assert "| without item2item |" in res.output
    assert report["events"]["scored"] > 100
    # the split is by time even though the file is ordered by user
    assert report["events"]["train"] == round(0.8 * 6000)
    pipe = report["methods"]["pipeline"]
    assert sum(c["hits"] for c in pipe["channels"].values()) == pipe["hits"]
    best_baseline = max(
        report["methods"][m]["hit_rate@10"] for m in ("popularity", "trending", "genre")
    )
    assert pipe["hit_rate@10"] > best_baseline
    assert "| **full pipeline** |" in res.output


def test_evaluate_with_given_embeddings(small_sample, tmp_path, monkeypatch):
    monkeypatch.setenv("NEARLINE_ITEMS__EMBEDDING_DIM", "16")
    out = tmp_path / "report"
    res = CliRunner().invoke(
        main,
        [
            "evaluate",
            "--ratings",
            str(small_sample.ratings_path),
            "--movies",
            str(small_sample.movies_path),
            "--embeddings",
            str(small_sample.embeddings_path),
            "--k",
            "5",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    report = json.loads((out / "quality.json").read_text())
    assert report["embeddings"]["source"] == str(small_sample.embeddings_path)
    assert "hit_rate@5" in report["methods"]["pipeline"]


# -- CLI errors --------------------------------------------------------------------------


def test_cli_errors_are_one_line(small_sample, tmp_path, monkeypatch):
    monkeypatch.setenv("NEARLINE_ITEMS__EMBEDDING_DIM", "16")
    r, m = str(small_sample.ratings_path), str(small_sample.movies_path)
    run = CliRunner().invoke
    line = _one_line_error(
        run(main, ["evaluate", "--ratings", str(tmp_path / "no.csv"), "--movies", m])
    )
    assert "no.csv" in line and "no such file" in line

    bad = tmp_path / "bad.csv"
    bad.write_text("userId,movieId,rating,timestamp\n1,2,4.0,100\n1,3,9.0,101\n")
    line = _one_line_error(run(main, ["evaluate", "--ratings", str(bad), "--movies", m]))
    assert f"{bad}:3" in line

    line = _one_line_error(run(main, ["evaluate", "--ratings", r, "--movies", m, "--k", "50"]))
    assert "NEARLINE_RANKING__TOP_N" in line

    line = _one_line_error(
        run(
            main,
            [
                "evaluate",
                "--ratings",
                r,
                "--movies",
                m,
                "--embeddings",
                str(small_sample.embeddings_path),
            ],
            env={"NEARLINE_ITEMS__EMBEDDING_DIM": "8"},
        )
    )
    assert "embeddings.txt" in line

    low = tmp_path / "low.csv"
    low.write_text("userId,movieId,rating,timestamp\n1,2,1.0,100\n1,3,2.0,101\n")
    line = _one_line_error(
        run(
            main,
            [
                "train-embeddings",
                "--ratings",
                str(low),
                "--dim",
                "8",
                "--out",
                str(tmp_path / "o.txt"),
            ],
        )
    )
    assert "nothing to learn" in line and not (tmp_path / "o.txt").exists()

    line = _one_line_error(
        run(
            main,
            ["evaluate", "--ratings", r, "--movies", m],
            env={"NEARLINE_RANKING__TOP_N": "zero"},
        )
    )
    assert "NEARLINE_RANKING__TOP_N" in line


# -- e2e comparison logic (no services) --------------------------------------------------


def test_compare_takes_the_latest_list_published_before_each_event():
    from nearline_rec.core.events import UserEvent

    events = [
        UserEvent(f"e{i}", "u", item, "rating", 100.0 + i, 5.0)
        for i, item in enumerate(["a", "b", "c", "d"])
    ]
    prepared = Prepared(
        events=events, n_train=2, updates=[object()] * 4, embeddings={}, cooccurrence=([], None)
    )
    scored = [
        Scored(2, "u", "c", {"pipeline": ("c", "x")}, ("embedding", "trending")),
        Scored(3, "u", "d", {"pipeline": ("x", "y")}, ("embedding", "trending")),
    ]
    replayed = Replay(scored=scored)
    # user-events offsets are shifted by 10: positions come from the topic, not the index
    inputs = [
        SimpleNamespace(value=ev.encode(), partition=0, offset=10 + i)
        for i, ev in enumerate(events)
    ]

    def out(offset: int, items: list[str]) -> SimpleNamespace:
        doc = {
            "user_id": "u",
            "source": {"offset": offset},
            "items": [{"item_id": i, "channel": "embedding"} for i in items],
            "model_version": "logistic-x" if offset > 10 else "linear-default-4",
        }
        return SimpleNamespace(value=json.dumps(doc).encode())

    # published out of order; the list made at offset 12 (after event c) must not be used
    # for c itself
    outputs = [out(12, ["d", "y"]), out(11, ["c", "x"]), out(10, ["q"])]
    in_process = {"pipeline": {"hit_rate@1": 1.0, "ndcg@1": 1.0, "mrr": 0.75}}
    got = compare(
        prepared, replayed, EvalConfig(k=1), inputs, outputs, in_process=in_process, info={}
    )
    agreement = got["agreement"]
    assert agreement["missing_lists"] == 0
    assert agreement["identical_top_k"] == pytest.approx(0.5)  # event d: e2e had d first
    assert got["methods"]["pipeline"]["hit_rate@1"] == 1.0
    assert agreement["hit_disagreements"] == 1
    # which model ranked the worker's lists, counted from the records it published
    assert agreement["worker_model_versions"] == {"logistic-x": 2, "linear-default-4": 1}


def test_pipeline_beats_every_baseline_on_the_default_sample(tmp_path):
    """The claim of docs/quality.md, on its data: `nearline sample` with its defaults."""
    from nearline_rec.settings import load_settings
    from nearline_rec.tools.quality.evaluate import evaluate, prepare

    info = generate_sample(tmp_path / "sample")  # the defaults of `nearline sample`
    settings = load_settings()
    config = EvalConfig()
    prepared = prepare(settings, info.ratings_path, info.movies_path, None, config)
    report, _ = evaluate(settings, prepared, config)
    hit = {m: r["hit_rate@10"] for m, r in report["methods"].items()}
    assert report["events"]["scored"] > 4000
    assert hit["pipeline"] > 2 * max(hit["popularity"], hit["trending"], hit["genre"]), hit


# -- the short-term baseline --------------------------------------------------------------


def _baseline_catalog():
    from nearline_rec.core.catalog import ItemCatalog
    from tests.unit.factories import item

    cat = ItemCatalog(3)
    cat.upsert_many([item(i, [1, 0, 0]) for i in "abcdefg"])
    return cat


def test_short_term_baseline_known_answer():
    from nearline_rec.tools.quality.baselines import ShortTermBaseline

    cat = _baseline_catalog()
    ids = list("abcdefg")
    e = np.eye(3, dtype=np.float32)
    # a, b along x; c, d along y; e along z; f halfway x/y; g has no co-occurrence vector
    vecs = np.vstack([e[0], e[0], e[1], e[1], e[2], (e[0] + e[1]) / 2, np.zeros(3)])
    base = ShortTermBaseline(cat, ids, vecs, threshold=3.5)
    base.observe("u", "a", 5.0)  # liked first (older)
    base.observe("u", "c", 4.0)  # liked last (newest)
    base.observe("u", "e", 3.0)  # below the threshold: neither a like nor a positive
    for _ in range(3):
        base.observe("v", "g", 5.0)  # g: most positives, no vector
    s = base.scores("u")
    key = {i: cat.key(i) for i in ids}
    top = math.log1p(3)
    # d: cosine 1 to the newest like (weight 1), 0 to the older one, no positives
    assert s[key["d"]] == pytest.approx(1.0)
    assert s[key["b"]] == pytest.approx(0.6)
    assert s[key["f"]] == pytest.approx((1.0 + 0.6) / math.sqrt(2))
    assert s[key["g"]] == pytest.approx(0.15)
    assert s[key["c"]] == pytest.approx(1.0 + 0.15 * math.log1p(1) / top)
    assert s[key["e"]] == pytest.approx(0.0)
    seen = {key["a"], key["c"]}
    got = [cat.item_id(k) for k in base.recommend("u", seen, 4)]
    assert got == ["f", "d", "b", "g"]  # seen items excluded, best first (f: 1.6 / sqrt 2)
    # a user without likes gets the positive counts only; ties broken by key
    assert [cat.item_id(k) for k in base.recommend("w", set(), 3)] == ["g", "a", "c"]
