"""Tiny builders of events, items and catalogs with a known right answer (no services)."""

from __future__ import annotations

import numpy as np

from nearline_rec.core.catalog import IndexConfig, ItemCatalog
from nearline_rec.core.events import ItemUpdate, UserEvent

T0 = 1_700_000_000.0
"""A fixed event time (2023-11-14), so no test depends on the wall clock."""
DAY = 86_400.0


def event(
    event_id: str,
    item_id: str,
    *,
    user_id: str = "u1",
    type: str = "click",
    ts: float = T0,
    rating: float | None = None,
) -> UserEvent:
    return UserEvent(event_id, user_id, item_id, type, ts, rating)


def item(
    item_id: str,
    vec,
    *,
    genres: tuple[str, ...] = (),
    recommendable: bool = True,
    release_ts: float | None = None,
    year: int | None = None,
    title: str | None = None,
) -> ItemUpdate:
    return ItemUpdate(
        item_id=item_id,
        op="upsert",
        embedding=np.asarray(vec, dtype=np.float32),
        title=title if title is not None else f"Item {item_id}",
        genres=genres,
        year=year,
        recommendable=recommendable,
        release_ts=release_ts,
    )


def cluster_vectors(
    rng: np.random.Generator, centre: np.ndarray, n: int, spread: float = 0.05
) -> np.ndarray:
    """n unit vectors close to centre (cosine to it well above 0.9 for small spread)."""
    vecs = centre + spread * rng.standard_normal((n, len(centre)))
    return (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)


def two_clusters(
    *, n_per: int = 20, dim: int = 16, seed: int = 0, exact_below: int = 5000
) -> tuple[ItemCatalog, list[str], list[str]]:
    """Items a0.. near +e0 with genre Action, items b0.. near +e1 with genre Romance.

    The two centres are orthogonal, so every A item is far nearer to every other A item
    than to any B item: the right answer of a nearest-neighbour query is known.
    """
    rng = np.random.default_rng(seed)
    ca = np.zeros(dim)
    ca[0] = 1.0
    cb = np.zeros(dim)
    cb[1] = 1.0
    cat = ItemCatalog(dim, IndexConfig(exact_below=exact_below, seed=seed))
    a_ids = [f"a{i}" for i in range(n_per)]
    b_ids = [f"b{i}" for i in range(n_per)]
    ups = [
        item(i, v, genres=("Action",), release_ts=T0 - (n + 1) * DAY)
        for n, (i, v) in enumerate(zip(a_ids, cluster_vectors(rng, ca, n_per), strict=True))
    ] + [
        item(i, v, genres=("Romance",), release_ts=T0 - (n + 1) * DAY - 0.5 * DAY)
        for n, (i, v) in enumerate(zip(b_ids, cluster_vectors(rng, cb, n_per), strict=True))
    ]
    cat.upsert_many(ups)
    return cat, a_ids, b_ids


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
