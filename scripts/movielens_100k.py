"""Convert the MovieLens 100K release (u.data, u.item) to the ratings.csv / movies.csv layout
of the later releases, so `nearline evaluate` and `nearline train-ranker` read it as they are.

    python scripts/movielens_100k.py ML100K_DIR OUT_DIR

u.data is tab-separated (user, item, rating, unix time); u.item is Latin-1, '|'-separated,
with 19 genre flags after the URL (their order is the release's u.genre).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from nearline_rec.data.sample import GENRES as ML_GENRES
from nearline_rec.data.sample import NO_GENRES

# u.genre's order: "unknown", then the 18 genres of the later releases in their order
GENRES = (NO_GENRES, *ML_GENRES)


def convert(src: Path, out: Path) -> tuple[int, int]:
    out.mkdir(parents=True, exist_ok=True)
    n_movies = 0
    with open(out / "movies.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["movieId", "title", "genres"])
        for line in (src / "u.item").read_text(encoding="latin-1").splitlines():
            if not line.strip():
                continue
            fields = line.split("|")
            flags = fields[-19:]
            genres = [
                g for g, flag in zip(GENRES, flags, strict=True) if flag == "1" and g[0] != "("
            ]
            w.writerow([fields[0], fields[1], "|".join(genres) or GENRES[0]])
            n_movies += 1
    n_ratings = 0
    with open(out / "ratings.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["userId", "movieId", "rating", "timestamp"])
        for line in (src / "u.data").read_text(encoding="utf-8").splitlines():
            if line.strip():
                user, item, rating, ts = line.split("\t")
                w.writerow([user, item, f"{float(rating):.1f}", ts])
                n_ratings += 1
    return n_movies, n_ratings


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    movies, ratings = convert(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"wrote {movies} movies and {ratings} ratings to {sys.argv[2]}")
