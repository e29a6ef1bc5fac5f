"""Seeded sample data in the formats users already have (MovieLens CSV, item2vec text).

The sample plants a known structure -- latent tastes, Zipf popularity, Zipf user
activity, sessions, new releases -- and writes it to ``truth.json`` so tests and
benchmarks can check that recommendations recover it.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nearline_rec.data.sample_items import (
    DAY,
    EMBED_NOISE,
    GENRES,
    ITEM_ZIPF,
    NEW_RELEASE_SHARE,
    NO_GENRES,
    WINDOW_DAYS,
    WINDOW_START,
    draw_embeddings,
    draw_item_genres,
    draw_item_tastes,
    draw_releases,
    draw_taste_genres,
    draw_titles,
    rank_within_taste,
)
from nearline_rec.data.sample_ratings import (
    ON_TASTE,
    USER_ZIPF,
    choose_items,
    draw_activity,
    draw_rating_times,
    draw_rating_values,
    draw_user_tastes,
)
from nearline_rec.progress import Progress, terminal_bar


@dataclass(frozen=True)
class SampleInfo:
    """Where a generated sample was written and what it holds."""

    out_dir: Path
    movies_path: Path
    ratings_path: Path
    embeddings_path: Path
    truth_path: Path
    n_items: int
    n_users: int
    n_ratings: int
    dim: int
    n_tastes: int
    seed: int


def generate_sample(
    out_dir: Path,
    *,
    n_items: int = 2000,
    n_users: int = 600,
    n_ratings: int = 40000,
    dim: int = 32,
    n_tastes: int = 12,
    seed: int = 7,
    progress: bool = False,
) -> SampleInfo:
    """Write movies.csv, ratings.csv, embeddings.txt and truth.json into ``out_dir``.

    The same arguments always give byte-identical files (for a given numpy version).
    Every user rates at least one item and no (user, item) pair is rated twice, so
    as n_ratings nears n_users * n_items users must rate most of the catalogue and
    the taste and popularity signal in ratings.csv fades; scale n_users and n_items
    with n_ratings to keep it.

    truth.json holds ``taste_genres`` (taste index -> genre names), ``items``
    (movieId -> taste, genres, release unix seconds, year, popularity_rank within
    the taste), ``users`` (userId -> tastes, their weights, n_ratings) and the
    rating ``window`` (start, end unix seconds).
    """
    _check_args(n_items, n_users, n_ratings, dim, n_tastes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    bar = Progress(6, "sample", "step", enabled=progress)

    taste_share = rng.dirichlet(np.full(n_tastes, 8.0))
    taste_genres = draw_taste_genres(rng, n_tastes)
    release, year = draw_releases(rng, n_items)
    movie_ids = np.cumsum(rng.geometric(0.3, size=n_items))  # sparse, increasing with release
    item_taste = draw_item_tastes(rng, n_items, n_tastes, taste_share)
    item_genres = draw_item_genres(rng, item_taste, taste_genres)
    pop_rank = rank_within_taste(rng, item_taste, n_tastes)
    titles = draw_titles(rng, year)
    bar.update()

    emb = draw_embeddings(rng, item_taste, item_genres, taste_genres, dim)
    bar.update()

    user_tastes, user_alpha = draw_user_tastes(rng, n_users, n_tastes, taste_share)
    counts = draw_activity(rng, n_users, n_items, n_ratings)
    bar.update()

    users, items = choose_items(rng, user_alpha, counts, item_taste, pop_rank, progress)
    times = draw_rating_times(rng, users, items, counts, release)
    ratings = draw_rating_values(rng, users, items, user_alpha, item_taste)
    order = np.lexsort((items, users, times))  # replay order: by time, ties by user then item
    users, items, times, ratings = users[order], items[order], times[order], ratings[order]
    bar.update()

    movies_path = out_dir / "movies.csv"
    ratings_path = out_dir / "ratings.csv"
    embeddings_path = out_dir / "embeddings.txt"
    truth_path = out_dir / "truth.json"
    _write_movies(movies_path, movie_ids, titles, item_genres)
    _write_ratings(ratings_path, users + 1, movie_ids[items], ratings, times, progress)
    bar.update()
    _write_embeddings(embeddings_path, movie_ids, emb)
    truth = _truth(
        seed,
        (n_items, n_users, n_ratings, dim, n_tastes),
        taste_genres,
        movie_ids,
        item_taste,
        item_genres,
        release,
        year,
        pop_rank,
        user_tastes,
        user_alpha,
        counts,
    )
    truth_path.write_text(json.dumps(truth, indent=1) + "\n", encoding="utf-8")
    bar.update()
    bar.close()
    return SampleInfo(
        out_dir=out_dir,
        movies_path=movies_path,
        ratings_path=ratings_path,
        embeddings_path=embeddings_path,
        truth_path=truth_path,
        n_items=n_items,
        n_users=n_users,
        n_ratings=n_ratings,
        dim=dim,
        n_tastes=n_tastes,
        seed=seed,
    )


def _truth(
    seed: int,
    sizes: tuple[int, int, int, int, int],
    taste_genres: list[list[int]],
    movie_ids: np.ndarray,
    item_taste: np.ndarray,
    item_genres: np.ndarray,
    release: np.ndarray,
    year: np.ndarray,
    pop_rank: np.ndarray,
    user_tastes: list[list[int]],
    user_alpha: np.ndarray,
    counts: np.ndarray,
) -> dict:
    """The planted structure, keyed by the ids written to the CSV files."""
    n_items, n_users, n_ratings, dim, n_tastes = sizes
    return {
        "seed": seed,
        "params": {
            "n_items": n_items,
            "n_users": n_users,
            "n_ratings": n_ratings,
            "dim": dim,
            "n_tastes": n_tastes,
            "new_release_share": NEW_RELEASE_SHARE,
            "item_zipf": ITEM_ZIPF,
            "user_zipf": USER_ZIPF,
            "on_taste": ON_TASTE,
            "embed_noise": EMBED_NOISE,
        },
        "window": {"start": WINDOW_START, "end": WINDOW_START + WINDOW_DAYS * DAY},
        "genres": list(GENRES),
        "taste_genres": [[GENRES[g] for g in gs] for gs in taste_genres],
        "items": {
            str(int(movie_ids[i])): {
                "taste": int(item_taste[i]),
                "genres": [GENRES[g] for g in np.flatnonzero(item_genres[i])],
                "release": int(release[i]),
                "year": int(year[i]),
                "popularity_rank": int(pop_rank[i]),
            }
            for i in range(n_items)
        },
        "users": {
            str(u + 1): {
                "tastes": [int(t) for t in user_tastes[u]],
                "weights": [round(float(user_alpha[u, t]), 4) for t in user_tastes[u]],
                "n_ratings": int(counts[u]),
            }
            for u in range(n_users)
        },
    }


def _check_args(n_items: int, n_users: int, n_ratings: int, dim: int, n_tastes: int) -> None:
    if n_tastes < 1 or n_items < n_tastes:
        raise ValueError(f"need 1 <= n_tastes <= n_items, got {n_tastes=} {n_items=}")
    if n_users < 1 or dim < 2:
        raise ValueError(f"need n_users >= 1 and dim >= 2, got {n_users=} {dim=}")
    if not n_users <= n_ratings <= n_users * n_items:
        raise ValueError(
            f"need n_users <= n_ratings <= n_users * n_items (each user rates at least one "
            f"item, no pair twice), got {n_ratings=} {n_users=} {n_items=}"
        )


def _write_movies(
    path: Path, movie_ids: np.ndarray, titles: list[str], item_genres: np.ndarray
) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["movieId", "title", "genres"])
        for i, mid in enumerate(movie_ids.tolist()):
            gs = [GENRES[g] for g in np.flatnonzero(item_genres[i])]
            w.writerow([mid, titles[i], "|".join(gs) if gs else NO_GENRES])


_STARS = [f"{v / 2:.1f}" for v in range(11)]  # "0.0".."5.0", MovieLens spelling


def _write_ratings(
    path: Path,
    user_ids: np.ndarray,
    movie_ids: np.ndarray,
    ratings: np.ndarray,
    times: np.ndarray,
    progress: bool,
) -> None:
    step = 200_000
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write("userId,movieId,rating,timestamp\n")
        for s in terminal_bar(range(0, len(user_ids), step), "write", enabled=progress):
            stars = (ratings[s : s + step] * 2).astype(np.int64).tolist()
            buf = io.StringIO()
            for u, m, r, t in zip(
                user_ids[s : s + step].tolist(),
                movie_ids[s : s + step].tolist(),
                stars,
                times[s : s + step].tolist(),
                strict=True,
            ):
                buf.write(f"{u},{m},{_STARS[r]},{t}\n")
            f.write(buf.getvalue())


def _write_embeddings(path: Path, movie_ids: np.ndarray, emb: np.ndarray) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        for mid, row in zip(movie_ids.tolist(), emb.tolist(), strict=True):
            f.write(f"{mid}:" + " ".join(f"{v:.6g}" for v in row) + "\n")
