"""The sample's catalogue: items with tastes, genres, release dates, titles and embeddings near
their taste's centroid (seeded; app/data/sample.py writes them as MovieLens files)."""

from __future__ import annotations

import calendar

import numpy as np

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


EMBED_NOISE = 1.4  # noise norm relative to the unit taste centroid


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


def draw_taste_genres(rng: np.random.Generator, n_tastes: int) -> list[list[int]]:
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


def draw_releases(rng: np.random.Generator, n_items: int) -> tuple[np.ndarray, np.ndarray]:
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


def draw_item_tastes(
    rng: np.random.Generator, n_items: int, n_tastes: int, share: np.ndarray
) -> np.ndarray:
    taste = rng.choice(n_tastes, size=n_items, p=share)
    # Every taste gets at least one item, so small samples still have all clusters.
    taste[rng.permutation(n_items)[:n_tastes]] = np.arange(n_tastes)
    return taste


def draw_item_genres(
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


def rank_within_taste(
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


def draw_titles(rng: np.random.Generator, year: np.ndarray) -> list[str]:
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


def draw_embeddings(
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
