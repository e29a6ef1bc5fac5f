"""Seeded benchmark workload: a clustered catalogue, users with Zipf activity and sessions,
and new items arriving. Shared by the pipeline and memory benchmarks."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from nearline_rec.core.events import ItemUpdate, UserEvent

GENRES = (
    "Action", "Adventure", "Animation", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip

# Event mix of a typical feed: mostly clicks and views, some explicit signal.
EVENT_MIX = (
    ("click", 0.45),
    ("view", 0.25),
    ("rating", 0.15),
    ("like", 0.05),
    ("add_to_cart", 0.03),
    ("purchase", 0.02),
    ("skip", 0.05),
)

T0 = 1_735_689_600.0  # 2025-01-01: event times start here


@dataclass
class Catalogue:
    vectors: np.ndarray
    """(n, d) float32, L2-normalised."""
    labels: np.ndarray
    """Cluster of each item."""
    members: list[np.ndarray]
    """Items of each cluster."""

    @property
    def n(self) -> int:
        return int(self.vectors.shape[0])


def catalogue(n: int, dim: int, *, seed: int = 1, spread: float = 0.5) -> Catalogue:
    """The mixture of `lsh_tune.clustered_vectors` (n/50 clusters), keeping the labels."""
    rng = np.random.default_rng(seed)
    n_clusters = max(1, n // 50)
    centres = rng.standard_normal((n_clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, n_clusters, n)
    x = centres[labels] + spread * rng.standard_normal((n, dim)) / math.sqrt(dim)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(n_clusters + 1))
    members = [order[bounds[c] : bounds[c + 1]] for c in range(n_clusters)]
    return Catalogue(x, labels, members)


def item_id(i: int) -> str:
    return f"i{i}"


def item_updates(cat: Catalogue, start: int = 0, stop: int | None = None) -> list[ItemUpdate]:
    """Upserts of items [start, stop): genres follow the cluster, release years spread."""
    out = []
    for i in range(start, cat.n if stop is None else stop):
        c = int(cat.labels[i])
        genres = (GENRES[c % len(GENRES)], GENRES[(c * 7 + 3) % len(GENRES)])
        year = 1960 + (i * 37) % 65
        out.append(
            ItemUpdate(
                item_id=item_id(i),
                op="upsert",
                embedding=cat.vectors[i],
                title=f"Item {i} ({year})",
                genres=genres if genres[0] != genres[1] else genres[:1],
                year=year,
                recommendable=i % 50 != 7,  # 2% not recommendable (out of stock)
                release_ts=(year - 1970) * 365.25 * 86400.0,
            )
        )
    return out


def events(
    cat: Catalogue,
    n_events: int,
    *,
    n_users: int,
    seed: int = 2,
    zipf_s: float = 1.0,
    start_index: int = 0,
    t0: float = T0,
    items_limit: int | None = None,
) -> Iterator[UserEvent]:
    """Sessions of 2-12 events, one user each, the user drawn with Zipf activity (a few heavy
    users, a long tail: with s = 1 and 20k users the top user has ~9% of the sessions, the top
    1% of users ~45%); each user has two favourite clusters that most events come from."""
    rng = np.random.default_rng(seed)
    limit = cat.n if items_limit is None else items_limit
    n_clusters = len(cat.members)
    types = [t for t, _ in EVENT_MIX]
    probs = np.array([p for _, p in EVENT_MIX])
    probs /= probs.sum()
    # Zipf over ranks 1..n_users (P(rank r) ~ r^-s), ranks -> user ids through a fixed
    # permutation so that heavy users are not u0, u1, u2...
    perm = rng.permutation(n_users)
    cdf = np.cumsum(np.arange(1, n_users + 1, dtype=np.float64) ** -zipf_s)
    cdf /= cdf[-1]
    j = 0
    t = t0
    while j < n_events:
        user = int(perm[min(int(np.searchsorted(cdf, rng.random())), n_users - 1)])
        urng = np.random.default_rng(user * 7919 + 13)
        favourites = urng.integers(0, n_clusters, 2)
        for _ in range(int(rng.integers(2, 13))):
            if j >= n_events:
                break
            if rng.random() < 0.8:
                members = cat.members[int(favourites[rng.integers(0, 2)])]
                members = members[members < limit]
                i = int(members[rng.integers(0, len(members))]) if len(members) else 0
            else:
                i = int(rng.integers(0, limit))
            kind = types[int(rng.choice(len(types), p=probs))]
            t += float(rng.exponential(0.05))
            yield UserEvent(
                event_id=f"b{start_index + j}",
                user_id=f"u{user}",
                item_id=item_id(i),
                type=kind,
                timestamp=round(t, 3),
                rating=float(rng.integers(1, 11)) / 2 if kind == "rating" else None,
            )
            j += 1
