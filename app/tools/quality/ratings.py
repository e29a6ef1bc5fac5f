"""A ratings file as numpy columns (dense user/item codes), ordered by time for replay."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nearline_rec.data.loaders import Rating, iter_ratings


@dataclass(frozen=True)
class RatingTable:
    """Ratings sorted by (timestamp, file order); codes index `user_ids` / `item_ids`."""

    user_ids: list[str]
    item_ids: list[str]
    user: np.ndarray  # int64 codes
    item: np.ndarray  # int64 codes
    rating: np.ndarray  # float64
    timestamp: np.ndarray  # float64

    def __len__(self) -> int:
        return len(self.user)

    @classmethod
    def from_ratings(cls, ratings: Iterable[Rating]) -> RatingTable:
        user_code: dict[str, int] = {}
        item_code: dict[str, int] = {}
        users: list[int] = []
        items: list[int] = []
        values: list[float] = []
        times: list[float] = []
        for r in ratings:
            users.append(user_code.setdefault(r.user_id, len(user_code)))
            items.append(item_code.setdefault(r.item_id, len(item_code)))
            values.append(r.rating)
            times.append(r.timestamp)
        ts = np.asarray(times, dtype=np.float64)
        # Stable sort: equal timestamps keep file order (MovieLens files are user-ordered,
        # the sample is time-ordered already).
        order = np.argsort(ts, kind="stable")
        return cls(
            user_ids=list(user_code),
            item_ids=list(item_code),
            user=np.asarray(users, dtype=np.int64)[order],
            item=np.asarray(items, dtype=np.int64)[order],
            rating=np.asarray(values, dtype=np.float64)[order],
            timestamp=ts[order],
        )

    @classmethod
    def read(cls, path: str | Path) -> RatingTable:
        """Read and check a MovieLens ratings.csv (errors name the file and line)."""
        return cls.from_ratings(iter_ratings(path))

    def head(self, n: int) -> RatingTable:
        """The first n ratings in time order (same id lists, so codes stay comparable)."""
        return RatingTable(
            self.user_ids,
            self.item_ids,
            self.user[:n],
            self.item[:n],
            self.rating[:n],
            self.timestamp[:n],
        )

    def rows(self, start: int = 0, stop: int | None = None) -> Iterable[Rating]:
        stop = len(self) if stop is None else stop
        for u, i, r, t in zip(
            self.user[start:stop].tolist(),
            self.item[start:stop].tolist(),
            self.rating[start:stop].tolist(),
            self.timestamp[start:stop].tolist(),
            strict=True,
        ):
            yield Rating(self.user_ids[u], self.item_ids[i], r, t)
