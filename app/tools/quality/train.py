"""Offline item embeddings from a ratings file: windowed item co-occurrence -> PPMI -> SVD.

This is the count-based twin of item2vec's skip-gram with negative sampling (which
implicitly factorises a shifted PMI matrix): each user's liked items in time order
are a "sentence", items within `window` positions of each other co-occur, the
positive PMI of those counts is factorised by a seeded randomised SVD, and an
item's vector is its left singular vector scaled by sqrt(singular value). Cost is
linear in the number of ratings (times the window) plus a few sparse products, so
a million ratings train in seconds on two cores.

`method` "als" or "bpr" instead factorises the user x liked-item matrix with the `implicit`
library (alternating least squares on implicit feedback, or Bayesian personalized ranking;
the `embeddings` extra); an item's vector is its factor row, normalised.

User vectors for warm start follow the worker's own rule (app/core/user_state.py):
the sum of the unit vectors of the items a user rated, weighted by
(rating - rating_center), normalised.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nearline_rec.data.loaders import Movie
from nearline_rec.errors import BadInput
from nearline_rec.extras import require
from nearline_rec.progress import Progress
from nearline_rec.tools.quality.ratings import RatingTable

if TYPE_CHECKING:
    import scipy.sparse as sp


class TrainingError(BadInput):
    """The ratings cannot train embeddings (one line, printed by the CLI)."""


METHODS = ("ppmi-svd", "als", "bpr")
"""How item vectors are learned: the hand-written PPMI + SVD, or `implicit`'s ALS / BPR."""


@dataclass(frozen=True)
class TrainConfig:
    method: str = "ppmi-svd"
    """One of METHODS."""
    dim: int = 32
    """Embedding dimension (must equal NEARLINE_ITEMS__EMBEDDING_DIM to load the result)."""
    window: int = 10
    """Items within this many positions of each other in a user's history co-occur."""
    min_rating: float = 3.5
    """Ratings below this are left out of the co-occurrence (they are not shared taste)."""
    smoothing: float = 0.75
    """Context distribution smoothing of PMI (down-weights very popular contexts)."""
    power_iterations: int = 4
    """Power iterations of the randomised SVD (more = closer to the exact SVD)."""
    oversample: int = 16
    seed: int = 42
    rating_center: float = 3.0
    """User vectors: weight of a rating is (rating - rating_center)."""
    iterations: int | None = None
    """ALS sweeps or BPR epochs (None: the library's default, 15 and 100)."""
    regularization: float = 0.01
    """L2 regularisation of the ALS / BPR factors."""
    alpha: float = 1.0
    """ALS: confidence of a liked item (1 + alpha)."""
    learning_rate: float = 0.01
    """BPR: SGD learning rate."""


@dataclass
class Embeddings:
    item_ids: list[str]
    items: np.ndarray
    """(n_items, dim) float32, unit rows."""
    user_ids: list[str]
    users: np.ndarray
    """(n_users, dim) float32, unit rows."""
    info: dict[str, float] = field(default_factory=dict)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def _sparse() -> Any:
    """scipy.sparse (the `quality` extra): only the offline training needs it, not the worker."""
    return require("scipy.sparse", "quality", "training item embeddings")


def cooccurrence(table: RatingTable, config: TrainConfig) -> sp.csr_matrix:
    """Symmetric item x item counts of liked items within `window` of each other per user."""
    sp = _sparse()
    keep = table.rating >= config.min_rating
    user, item = table.user[keep], table.item[keep]
    # table is in time order; a stable sort by user keeps each history in time order
    order = np.argsort(user, kind="stable")
    user, item = user[order], item[order]
    n = len(table.item_ids)
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    for d in range(1, config.window + 1):
        same = user[d:] == user[:-d]
        if not same.any():
            break
        a, b = item[:-d][same], item[d:][same]
        # nearer neighbours count more, like word2vec's sampled window sizes
        w = np.full(len(a), 1.0 / d)
        rows += [a, b]
        cols += [b, a]
        vals += [w, w]
    if not rows:
        return sp.csr_matrix((n, n), dtype=np.float64)
    return sp.coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    ).tocsr()


def ppmi(counts: sp.csr_matrix, smoothing: float = 0.75) -> sp.csr_matrix:
    """Positive PMI with the context distribution raised to `smoothing`."""
    sp = _sparse()
    counts = counts.tocsr().astype(np.float64)
    counts.eliminate_zeros()
    total = counts.sum()
    if total <= 0:
        return counts
    row = np.asarray(counts.sum(axis=1)).ravel()
    col = np.asarray(counts.sum(axis=0)).ravel() ** smoothing
    col_p = col / col.sum()
    coo = counts.tocoo()
    pmi = np.log(coo.data / total) - np.log(row[coo.row] / total) - np.log(col_p[coo.col])
    pos = pmi > 0
    return sp.csr_matrix((pmi[pos], (coo.row[pos], coo.col[pos])), shape=counts.shape)


def randomized_svd(
    m: sp.csr_matrix,
    rank: int,
    *,
    power_iterations: int = 4,
    oversample: int = 16,
    seed: int = 42,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top `rank` left singular vectors and values of a sparse matrix (Halko et al. 2011)."""
    width = min(rank + oversample, min(m.shape))
    rng = np.random.default_rng(seed)
    q = m @ rng.standard_normal((m.shape[1], width))
    q, _ = np.linalg.qr(q)
    for _ in range(power_iterations):
        z, _ = np.linalg.qr(m.T @ q)
        q, _ = np.linalg.qr(m @ z)
        if progress is not None:
            progress.update(1)
    b = (m.T @ q).T  # (width, n_cols)
    ub, s, _ = np.linalg.svd(b, full_matrices=False)
    u = q @ ub
    # Fix the sign of each vector (SVD signs are arbitrary): largest entry positive.
    signs = np.sign(u[np.abs(u).argmax(axis=0), np.arange(u.shape[1])])
    signs[signs == 0] = 1.0
    u = u * signs
    return u[:, :rank], s[:rank]


def user_vectors(
    table: RatingTable, items: np.ndarray, has_vector: np.ndarray, center: float
) -> tuple[np.ndarray, np.ndarray]:
    """(user codes with a vector, unit vectors): the worker's taste rule without decay."""
    ok = has_vector[table.item]
    weight = (table.rating - center)[ok]
    acc = np.zeros((len(table.user_ids), items.shape[1]))
    np.add.at(acc, table.user[ok], items[table.item[ok]] * weight[:, None])
    norm = np.linalg.norm(acc, axis=1)
    codes = np.flatnonzero(norm > 1e-9)
    return codes, _unit_rows(acc[codes]).astype(np.float32)


def train_embeddings(
    table: RatingTable,
    config: TrainConfig | None = None,
    *,
    movies: Sequence[Movie] | None = None,
    progress: bool = False,
) -> Embeddings:
    """Item and user embeddings from ratings; with `movies`, items without any liked
    co-occurrence (new or unpopular ones) get the mean vector of their genres."""
    config = config or TrainConfig()
    if config.method not in METHODS:
        raise TrainingError(f"unknown embedding method {config.method!r}; known: {list(METHODS)}")
    t0 = time.perf_counter()
    # what cannot train fails before the progress bar starts (one line on the CLI)
    if config.method == "ppmi-svd":
        counts = cooccurrence(table, config)
        if counts.nnz == 0:
            raise TrainingError(
                f"no two items rated >= {config.min_rating} by one user within "
                f"{config.window} ratings of each other: nothing to learn from (lower the "
                "minimum rating)"
            )
    else:
        vectors, has_vector, info = _implicit_factors(table, config)
    steps = 3 + (config.power_iterations if config.method == "ppmi-svd" else 0)
    with Progress(steps, "train", "step", enabled=progress) as bar:
        if config.method == "ppmi-svd":
            vectors, has_vector, info = _ppmi_svd(counts, config, bar)
        else:
            bar.update(2)
        item_ids = [table.item_ids[i] for i in np.flatnonzero(has_vector)]
        items = vectors[has_vector].astype(np.float32)
        filled = 0
        if movies is not None:
            extra_ids, extra = genre_fill(item_ids, items, movies)
            filled = len(extra_ids)
            item_ids, items = item_ids + extra_ids, np.vstack([items, extra]).astype(np.float32)
        full = np.zeros((len(table.item_ids), config.dim))
        full_has = np.zeros(len(table.item_ids), dtype=bool)
        code = {item_id: c for c, item_id in enumerate(table.item_ids)}
        for row, item_id in enumerate(item_ids):
            c = code.get(item_id)
            if c is not None:
                full[c] = items[row]
                full_has[c] = True
        ucodes, users = user_vectors(table, full, full_has, config.rating_center)
        bar.update(1)
    return Embeddings(
        item_ids=item_ids,
        items=items,
        user_ids=[table.user_ids[c] for c in ucodes.tolist()],
        users=users,
        info={
            "ratings": float(len(table)),
            "items_trained": float(int(has_vector.sum())),
            "items_genre_filled": float(filled),
            **info,
            "seconds": round(time.perf_counter() - t0, 3),
        },
    )


def _ppmi_svd(
    counts: sp.csr_matrix, config: TrainConfig, bar: Progress
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """(n_items, dim) unit item vectors from the co-occurrence counts, which items have
    one, and counts for the info."""
    bar.update(1)
    pmi = ppmi(counts, config.smoothing)
    bar.update(1)
    rank = min(config.dim, max(min(pmi.shape) - 1, 1))
    u, s = randomized_svd(
        pmi,
        rank,
        power_iterations=config.power_iterations,
        oversample=config.oversample,
        seed=config.seed,
        progress=bar,
    )
    vectors = np.zeros((counts.shape[0], config.dim))
    vectors[:, :rank] = u * np.sqrt(s)
    vectors = _unit_rows(vectors)
    has_vector = np.asarray(pmi.getnnz(axis=1) > 0) & (np.linalg.norm(vectors, axis=1) > 0)
    return vectors, has_vector, {"cooccurrence_nnz": float(counts.nnz), "ppmi_nnz": float(pmi.nnz)}


def _implicit_factors(
    table: RatingTable, config: TrainConfig
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Item factors of `implicit`'s ALS or BPR fitted on the user x liked-item matrix (one
    thread, seeded: the same ratings give the same vectors)."""
    try:
        from implicit.cpu.als import AlternatingLeastSquares
        from implicit.cpu.bpr import BayesianPersonalizedRanking
    except ImportError:
        raise TrainingError(
            f"embedding method {config.method!r} needs the implicit library: "
            "pip install -e '.[embeddings]'"
        ) from None
    from nearline_rec.blas import limit_blas_threads

    sp = _sparse()
    keep = table.rating >= config.min_rating
    n_users, n_items = len(table.user_ids), len(table.item_ids)
    liked = sp.coo_matrix(
        (np.ones(int(keep.sum()), np.float32), (table.user[keep], table.item[keep])),
        shape=(n_users, n_items),
    ).tocsr()
    liked.data[:] = 1.0  # a movie rated twice is liked once
    if liked.nnz == 0:
        raise TrainingError(f"no rating >= {config.min_rating}: nothing to learn from")
    limit_blas_threads(1)  # implicit's ALS is slower with a threaded BLAS
    common = {
        "factors": config.dim,
        "regularization": config.regularization,
        "random_state": config.seed,
        "num_threads": 1,
    }
    model: Any = (
        AlternatingLeastSquares(alpha=config.alpha, iterations=config.iterations or 15, **common)
        if config.method == "als"
        else BayesianPersonalizedRanking(
            learning_rate=config.learning_rate, iterations=config.iterations or 100, **common
        )
    )
    model.fit(liked, show_progress=False)
    # BPR's last column is the item bias (the user side is a constant 1): not taste
    vectors = _unit_rows(np.asarray(model.item_factors, np.float64)[:, : config.dim])
    has_vector = (np.asarray(liked.getnnz(axis=0)) > 0) & (np.linalg.norm(vectors, axis=1) > 0)
    return vectors, has_vector, {"interactions": float(liked.nnz)}


def genre_fill(
    item_ids: list[str], items: np.ndarray, movies: Iterable[Movie]
) -> tuple[list[str], np.ndarray]:
    """Vectors for movies that have none: the mean of their genres' centroids."""
    have = set(item_ids)
    genres_of = {m.item_id: m.genres for m in movies}
    centroid: dict[str, np.ndarray] = {}
    count: dict[str, int] = {}
    for row, item_id in enumerate(item_ids):
        for g in genres_of.get(item_id, ()):
            centroid[g] = centroid.get(g, 0.0) + items[row]
            count[g] = count.get(g, 0) + 1
    out_ids: list[str] = []
    out: list[np.ndarray] = []
    for item_id, genres in genres_of.items():
        if item_id in have:
            continue
        known = [centroid[g] / count[g] for g in genres if g in centroid]
        if not known:
            continue
        vec = np.mean(known, axis=0)
        norm = float(np.linalg.norm(vec))
        if norm > 1e-9:
            out_ids.append(item_id)
            out.append(vec / norm)
    dim = items.shape[1]
    return out_ids, (np.vstack(out) if out else np.zeros((0, dim))).astype(np.float32)


def write_item2vec(path: str | Path, ids: Sequence[str], vectors: np.ndarray) -> None:
    """`<id>:<v1> ... <vd>` one a line (the format nearline_rec.data.loaders.read_embeddings
    reads)."""
    with Path(path).open("w", encoding="utf-8") as f:
        for item_id, row in zip(ids, vectors.tolist(), strict=True):
            f.write(f"{item_id}:" + " ".join(f"{v:.6f}" for v in row) + "\n")
