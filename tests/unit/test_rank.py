"""Ranking: the model file is checked, the list respects top_n and the per-genre cap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nearline_rec.core.catalog import ItemCatalog
from nearline_rec.core.pipeline import Recommender
from nearline_rec.core.rank import (
    DEFAULT_MODEL,
    FEATURES,
    ModelError,
    RankModel,
    features,
    load_model,
    rank,
)
from nearline_rec.core.recall import Candidate
from nearline_rec.core.user_state import UserState
from tests.unit.factories import T0, event, item

DIM = 8


def write_model(tmp_path: Path, doc, name: str = "model.json") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return path


def model_error(path) -> str:
    with pytest.raises(ModelError) as info:
        load_model(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: ")
    return msg


GOOD = {"kind": "linear", "version": "t-1", "weights": {"similarity": 1.0}}


def test_default_model_loads():
    m = load_model()
    assert m == load_model(None) == load_model(DEFAULT_MODEL)
    assert m.version == "linear-default-4"
    assert set(m.weights) == set(FEATURES)
    assert m.weights["similarity"] > 0
    assert m.recency_half_life_days > 0


def test_missing_weights_default_to_zero(tmp_path):
    m = load_model(write_model(tmp_path, GOOD))
    assert m.weights == {"similarity": 1.0, **{f: 0.0 for f in FEATURES[1:]}}
    assert m.channel_bonus == {}


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ("{not json", "not a JSON"),
        ("[1, 2]", '"kind": "linear"'),
        ({**GOOD, "kind": "tree"}, '"kind": "linear"'),
        ({**GOOD, "version": ""}, "version"),
        ({**GOOD, "weights": {"similarity": 1, "clickbait": 2}}, "clickbait"),
        ({**GOOD, "weights": ["similarity"]}, "objects"),
        ({**GOOD, "weights": {"similarity": "1"}}, "'similarity'"),
        ({**GOOD, "weights": {"similarity": True}}, "'similarity'"),
        ({**GOOD, "channel_bonus": {"embeding": 0.1}}, "embeding"),
        ({**GOOD, "channel_bonus": {"genre": None}}, "'genre'"),
        ({**GOOD, "recency_half_life_days": 0}, "recency_half_life_days"),
        ({**GOOD, "recency_half_life_days": "long"}, "recency_half_life_days"),
        (json.dumps(GOOD).replace("1.0", "NaN"), "'similarity'"),
        (json.dumps(GOOD).replace("1.0", "Infinity"), "'similarity'"),
        (json.dumps(GOOD).replace("1.0", "1e999"), "'similarity'"),
    ],
)
def test_bad_model_file_names_the_file(tmp_path, doc, fragment):
    assert fragment in model_error(write_model(tmp_path, doc))


def test_missing_directory_and_binary_model_files(tmp_path):
    assert "not found" in model_error(tmp_path / "nope.json")
    assert "cannot read" in model_error(tmp_path)
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00")
    assert "not a JSON" in model_error(binary)


# --- rank ---------------------------------------------------------------------------------


def narrow_world(genres: list[str]) -> tuple[Recommender, list[Candidate]]:
    """One candidate per genre entry; candidate n is item n with similarity falling with n."""
    cat = ItemCatalog(DIM)
    rng = np.random.default_rng(2)
    base = np.eye(DIM)[0]
    ups = []
    for n, g in enumerate(genres):
        v = base * (1.0 - 0.03 * n) + 0.2 * n / len(genres) * rng.standard_normal(DIM)
        ups.append(item(f"i{n}", v, genres=(g,) if g else (), release_ts=T0 - 86400))
    cat.upsert_many(ups)
    cat.apply(item("seed", base, genres=("Other",)))
    rec = Recommender(cat, RankModel("sim-only", {f: 0.0 for f in FEATURES} | {"similarity": 1.0}))
    return rec, [Candidate(n, 0.0, "embedding") for n in range(len(genres))]


def user_near_axis0(rec: Recommender) -> UserState:
    s = UserState("u")
    rec.apply(s, event("e", "seed", user_id="u", type="like"), 0)
    return s


def ranked_ids(rec, cands, **kw):
    ctx = rec.context(user_near_axis0(rec))
    return [rec.catalog.item_id(r.key) for r in rank(cands, ctx, rec.model, **kw)]


def test_rank_orders_by_score_and_cuts_at_top_n():
    rec, cands = narrow_world(["A", "B", "C", "D", "E", "F"])
    ctx = rec.context(user_near_axis0(rec))
    sims = rec.catalog.vectors(np.arange(6)) @ ctx.embedding
    expected = [f"i{k}" for k in np.argsort(-sims, kind="stable")[:4]]
    out = rank(list(reversed(cands)), ctx, rec.model, top_n=4, max_per_genre=5)
    assert [rec.catalog.item_id(r.key) for r in out] == expected
    assert [r.score for r in out] == sorted((r.score for r in out), reverse=True)
    assert all(r.channel == "embedding" for r in out)


def test_max_per_genre_caps_the_primary_genre():
    genres = ["A", "A", "A", "A", "B", "C", "B", "A"]
    rec, cands = narrow_world(genres)
    got = ranked_ids(rec, cands, top_n=5, max_per_genre=2)
    firsts = [genres[int(i[1:])] for i in got]
    assert len(got) == 5
    assert firsts.count("A") == 2 and firsts.count("B") == 2 and firsts.count("C") == 1


def test_narrow_catalog_fills_from_what_the_cap_held_back():
    genres = ["A"] * 6 + ["B"]
    rec, cands = narrow_world(genres)
    got = ranked_ids(rec, cands, top_n=5, max_per_genre=2)
    assert len(got) == 5
    firsts = [genres[int(i[1:])] for i in got]
    # the capped list comes first (2 A + 1 B), then held-back A items in score order
    assert firsts[:3].count("A") == 2 and "B" in firsts[:3]
    assert firsts[3:] == ["A", "A"]
    assert len(set(got)) == 5


def test_items_without_genre_share_one_bucket():
    rec, cands = narrow_world(["", "", "", "X"])
    got = ranked_ids(rec, cands, top_n=2, max_per_genre=1)
    assert len(set(got) & {"i0", "i1", "i2"}) == 1 and "i3" in got


def test_ties_break_by_key_whatever_the_input_order():
    rec, cands = narrow_world(["A", "B", "C", "D", "E"])
    flat = RankModel("zero", {f: 0.0 for f in FEATURES})
    ctx = rec.context(user_near_axis0(rec))
    for order in (cands, list(reversed(cands)), cands[2:] + cands[:2]):
        out = rank(order, ctx, flat, top_n=3, max_per_genre=5)
        assert [r.key for r in out] == [0, 1, 2]


def test_rank_is_deterministic_and_empty_in_empty_out():
    rec, cands = narrow_world(["A", "B", "A", "C", "B"])
    assert ranked_ids(rec, cands, top_n=4, max_per_genre=1) == ranked_ids(
        rec, cands, top_n=4, max_per_genre=1
    )
    assert ranked_ids(rec, [], top_n=4, max_per_genre=1) == []


def test_channel_bonus_lifts_its_channel():
    rec, _ = narrow_world(["A", "B"])
    ctx = rec.context(user_near_axis0(rec))
    cands = [Candidate(0, 0.0, "embedding"), Candidate(1, 0.0, "trending")]
    plain = rank(cands, ctx, rec.model, top_n=2, max_per_genre=5)
    assert [r.key for r in plain] == [0, 1]  # i0 is the more similar
    boosted = RankModel("b", rec.model.weights, channel_bonus={"trending": 5.0})
    assert [r.key for r in rank(cands, ctx, boosted, top_n=2, max_per_genre=5)] == [1, 0]


def test_features_are_bounded():
    rec, cands = narrow_world(["A", "B", "A", "C"])
    s = user_near_axis0(rec)
    for n in range(4):
        rec.stats.add(n, float(n + 1), T0)
    x = features(cands, rec.context(s), load_model())
    assert x.shape == (4, len(FEATURES))
    assert np.all(np.isfinite(x))
    assert np.all(x[:, 1:] >= 0) and np.all(x[:, 1:] <= 1.0 + 1e-9)
    assert np.all(np.abs(x[:, 0]) <= 1.0 + 1e-6)
    assert x[3, 2] == pytest.approx(1.0)  # the most popular candidate scores 1


def _reference_features(cands, ctx, model) -> np.ndarray:
    """The features written one candidate at a time, as the definition reads."""
    from nearline_rec.core.recall import liked_genres

    x = np.zeros((len(cands), len(FEATURES)))
    pop = ctx.stats.popularity(ctx.catalog.capacity)
    top = float(pop.max())
    genres = liked_genres(ctx)
    total = sum(genres.values())
    for i, c in enumerate(cands):
        x[i, 0] = float(ctx.catalog.vectors(np.array([c.key]))[0] @ ctx.embedding)
        same = sorted(
            (j for j, o in enumerate(cands) if o.channel == c.channel),
            key=lambda j: -cands[j].score,
        )
        x[i, 1] = 1.0 - same.index(i) / len(same)
        x[i, 2] = np.log1p(pop[c.key]) / np.log1p(top) if top > 0 else 0.0
        age = max(ctx.now - ctx.catalog.release_ts[c.key], 0.0) / 86400.0
        x[i, 3] = 0.5 ** (age / model.recency_half_life_days)
        g = ctx.catalog.meta(c.key).genres
        if total and g:
            x[i, 4] = min(sum(genres.get(n, 0) for n in g) / (total * len(g)) * len(genres), 1.0)
        # short-term taste: recency-weighted cosine to the last 5 likes, newest weight 1
        v = ctx.catalog.vectors(np.array([c.key]))[0]
        for age, liked in enumerate(reversed(ctx.user.liked[-5:])):
            x[i, 5] += 0.6**age * float(v @ ctx.catalog.vector(liked))
    return x


def test_vectorised_features_equal_the_definition():
    rng = np.random.default_rng(5)
    names = ["A", "B", "C", "D"]
    cat = ItemCatalog(DIM)
    cat.upsert_many(
        item(
            f"i{n}",
            rng.standard_normal(DIM),
            genres=tuple(rng.choice(names, int(rng.integers(0, 3)), replace=False)),
            release_ts=T0 - float(rng.integers(1, 900)) * 86400,
        )
        for n in range(60)
    )
    rec = Recommender(cat, load_model())
    user = UserState("u")
    for n in range(12):
        rec.apply(user, event(f"e{n}", f"i{n}", user_id="u", type="like", ts=T0 + n), n)
    ctx = rec.context(user)
    channels = ["embedding", "item2item", "genre", "trending"]
    # repeated scores inside a channel: ties keep the candidates' order
    cands = [Candidate(k, float(rng.integers(0, 5)), channels[k % 4]) for k in range(12, 60)]
    np.testing.assert_allclose(
        features(cands, ctx, rec.model),
        _reference_features(cands, ctx, rec.model),
        rtol=1e-12,
        atol=1e-6,
    )
