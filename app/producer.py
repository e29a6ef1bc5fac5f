"""Producing to the project's topics: item updates from files, user events from ratings."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from nearline_rec.core.events import ItemUpdate, UserEvent, encode_item_update
from nearline_rec.core.social import Relation
from nearline_rec.data.loaders import LoadError, Movie, Rating, read_embeddings, read_movies
from nearline_rec.kafka_clients import client_kwargs
from nearline_rec.settings import Settings


def make_producer(settings: Settings, **extra: object):  # -> kafka.KafkaProducer
    from kafka import KafkaProducer

    return KafkaProducer(
        acks="all",
        linger_ms=20,
        max_request_size=4 * 1024 * 1024,
        **client_kwargs(settings.kafka),
        **extra,  # type: ignore[arg-type]
    )


def release_ts(movie: Movie) -> float | None:
    if movie.year is None:
        return None
    return float((movie.year - 1970) * 365.25 * 86400 + 182 * 86400)


def item_updates_from_files(
    movies_path: str | Path,
    embeddings_path: str | Path,
    *,
    dim: int,
    ids_path: str | Path | None = None,
) -> tuple[list[ItemUpdate], list[str]]:
    """Join movies.csv with an embedding file; returns (updates, movies without a vector).

    Every movie is an update: one without a vector is published without an embedding, so
    the genre, trending and newest channels can still recommend it. The whole input is read
    and checked before anything is published, so a bad file changes nothing.
    """
    movies = read_movies(movies_path)
    if not movies:
        raise LoadError(str(movies_path), None, "no movies after the header")
    ids, matrix = read_embeddings(embeddings_path, ids_path=ids_path, expected_dim=dim)
    return join_items(movies, ids, matrix)


def join_items(
    movies: Sequence[Movie], ids: Sequence[str], matrix: np.ndarray
) -> tuple[list[ItemUpdate], list[str]]:
    """One upsert per item: those with a vector first (in file order), then the movies
    without one (no embedding, so out of the index but in the catalogue)."""
    meta = {m.item_id: m for m in movies}

    def update(item_id: str, vec: np.ndarray | None) -> ItemUpdate:
        m = meta.get(item_id)
        return ItemUpdate(
            item_id=item_id,
            op="upsert",
            embedding=None if vec is None else np.asarray(vec, np.float32),
            title=m.title if m else "",
            genres=m.genres if m else (),
            year=m.year if m else None,
            recommendable=True,
            release_ts=release_ts(m) if m else None,
        )

    with_vec = set(ids)
    unmatched = [m.item_id for m in movies if m.item_id not in with_vec]
    updates = [update(i, v) for i, v in zip(ids, matrix, strict=True)]
    updates += [update(i, None) for i in unmatched]
    return updates, sorted(unmatched)


def publish_items(
    settings: Settings,
    updates: Iterable[ItemUpdate],
    progress: Callable[[int], None] | None = None,
) -> int:
    producer = make_producer(settings)
    n = 0
    try:
        for u in updates:
            producer.send(
                settings.topics.item_updates, key=u.item_id.encode(), value=encode_item_update(u)
            )
            n += 1
            if progress:
                progress(1)
        producer.flush(timeout=60)
    finally:
        producer.close(timeout=10)
    return n


def events_from_ratings(ratings: Iterable[Rating]) -> Iterator[UserEvent]:
    """A MovieLens rating as a user event; the event id is stable so a replay is a no-op."""
    for r in ratings:
        yield UserEvent(
            event_id=f"r-{r.user_id}-{r.item_id}-{int(r.timestamp)}",
            user_id=r.user_id,
            item_id=r.item_id,
            type="rating",
            timestamp=float(r.timestamp),
            rating=float(r.rating),
        )


def produce_events(
    settings: Settings,
    events: Iterable[UserEvent],
    *,
    rate: float = 0.0,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Produce events keyed by user id; rate > 0 paces them (events per second)."""
    producer = make_producer(settings)
    n = 0
    start = time.monotonic()
    try:
        for ev in events:
            producer.send(settings.topics.user_events, key=ev.user_id.encode(), value=ev.encode())
            n += 1
            if progress:
                progress(1)
            if rate > 0:
                ahead = n / rate - (time.monotonic() - start)
                if ahead > 0.005:
                    time.sleep(ahead)
        producer.flush(timeout=120)
    finally:
        producer.close(timeout=10)
    return n


def relations_from_pairs(
    pairs: Iterable[tuple[str, str]], *, action: str, timestamp: float, both_ways: bool = False
) -> list[Relation]:
    """One relation per pair (and its reverse with `both_ways`); the event id names the
    edge, the action and the time, so loading the same file again is the same change."""
    out = []
    for a, b in pairs:
        for follower, followee in ((a, b), (b, a)) if both_ways else ((a, b),):
            eid = f"rel-{follower}-{followee}-{action}-{int(timestamp * 1000)}"
            out.append(Relation(eid[:128], follower, followee, action, timestamp))
    return out


def publish_relations(
    settings: Settings,
    relations: Iterable[Relation],
    progress: Callable[[int], None] | None = None,
) -> int:
    """Publish relations to user-relations, keyed by edge (any partition: the worker that
    reads one sends it on to the owners of both users)."""
    return produce_raw(
        settings,
        settings.topics.user_relations,
        ((rel.key(), rel.encode()) for rel in relations),
        progress=progress,
    )


def produce_raw(
    settings: Settings,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None]],
    progress: Callable[[int], None] | None = None,
) -> int:
    producer = make_producer(settings)
    n = 0
    try:
        for key, value in records:
            producer.send(topic, key=key, value=value)
            n += 1
            if progress:
                progress(1)
        producer.flush(timeout=60)
    finally:
        producer.close(timeout=10)
    return n
