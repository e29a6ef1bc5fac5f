"""Seeded sample data in the formats users already have (MovieLens CSV, item2vec text).

The sample plants a known structure -- latent tastes, Zipf popularity, Zipf user
activity, sessions, new releases -- and writes it to ``truth.json`` so tests and
benchmarks can check that recommendations recover it.
"""

from __future__ import annotations

import calendar
import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from app.progress import Progress, on_terminal

# The 18 genres of MovieLens 1M / 25M (25M spells "Children" without "'s").
GENRES: tuple[str, ...] = (
    "Action",
    "Adventure",
    "Animation",
    "Children",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
NO_GENRES = "(no genres listed)"

# Rough MovieLens genre frequencies: tastes draw their genres with these weights so
# Drama and Comedy are common and Film-Noir rare, as in the real catalogue.
_GENRE_WEIGHT = np.array(
    [12, 8, 3, 4, 16, 7, 3, 20, 5, 1, 6, 2, 4, 9, 5, 10, 2, 1], dtype=np.float64
)

WINDOW_START = 1_546_300_800  # 2019-01-01T00:00:00Z: fixed so output does not depend on "now"
WINDOW_DAYS = 730
DAY = 86_400

# Knobs of the planted structure; module constants so truth.json can record them.
NEW_RELEASE_SHARE = 0.25  # items released inside the rating window
ITEM_ZIPF = 1.2  # popularity exponent within a taste
USER_ZIPF = 1.0  # activity exponent (shifted Zipf: (rank + USER_ZIPF_SHIFT) ** -USER_ZIPF)
USER_ZIPF_SHIFT = 8.0
ON_TASTE = 0.85  # share of a user's choice weight on their own tastes
EMBED_NOISE = 1.4  # noise norm relative to the unit taste centroid
HALF_STAR_USERS = 0.4  # share of users who use half stars; the rest rate whole stars

_WORDS = (
    "Midnight Silent River Broken Golden Last Lost Secret Dark Little Wild Blue Crimson "
    "Hidden Winter Summer Iron Paper Glass Electric Empty Falling Burning Quiet Distant "
    "Northern Lonely Brave Strange Final Second Endless Savage Tender Velvet Hollow"
).split()
_NOUNS = (
    "Heart City Road Garden Horizon Machine Kingdom Island Shadow Mirror Promise Letter "
    "Station Harbor Empire Storm Dream Highway Frontier Orchard Signal Witness Circus "
    "Detective Voyage Cowboy Planet Ghost Soldier Dancer Stranger Sister Brothers Echo"
).split()
# A few accented names, as in real MovieLens titles, so UTF-8 handling gets exercised.
_NAMES = "Amélie Jack Rosa Noël Marcus Zoë Tomás Greta Señor Ingrid Otto Chloé Wanda".split()
_PLACES = "Paris Tokyo Nowhere Brooklyn Mars Casablanca Kraków Montréal Texas Rome".split()


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
    taste_genres = _taste_genres(rng, n_tastes)
    release, year = _releases(rng, n_items)
    movie_ids = np.cumsum(rng.geometric(0.3, size=n_items))  # sparse, increasing with release
    item_taste = _item_tastes(rng, n_items, n_tastes, taste_share)
    item_genres = _item_genres(rng, item_taste, taste_genres)
    pop_rank = _rank_within_taste(rng, item_taste, n_tastes)
    titles = _titles(rng, year)
    bar.update()

    emb = _embeddings(rng, item_taste, item_genres, taste_genres, dim)
    bar.update()

    user_tastes, user_alpha = _user_tastes(rng, n_users, n_tastes, taste_share)
    counts = _activity(rng, n_users, n_items, n_ratings)
    bar.update()

    users, items = _choose_items(rng, user_alpha, counts, item_taste, pop_rank, progress)
    times = _rating_times(rng, users, items, counts, release)
    ratings = _rating_values(rng, users, items, user_alpha, item_taste)
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


def _taste_genres(rng: np.random.Generator, n_tastes: int) -> list[list[int]]:
    """1-3 genres per taste; distinct genre sets while there are enough to go round."""
    p = _GENRE_WEIGHT / _GENRE_WEIGHT.sum()
    seen: set[tuple[int, ...]] = set()
    out: list[list[int]] = []
    for _ in range(n_tastes):
        for _attempt in range(50):
            k = int(rng.choice([1, 2, 3], p=[0.25, 0.45, 0.30]))
            gs = tuple(sorted(int(g) for g in rng.choice(len(GENRES), size=k, replace=False, p=p)))
            if gs not in seen:
                break
        seen.add(gs)
        out.append(list(gs))
    return out


def _year_starts(first: int, last: int) -> np.ndarray:
    return np.array([calendar.timegm((y, 1, 1, 0, 0, 0)) for y in range(first, last + 2)])


def _releases(rng: np.random.Generator, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Release time and year per item, sorted by release (so movieIds grow with time)."""
    first_year = 1920
    starts = _year_starts(first_year, 2021)
    n_new = int(round(NEW_RELEASE_SHARE * n_items))
    n_old = n_items - n_new
    # Back catalogue: skewed to recent years, as real catalogues are.
    old_year = np.clip(2018 - np.floor(rng.exponential(12.0, n_old)), first_year, 2018)
    y_idx = old_year.astype(np.int64) - first_year
    span = starts[y_idx + 1] - starts[y_idx]
    old_rel = starts[y_idx] + np.floor(rng.random(n_old) * span).astype(np.int64)
    # New releases fall anywhere in the window but leave two weeks for ratings to arrive.
    last = WINDOW_START + (WINDOW_DAYS - 14) * DAY
    new_rel = rng.integers(WINDOW_START, last, size=n_new, endpoint=True)
    release = np.sort(np.concatenate([old_rel, new_rel]).astype(np.int64))
    year = first_year + np.searchsorted(starts, release, side="right") - 1
    return release, year


def _item_tastes(
    rng: np.random.Generator, n_items: int, n_tastes: int, share: np.ndarray
) -> np.ndarray:
    taste = rng.choice(n_tastes, size=n_items, p=share)
    # Every taste gets at least one item, so small samples still have all clusters.
    taste[rng.permutation(n_items)[:n_tastes]] = np.arange(n_tastes)
    return taste


def _item_genres(
    rng: np.random.Generator, item_taste: np.ndarray, taste_genres: list[list[int]]
) -> np.ndarray:
    """Boolean (n_items, 18): mostly the taste's genres, sometimes one extra, rarely none."""
    n_items = len(item_taste)
    taste_mask = np.zeros((len(taste_genres), len(GENRES)), dtype=bool)
    for t, gs in enumerate(taste_genres):
        taste_mask[t, gs] = True
    own = taste_mask[item_taste]
    keep = own & (rng.random(own.shape) < 0.75)
    # Items that dropped all their taste's genres keep one of them at random.
    empty = ~keep.any(axis=1)
    pick = np.argmax(own * rng.random(own.shape), axis=1)
    keep[np.flatnonzero(empty), pick[empty]] = True
    extra = rng.random(n_items) < 0.2
    p = _GENRE_WEIGHT / _GENRE_WEIGHT.sum()
    extra_genre = rng.choice(len(GENRES), size=n_items, p=p)
    keep[np.flatnonzero(extra), extra_genre[extra]] = True
    # MovieLens has a few items with "(no genres listed)".
    keep[rng.random(n_items) < 0.005] = False
    return keep


def _rank_within_taste(
    rng: np.random.Generator, item_taste: np.ndarray, n_tastes: int
) -> np.ndarray:
    """0-based popularity rank of each item inside its taste (0 = the hit)."""
    key = rng.random(len(item_taste))
    order = np.lexsort((key, item_taste))
    rank = np.empty(len(item_taste), dtype=np.int64)
    sizes = np.bincount(item_taste, minlength=n_tastes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank[order] = np.arange(len(item_taste)) - np.repeat(starts, sizes)
    return rank


def _titles(rng: np.random.Generator, year: np.ndarray) -> list[str]:
    n = len(year)
    pattern = rng.choice(6, size=n, p=[0.3, 0.2, 0.15, 0.15, 0.1, 0.1])
    w = rng.integers(0, len(_WORDS), size=(n, 2))
    nn = rng.integers(0, len(_NOUNS), size=(n, 3))
    nm = rng.integers(0, len(_NAMES), size=n)
    pl = rng.integers(0, len(_PLACES), size=n)
    seq = rng.integers(2, 5, size=n)
    titles = []
    for i in range(n):
        a, b = _WORDS[w[i, 0]], _WORDS[w[i, 1]]
        x, y, z = _NOUNS[nn[i, 0]], _NOUNS[nn[i, 1]], _NOUNS[nn[i, 2]]
        p = pattern[i]
        if p == 0:
            base = f"{a} {x}"
        elif p == 1:
            # MovieLens moves a leading article to the end: "Matrix, The (1999)".
            base = f"{a} {x}, The"
        elif p == 2:
            base = f"{x} of {_PLACES[pl[i]]}"
        elif p == 3:
            base = f"{_NAMES[nm[i]]}'s {b} {y}"
        elif p == 4:
            base = f"{x}, {y} and {z}"
        else:
            base = f"{a} {x} {seq[i]}"
        titles.append(f"{base} ({year[i]})")
    return titles


def _embeddings(
    rng: np.random.Generator,
    item_taste: np.ndarray,
    item_genres: np.ndarray,
    taste_genres: list[list[int]],
    dim: int,
) -> np.ndarray:
    """Unit vectors: taste centroid + a small pull toward the item's genres + noise.

    Centroids share a genre component, so tastes with common genres sit closer
    together, as trained item2vec spaces do; the noise keeps clusters fuzzy but
    nearest neighbours still mostly share the taste.
    """
    genre_vec = _unit(rng.standard_normal((len(GENRES), dim)))
    centroid = np.empty((len(taste_genres), dim))
    for t, gs in enumerate(taste_genres):
        centroid[t] = genre_vec[gs].mean(axis=0) * 0.5 + _unit(rng.standard_normal(dim))
    centroid = _unit(centroid)
    n_g = np.maximum(item_genres.sum(axis=1, keepdims=True), 1)
    genre_pull = (item_genres @ genre_vec) / n_g
    noise = rng.standard_normal((len(item_taste), dim)) * (EMBED_NOISE / np.sqrt(dim))
    return _unit(centroid[item_taste] + 0.15 * genre_pull + noise)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _user_tastes(
    rng: np.random.Generator, n_users: int, n_tastes: int, share: np.ndarray
) -> tuple[list[list[int]], np.ndarray]:
    """Each user has 1-2 tastes; alpha[u, t] is the weight of taste t in their choices."""
    primary = rng.choice(n_tastes, size=n_users, p=share)
    two = (rng.random(n_users) < 0.45) & (n_tastes > 1)
    second = (primary + 1 + rng.integers(0, max(n_tastes - 1, 1), size=n_users)) % n_tastes
    w1 = np.where(two, rng.uniform(0.55, 0.8, size=n_users), 1.0)
    alpha = np.zeros((n_users, n_tastes))
    rows = np.arange(n_users)
    alpha[rows, primary] = w1
    alpha[rows[two], second[two]] = 1.0 - w1[two]
    tastes = [[int(primary[u]), int(second[u])] if two[u] else [int(primary[u])] for u in rows]
    return tastes, alpha


def _activity(rng: np.random.Generator, n_users: int, n_items: int, n_ratings: int) -> np.ndarray:
    """Ratings per user: shifted Zipf over a random user order, capped, summing to n_ratings."""
    rank = rng.permutation(n_users)
    weight = (rank + USER_ZIPF_SHIFT) ** -USER_ZIPF
    base = max(1, min(10, n_ratings // (4 * n_users)))
    counts = base + rng.multinomial(n_ratings - base * n_users, weight / weight.sum())
    # Nobody rates more than a quarter of the catalogue unless the totals force it.
    cap = min(n_items, max(n_items // 4, -(-n_ratings // n_users) * 3 // 2))
    while (over := counts > cap).any():
        excess = int((counts[over] - cap).sum())
        counts[over] = cap
        room = counts < cap
        w = weight * room
        counts += rng.multinomial(excess, w / w.sum())
    return counts.astype(np.int64)


def _choose_items(
    rng: np.random.Generator,
    alpha: np.ndarray,
    counts: np.ndarray,
    item_taste: np.ndarray,
    pop_rank: np.ndarray,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """``counts[u]`` distinct items per user, drawn without replacement.

    Weight of item i for user u: ON_TASTE * alpha[u, taste(i)] * pop(i | taste)
    + (1 - ON_TASTE) * pop(i) overall, with Zipf pop inside each taste.

    Sampling without replacement equals drawing with replacement and skipping
    repeats, so a few vectorised rounds of that (cost ~ n_ratings) serve most
    users; users still short afterwards (heavy raters who have used up most of
    their weight) finish with a Gumbel top-k over the items they have not got,
    which costs n_items per such user.
    """
    n_users, n_tastes = alpha.shape
    n_items = len(item_taste)
    pop = (pop_rank + 1.0) ** -ITEM_ZIPF
    # Items sorted by taste with each taste's cdf shifted by the taste index, so one
    # searchsorted on (taste + u) draws an item of that taste.
    by_taste = np.lexsort((pop_rank, item_taste))
    taste_mass = np.bincount(item_taste, weights=pop, minlength=n_tastes)
    within = np.cumsum(pop[by_taste]) - np.repeat(
        np.concatenate([[0.0], np.cumsum(taste_mass)[:-1]]), np.bincount(item_taste)
    )
    taste_cdf = item_taste[by_taste] + within / taste_mass[item_taste[by_taste]]
    taste_cdf[np.cumsum(np.bincount(item_taste)) - 1] = np.arange(n_tastes) + 1.0
    global_cdf = np.cumsum(pop) / pop.sum()
    global_cdf[-1] = 1.0
    # Users have one or two tastes: the main one with weight w1, else the second.
    rows = np.arange(n_users)
    main = alpha.argmax(axis=1)
    w1 = alpha[rows, main]
    rest = alpha.copy()
    rest[rows, main] = -1.0
    second = rest.argmax(axis=1)

    chosen = np.empty(0, dtype=np.int64)  # sorted pair keys user * n_items + item
    need = counts.astype(np.int64).copy()
    # inner bars only where they redraw in place; off a terminal the outer lines suffice
    rounds = tqdm(
        range(8),
        desc="ratings",
        unit="round",
        disable=not (progress and on_terminal()),
        leave=False,
    )
    for _ in rounds:
        short = np.flatnonzero(need > 0)
        if len(short) == 0:
            break
        draws = np.repeat(short, need[short] + need[short] // 2 + 2)
        taste = np.where(rng.random(len(draws)) < w1[draws], main[draws], second[draws])
        u_item = rng.random(len(draws))
        on_pick = by_taste[np.minimum(np.searchsorted(taste_cdf, taste + u_item), n_items - 1)]
        off_pick = np.minimum(np.searchsorted(global_cdf, u_item), n_items - 1)
        picks = np.where(rng.random(len(draws)) < ON_TASTE, on_pick, off_pick)
        keys = draws.astype(np.int64) * n_items + picks
        # First occurrence of each new pair, in draw order, then at most need[u] per user.
        _, first = np.unique(keys, return_index=True)
        first = np.sort(first)
        first = first[~_sorted_contains(chosen, keys[first])]
        owner = draws[first]
        rank = _rank_in_group(owner)
        keep = first[rank < need[owner]]
        need -= np.bincount(draws[keep], minlength=n_users)
        chosen = np.sort(np.concatenate([chosen, keys[keep]]))  # keys are new: no dedupe
    rounds.close()

    short = np.flatnonzero(need > 0)
    if len(short):
        extra = []
        chunk = max(1, 2_000_000 // n_items)
        on = ON_TASTE * pop / taste_mass[item_taste]
        off = (1.0 - ON_TASTE) * pop / pop.sum()
        for s in range(0, len(short), chunk):
            us = short[s : s + chunk]
            keys = np.log(alpha[us][:, item_taste] * on + off)
            keys += rng.gumbel(size=keys.shape)
            lo, hi = np.searchsorted(chosen, [us[0] * n_items, (us[-1] + 1) * n_items])
            got = chosen[lo:hi]
            row = np.minimum(np.searchsorted(us, got // n_items), len(us) - 1)
            mine = us[row] == got // n_items
            keys[row[mine], got[mine] % n_items] = -np.inf
            order = np.argsort(-keys, axis=1, kind="stable")
            take = np.arange(n_items)[None, :] < need[us][:, None]
            extra.append((us[:, None] * n_items + order)[take])
        chosen = np.sort(np.concatenate([chosen, *extra]))
    return chosen // n_items, chosen % n_items


def _sorted_contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[pos] == keys


def _rank_in_group(group: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal values, for values in any order (stable)."""
    order = np.argsort(group, kind="stable")
    g = group[order]
    start = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
    sizes = np.diff(np.r_[start, len(g)])
    rank = np.empty(len(g), dtype=np.int64)
    rank[order] = np.arange(len(g)) - np.repeat(start, sizes)
    return rank


def _rating_times(
    rng: np.random.Generator,
    users: np.ndarray,
    items: np.ndarray,
    counts: np.ndarray,
    release: np.ndarray,
) -> np.ndarray:
    """Unix seconds per (user, item), grouped into sessions and never before release.

    Each user has sessions (a start and a length of minutes to an hour or two) spread
    from their sign-up to the window's end; a rating falls inside one of the user's
    sessions that starts after the item's release. New releases prefer the earliest
    eligible sessions, so they get a burst of ratings soon after they come out.
    """
    n_users = len(counts)
    end = WINDOW_START + WINDOW_DAYS * DAY
    per_session = rng.uniform(3.0, 12.0, size=n_users)
    n_sess = np.maximum(1, np.ceil(counts / per_session)).astype(np.int64)
    signup = WINDOW_START + (rng.beta(1.0, 2.5, size=n_users) * 0.8 * WINDOW_DAYS * DAY)
    sess_user = np.repeat(np.arange(n_users), n_sess)
    sess_start = np.floor(
        signup[sess_user] + rng.random(len(sess_user)) * (end - 2 * 3600 - signup[sess_user])
    ).astype(np.int64)
    sess_len = (300 + rng.exponential(2400.0, size=len(sess_user))).astype(np.int64)
    # Sort sessions by (user, start) and search them with one composite int64 key.
    order = np.lexsort((sess_start, sess_user))
    sess_start, sess_len = sess_start[order], sess_len[order]
    stride = np.int64(end - WINDOW_START + 1)
    key = sess_user.astype(np.int64) * stride + (sess_start - WINDOW_START)
    first = np.concatenate([[0], np.cumsum(n_sess)])
    rel = np.maximum(release[items], WINDOW_START)
    lo = np.searchsorted(key, users.astype(np.int64) * stride + (rel - WINDOW_START), "left")
    hi = first[users + 1]
    u = rng.random(len(users))
    u = np.where(release[items] >= WINDOW_START, u * u, u)
    has = lo < hi
    pick = np.minimum(lo + np.floor(u * (hi - lo)).astype(np.int64), hi - 1)
    pick = np.where(has, pick, 0)
    offset = np.floor(rng.random(len(users)) * sess_len[pick]).astype(np.int64)
    in_session = np.minimum(sess_start[pick] + offset, end)
    # No session after the release: the user comes back once, a few days later.
    late = np.minimum(rel + np.ceil(rng.exponential(3.0 * DAY, size=len(users))), end)
    return np.where(has, in_session, late.astype(np.int64))


def _rating_values(
    rng: np.random.Generator,
    users: np.ndarray,
    items: np.ndarray,
    alpha: np.ndarray,
    item_taste: np.ndarray,
) -> np.ndarray:
    """Stars: high on the user's tastes, low elsewhere, with user and item bias and noise."""
    n_users = int(alpha.shape[0])
    user_bias = rng.normal(0.0, 0.3, size=n_users)
    item_bias = rng.normal(0.0, 0.3, size=len(item_taste))
    on = alpha[users, item_taste[items]] > 0
    mean = np.where(on, 4.1, 2.3) + user_bias[users] + item_bias[items]
    raw = mean + rng.normal(0.0, 0.6, size=len(users))
    half = rng.random(n_users) < HALF_STAR_USERS
    halves = np.clip(np.round(raw * 2.0), 1, 10)
    wholes = np.clip(np.round(raw), 1, 5) * 2.0
    return np.where(half[users], halves, wholes) / 2.0


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
        for s in tqdm(
            range(0, len(user_ids), step),
            desc="write",
            disable=not (progress and on_terminal()),
            leave=False,
        ):
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
