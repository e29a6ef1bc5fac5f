"""The sample generator: deterministic, parseable, and its planted structure is really there."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from nearline_rec.data.loaders import read_embeddings, read_movies, read_ratings
from nearline_rec.data.sample import GENRES, SampleInfo, generate_sample

FILES = ("movies.csv", "ratings.csv", "embeddings.txt", "truth.json")
DAY = 86_400


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> SampleInfo:
    return generate_sample(tmp_path_factory.mktemp("sample"))


@pytest.fixture(scope="module")
def truth(sample) -> dict:
    return json.loads(sample.truth_path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def ratings(sample):
    return read_ratings(sample.ratings_path)


@pytest.fixture(scope="module")
def embeddings(sample):
    return read_embeddings(sample.embeddings_path, expected_dim=sample.dim)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kwargs = dict(n_items=300, n_users=80, n_ratings=3000, n_tastes=5)
    a = generate_sample(tmp_path / "a", seed=3, **kwargs)
    b = generate_sample(tmp_path / "b", seed=3, progress=True, **kwargs)
    c = generate_sample(tmp_path / "c", seed=4, **kwargs)
    for name in FILES:
        assert (a.out_dir / name).read_bytes() == (b.out_dir / name).read_bytes(), name
        assert (a.out_dir / name).read_bytes() != (c.out_dir / name).read_bytes(), name


def test_sample_info(sample):
    assert sample.n_items == 2000 and sample.n_users == 600 and sample.n_ratings == 40000
    assert sample.dim == 32 and sample.n_tastes == 12 and sample.seed == 7
    for path, name in zip(
        (sample.movies_path, sample.ratings_path, sample.embeddings_path, sample.truth_path),
        FILES,
        strict=True,
    ):
        assert path == sample.out_dir / name and path.is_file()


def test_files_parse_and_counts_match(sample, truth, ratings, embeddings):
    movies = read_movies(sample.movies_path)
    assert len(movies) == sample.n_items
    movie_ids = [m.item_id for m in movies]
    assert movie_ids == sorted(movie_ids, key=int)
    assert set(truth["items"]) == set(movie_ids)

    assert len(ratings) == sample.n_ratings
    assert {r.user_id for r in ratings} == {str(u) for u in range(1, sample.n_users + 1)}
    assert {r.item_id for r in ratings} <= set(movie_ids)
    assert len({(r.user_id, r.item_id) for r in ratings}) == len(ratings)  # no pair twice
    assert {r.rating for r in ratings} <= {x / 2 for x in range(1, 11)}
    times = [r.timestamp for r in ratings]
    assert times == sorted(times)
    assert 600 * DAY < times[-1] - times[0] <= 730 * DAY

    ids, matrix = embeddings
    assert ids == movie_ids
    assert matrix.shape == (sample.n_items, sample.dim)
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-4)


def test_movies_look_like_movielens(sample, truth):
    movies = read_movies(sample.movies_path)
    assert sample.movies_path.read_text(encoding="utf-8").startswith("movieId,title,genres\n")
    assert all(m.year == truth["items"][m.item_id]["year"] for m in movies)
    assert all(set(m.genres) <= set(GENRES) for m in movies)
    assert all(list(m.genres) == truth["items"][m.item_id]["genres"] for m in movies)
    assert any("," in m.title for m in movies)  # quoted by the csv module, read back whole
    assert any(not m.title.isascii() for m in movies)  # accented titles exercise UTF-8
    assert sum(not m.genres for m in movies) < 0.02 * len(movies)


def test_tastes_prefer_one_to_three_genres(truth):
    assert len(truth["taste_genres"]) == 12
    assert all(1 <= len(gs) <= 3 and set(gs) <= set(GENRES) for gs in truth["taste_genres"])
    items = truth["items"].values()
    mostly = [set(it["genres"]) <= set(truth["taste_genres"][it["taste"]]) for it in items]
    assert np.mean(mostly) >= 0.7


def test_nearest_neighbour_shares_the_taste(truth, embeddings):
    ids, matrix = embeddings
    taste = np.array([truth["items"][i]["taste"] for i in ids])
    sim = matrix @ matrix.T
    np.fill_diagonal(sim, -np.inf)
    share = np.mean(taste[sim.argmax(axis=1)] == taste)
    assert share >= 0.8
    # Clusters, not a uniform cloud: same-taste pairs are far more similar on average.
    same = taste[:, None] == taste[None, :]
    np.fill_diagonal(same, False)
    finite = np.isfinite(sim)
    assert sim[same].mean() > sim[~same & finite].mean() + 0.3


def test_high_ratings_concentrate_on_the_users_tastes(truth, ratings):
    on = np.array(
        [truth["items"][r.item_id]["taste"] in truth["users"][r.user_id]["tastes"] for r in ratings]
    )
    stars = np.array([r.rating for r in ratings])
    assert on[stars >= 4].mean() >= 0.9
    assert stars[on].mean() >= stars[~on].mean() + 1.0


def test_popularity_is_skewed(sample, ratings):
    counts = Counter(r.item_id for r in ratings)
    per_item = np.sort(np.array(list(counts.values()) + [0] * (sample.n_items - len(counts))))[::-1]
    assert per_item[: sample.n_items // 10].sum() >= 0.4 * sample.n_ratings


def test_user_activity_is_skewed_and_in_sessions(sample, ratings):
    per_user = np.sort(np.array(list(Counter(r.user_id for r in ratings).values())))[::-1]
    assert per_user[: sample.n_users // 10].sum() >= 0.3 * sample.n_ratings
    assert np.median(per_user) < 0.6 * per_user.mean()
    by_user: dict[str, list[float]] = {}
    for r in ratings:
        by_user.setdefault(r.user_id, []).append(r.timestamp)
    gaps = np.concatenate([np.diff(ts) for ts in by_user.values() if len(ts) > 1])
    assert np.median(gaps) < 3600  # most next events of a user come within the hour


def test_no_rating_before_release_and_late_releases_exist(truth, ratings):
    release = {i: it["release"] for i, it in truth["items"].items()}
    assert all(r.timestamp >= release[r.item_id] for r in ratings)
    late_from = truth["window"]["start"] + 0.75 * (
        truth["window"]["end"] - truth["window"]["start"]
    )
    late = {i for i, t in release.items() if t >= late_from}
    assert len(late) >= 0.03 * len(release)
    rated_late = {r.item_id for r in ratings} & late
    assert len(rated_late) >= 0.5 * len(late)


def test_small_and_dense_samples(tmp_path):
    info = generate_sample(tmp_path / "tiny", n_items=6, n_users=4, n_ratings=24, dim=3, n_tastes=3)
    ratings = read_ratings(info.ratings_path)
    assert len({(r.user_id, r.item_id) for r in ratings}) == 24  # every user rated everything
    truth = json.loads(info.truth_path.read_text(encoding="utf-8"))
    assert sorted({it["taste"] for it in truth["items"].values()}) == [0, 1, 2]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n_items=5, n_tastes=6),
        dict(n_tastes=0),
        dict(n_users=10, n_ratings=9),
        dict(n_items=10, n_users=10, n_ratings=101),
        dict(dim=1),
    ],
)
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        generate_sample(tmp_path, **kwargs)
