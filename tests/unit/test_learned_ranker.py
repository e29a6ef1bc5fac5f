"""The learned ranker: ONNX export reproduces the training library, train-ranker is
deterministic, a learned model scores a whole batch in one call, and a bad, missing or
failing model falls back to the linear ranker."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nearline_rec.core.catalog import ItemCatalog
from nearline_rec.core.pipeline import Recommender
from nearline_rec.core.rank import DEFAULT_MODEL, LEARNED_FEATURES, ModelError, load_model
from nearline_rec.core.user_state import UserState
from nearline_rec.data.sample import generate_sample
from nearline_rec.ranking import card_path, load_onnx, load_ranker
from nearline_rec.settings import Settings
from nearline_rec.tools.quality.learn import LearnConfig, fit, predict, to_onnx, train_ranker
from tests.unit.factories import T0, event, item

N = len(LEARNED_FEATURES)


def _rows(seed: int = 0, groups: int = 60, size: int = 20):
    rng = np.random.default_rng(seed)
    x = rng.random((groups * size, N)).astype(np.float32)
    y = np.zeros(groups * size, np.float32)
    g = np.repeat(np.arange(groups), size)
    for grp in range(groups):  # the positive is the row with the largest first two columns
        rows = np.flatnonzero(g == grp)
        y[rows[np.argmax(x[rows, 0] + x[rows, 5])]] = 1.0
    return x, y, g


def _write(tmp_path, kind: str, model, version: str = "v-test"):
    data, output, column = to_onnx(kind, model, N)
    path = tmp_path / f"{kind}.onnx"
    path.write_bytes(data)
    card = {"version": version, "features": list(LEARNED_FEATURES), "output": output}
    card_path(path).write_text(json.dumps({**card, "column": column}))
    return path


@pytest.mark.parametrize("kind", ["lightgbm", "logistic"])
def test_onnx_scores_equal_the_training_library(tmp_path, kind):
    x, y, g = _rows()
    model = fit(kind, x, y, g, LearnConfig(trees=30))
    served = load_ranker(_write(tmp_path, kind, model))
    assert served.scorer is not None and served.features == LEARNED_FEATURES
    test = _rows(seed=1)[0]
    np.testing.assert_allclose(served.scorer(test), predict(kind, model, test), atol=1e-5)
    assert served.version == "v-test"


def test_bad_model_files_are_one_line_errors(tmp_path):
    x, y, g = _rows()
    good = _write(tmp_path, "logistic", fit("logistic", x, y, g, LearnConfig()))
    with pytest.raises(ModelError, match="ranking model file not found"):
        missing = tmp_path / "missing.onnx"
        card_path(missing).write_text(card_path(good).read_text())
        load_onnx(missing)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07not a model at all")
    card_path(corrupt).write_text(card_path(good).read_text())
    with pytest.raises(ModelError, match="not a loadable ONNX model") as info:
        load_onnx(corrupt)
    assert "\n" not in str(info.value)
    nocard = tmp_path / "nocard.onnx"
    nocard.write_bytes(good.read_bytes())
    with pytest.raises(ModelError, match="model card not found"):
        load_onnx(nocard)
    narrow = tmp_path / "narrow.onnx"
    narrow.write_bytes(good.read_bytes())
    doc = json.loads(card_path(good).read_text())
    card_path(narrow).write_text(json.dumps({**doc, "features": doc["features"][:3]}))
    with pytest.raises(ModelError, match="input has"):
        load_onnx(narrow)


def _catalog_and_users():
    rng = np.random.default_rng(3)
    cat = ItemCatalog(8)
    cat.upsert_many(
        item(f"i{n}", rng.standard_normal(8), genres=(("A", "B", "C")[n % 3],)) for n in range(80)
    )
    states = []
    for u in range(4):
        s = UserState(f"u{u}")
        states.append(s)
    return cat, states


def _replayed(model):
    cat, states = _catalog_and_users()
    rec = Recommender(cat, model)
    for u, s in enumerate(states):
        for n in range(6):
            ev = event(f"e{u}-{n}", f"i{u * 7 + n}", user_id=s.user_id, type="like", ts=T0 + n)
            rec.apply(s, ev, n)
        rec.touch(s)
    return rec, states


def test_a_batch_is_scored_in_one_call_and_equals_one_by_one(tmp_path):
    x, y, g = _rows()
    learned = load_onnx(
        _write(tmp_path, "lightgbm", fit("lightgbm", x, y, g, LearnConfig(trees=20)))
    )
    calls: list[int] = []

    def counted(rows):
        calls.append(len(rows))
        return learned.scorer(rows)

    model = learned.with_scorer(counted)
    rec, states = _replayed(model)
    lists = rec.recommend_many(states)
    assert len(calls) == 1 and calls[0] > len(states)
    for state, got in zip(states, lists, strict=True):
        assert got == rec.recommend(state)  # one by one: the same list
        assert got.model_version == "v-test" and len(got.items) == rec.config.top_n


def test_a_failing_model_falls_back_to_the_linear_ranker(tmp_path):
    linear = load_model()

    def broken(rows):
        raise RuntimeError("slow or broken")

    x, y, g = _rows()
    learned = load_onnx(_write(tmp_path, "logistic", fit("logistic", x, y, g, LearnConfig())))
    from dataclasses import replace

    model = replace(learned.with_scorer(broken), fallback=linear)
    rec, states = _replayed(model)
    lists = rec.recommend_many(states)
    plain, _ = _replayed(linear)
    for state, got in zip(states, lists, strict=True):
        assert got.model_version == linear.version
        assert got == plain.recommend(state)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    return generate_sample(out, n_items=200, n_users=80, n_ratings=4000, dim=8, seed=3)


def test_train_ranker_on_a_tiny_fixture_is_deterministic(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("NEARLINE_ITEMS__EMBEDDING_DIM", "8")
    config = LearnConfig(trees=20, threshold=4.0)
    a = train_ranker(Settings(), tiny.ratings_path, tiny.movies_path, tmp_path / "a", config)
    b = train_ranker(Settings(), tiny.ratings_path, tiny.movies_path, tmp_path / "b", config)
    assert a["model"].read_bytes() == b["model"].read_bytes()
    assert a["card"].read_text() == b["card"].read_text()
    card = a["card_doc"]
    assert card["features"] == list(LEARNED_FEATURES) and card["examples"]["groups"] >= 10
    assert set(card["offline_metrics"]["models"]) >= {"lightgbm", "logistic"}
    served = load_ranker(a["model"])
    assert served.version == card["version"]
    ex = a["examples"]
    np.testing.assert_allclose(
        served.scorer(ex.x), predict(card["kind"], a["fitted"], ex.x), atol=1e-5
    )


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _served(tmp_path, clock, **kw):
    from nearline_rec.ranking import ServedRanker

    return ServedRanker(tmp_path / "ranker.onnx", load_model(), clock=clock, **kw)


def _install(tmp_path, version: str, seed: int = 0) -> None:
    x, y, g = _rows(seed)
    src = _write(tmp_path / "src", "logistic", fit("logistic", x, y, g, LearnConfig()), version)
    import os

    dst = tmp_path / "ranker.onnx"
    card_path(dst).write_text(card_path(src).read_text())
    tmp = tmp_path / "ranker.onnx.tmp"
    tmp.write_bytes(src.read_bytes())
    os.replace(tmp, dst)


def test_served_ranker_missing_then_reloaded_then_bad_file_keeps_the_previous(tmp_path):
    (tmp_path / "src").mkdir()
    clock = Clock()
    served = _served(tmp_path, clock, reload_seconds=1.0)
    assert served.learned is None and "not found" in served.error
    assert served.model_for_batch().version == load_model().version
    assert served.fallbacks["missing"] == 1
    _install(tmp_path, "v1")
    assert not served.check()  # not before reload_seconds
    clock.t += 1.0
    assert served.check() and served.learned.version == "v1" and served.error is None
    model = served.model_for_batch()
    assert model.version == "v1" and model.fallback is not None
    assert len(model.scorer(np.zeros((3, N), np.float32))) == 3 and served.calls == 1
    _install(tmp_path, "v2", seed=1)
    clock.t += 1.0
    assert served.check() and served.learned.version == "v2" and served.reloads == 2
    (tmp_path / "ranker.onnx").write_bytes(b"garbage")
    clock.t += 1.0
    assert not served.check()
    assert served.learned.version == "v2" and "not a loadable ONNX model" in served.error
    assert served.reload_errors == 1 and served.model_for_batch().version == "v2"
    status = served.status()
    assert status["learned_version"] == "v2" and status["error"] == served.error


def test_served_ranker_over_budget_falls_back_and_cools_down(tmp_path):
    (tmp_path / "src").mkdir()
    _install(tmp_path, "v1")
    clock = Clock()
    served = _served(tmp_path, clock, budget_ms=10.0, cooldown_seconds=5.0)
    slow_inner = served.learned.scorer

    def slow(x):
        clock.t += 0.05  # 50 ms
        return slow_inner(x)

    served.learned = served.learned.with_scorer(slow)
    rec, states = _replayed(served.model_for_batch())
    lists = rec.recommend_many(states)
    assert {r.model_version for r in lists} == {load_model().version}
    assert served.fallbacks["slow"] == 1
    assert served.model_for_batch().version == load_model().version  # cooling down
    assert served.fallbacks["cooling"] == 1
    clock.t += 5.0
    assert served.model_for_batch().version == "v1"  # tried again after the cooldown


def test_evaluate_serves_the_learned_model_and_records_its_version(tiny, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from nearline_rec.tools.cli import main

    monkeypatch.setenv("NEARLINE_ITEMS__EMBEDDING_DIM", "8")
    out = train_ranker(
        Settings(), tiny.ratings_path, tiny.movies_path, tmp_path / "m", LearnConfig(trees=10)
    )
    monkeypatch.setenv("NEARLINE_RANKING__MODEL_PATH", str(out["model"]))
    r, m = str(tiny.ratings_path), str(tiny.movies_path)
    args = [
        "evaluate",
        "--ratings",
        r,
        "--movies",
        m,
        "--no-ablation",
        "--out",
        str(tmp_path / "r"),
    ]
    res = CliRunner().invoke(main, [*args, "--ranker", str(DEFAULT_MODEL)])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r" / "quality.json").read_text())
    assert report["model_version"] == out["card_doc"]["version"]
    assert set(report["ablation"]) == {f"ranker {load_model().version}"}
