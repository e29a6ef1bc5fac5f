"""Per-user state updated incrementally per event: history, seen set, likes, decayed embedding."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nearline_rec.core import fastjson
from nearline_rec.core.events import UserEvent


@dataclass(frozen=True)
class UpdatePolicy:
    """How an event moves the user embedding; built from EmbeddingUpdateSettings."""

    half_life_seconds: float = 14 * 24 * 3600
    weights: tuple[tuple[str, float], ...] = (
        ("click", 1.0),
        ("view", 0.3),
        ("like", 2.0),
        ("purchase", 3.0),
        ("add_to_cart", 1.5),
        ("share", 1.5),
        ("dislike", -2.0),
        ("skip", -0.3),
    )
    rating_center: float = 3.0
    like_threshold: float = 4.0
    history_size: int = 200
    seen_size: int = 1000
    liked_size: int = 100
    dedupe_size: int = 500

    def weight(self, event: UserEvent) -> float:
        if event.type == "rating":
            return float(event.rating or 0.0) - self.rating_center
        return dict(self.weights).get(event.type, 0.0)

    def is_like(self, event: UserEvent) -> bool:
        if event.type == "rating":
            return (event.rating or 0.0) >= self.like_threshold
        return event.type in ("like", "purchase")

    def is_negative(self, event: UserEvent) -> bool:
        return self.weight(event) < 0


@dataclass
class UserState:
    """Everything the worker keeps about one user; serialised into the Faust table."""

    user_id: str
    history: list[tuple[str, str, float, float]] = field(default_factory=list)
    """(item_id, event type, timestamp, weight), oldest first."""
    seen: dict[str, None] = field(default_factory=dict)
    """Insertion-ordered set of items the user has interacted with."""
    liked: list[str] = field(default_factory=list)
    """Items the user liked (rating >= threshold, like, purchase), newest last."""
    ratings: dict[str, float] = field(default_factory=dict)
    """Latest explicit rating per item (bounded like seen)."""
    taste: np.ndarray | None = None
    """Decayed weighted sum of item embeddings (unnormalised); None before any signal."""
    taste_time: float = 0.0
    """Event time at which `taste` was last decayed to."""
    recent_event_ids: dict[str, None] = field(default_factory=dict)
    offsets: dict[int, int] = field(default_factory=dict)
    """Per source partition, the highest offset applied from it: a record at or below it is
    a redelivery. Per partition, because a user's events move to another partition when the
    topic grows (or come from a producer with another partitioner), where offsets are lower."""
    source: str = ""
    """Which incarnation of the source topic `offsets` are positions in (its topic id): a
    topic deleted and made again starts its offsets at 0, so positions in the old one say
    nothing about records of the new one."""
    last_offset: int = -1
    """The user's position for list versions (`2 * last_offset + mode`): the offset of the
    last event while the user's events come from one partition; one more per event after
    they move to a partition of lower offsets, so a user's versions only grow."""
    n_events: int = 0
    last_event_time: float = 0.0
    partition: int = -1
    """Source partition of the user's events (set by the batch processor)."""
    last_list: list[str] = field(default_factory=list)
    """Item ids of the list last written for the user (the online hit-rate metric)."""
    friends: dict[str, float] = field(default_factory=dict)
    """Users this user follows -> time of the last change (negative: unfollowed then)."""
    followers: dict[str, float] = field(default_factory=dict)
    """Users following this user (same form): whom this user's likes are forwarded to."""
    friend_likes: list[tuple[str, str, float]] = field(default_factory=list)
    """Recent likes of the users this user follows: (friend, item_id, time), bounded."""

    @property
    def embedding(self) -> np.ndarray | None:
        """Unit-length user embedding, or None when the user has no usable signal yet."""
        return _unit_or_none(self.taste)

    # -- serialisation: compact JSON with the vector as base64 float32 --------------------
    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {
            "u": self.user_id,
            "h": self.history,
            "s": list(self.seen),
            "l": self.liked,
            "r": self.ratings,
            "tt": self.taste_time,
            "e": list(self.recent_event_ids),
            "o": self.last_offset,
            "po": {str(p): o for p, o in self.offsets.items()},
            "si": self.source,
            "n": self.n_events,
            "et": self.last_event_time,
            "p": self.partition,
            "ll": self.last_list,
        }
        # only when used: the state of a user without friends stays as it was
        if self.friends:
            doc["fr"] = self.friends
        if self.followers:
            doc["fo"] = self.followers
        if self.friend_likes:
            doc["fl"] = self.friend_likes
        if self.taste is not None:
            doc["t"] = base64.b64encode(np.asarray(self.taste, dtype="<f4").tobytes()).decode()
        return fastjson.dumps(doc)

    @classmethod
    def from_bytes(cls, raw: bytes) -> UserState:
        doc = fastjson.loads(raw)
        return cls(
            user_id=doc["u"],
            history=[tuple(h) for h in doc["h"]],  # type: ignore[misc]
            seen=dict.fromkeys(doc["s"]),
            liked=list(doc["l"]),
            ratings=dict(doc.get("r", {})),
            taste=_taste(doc),
            taste_time=doc["tt"],
            recent_event_ids=dict.fromkeys(doc["e"]),
            offsets=_offsets(doc),
            source=doc.get("si", ""),
            last_offset=doc["o"],
            n_events=doc["n"],
            last_event_time=doc["et"],
            partition=doc.get("p", -1),
            last_list=list(doc.get("ll", ())),
            friends=dict(doc.get("fr", {})),
            followers=dict(doc.get("fo", {})),
            friend_likes=[tuple(fl) for fl in doc.get("fl", ())],  # type: ignore[misc]
        )


def directory_entry(raw: bytes) -> tuple[str, np.ndarray | None, list[str], float]:
    """(user id, embedding, liked, last event time) of a stored state: what the
    similar-users directory keeps, read without building the whole state (the directory is
    filled from every state in the table)."""
    doc = fastjson.loads(raw)
    return doc["u"], _unit_or_none(_taste(doc)), doc["l"], doc["et"]


def _taste(doc: dict[str, Any]) -> np.ndarray | None:
    """The stored taste vector of a decoded state (base64 float32), or None."""
    if "t" not in doc:
        return None
    return np.frombuffer(base64.b64decode(doc["t"]), dtype="<f4").astype(np.float32)


def _unit_or_none(taste: np.ndarray | None) -> np.ndarray | None:
    """Unit-length float32 copy of a taste vector; None without one or when it is ~0."""
    if taste is None:
        return None
    norm = float(np.linalg.norm(taste))
    if norm < 1e-9:
        return None
    return (taste / norm).astype(np.float32)


def state_position(raw: bytes) -> int:
    """The list-version position of a stored state (`UserState.last_offset`), which only
    grows for a user: of two stored copies, the one with the higher position is newer."""
    return int(fastjson.loads(raw)["o"])


def newest_states(
    records: list[tuple[bytes, bytes | None]], current: Callable[[bytes], bytes | None]
) -> set[int]:
    """Indexes of the state records worth applying from a changelog batch: for each key the
    one of highest position, and only if it is not older than the `current` stored one.
    A user's state can sit on two changelog partitions (its events moved when the topic
    grew), and recovery reads partitions in no set order: the newer copy must win.
    Tombstones (None) are always applied."""
    chosen: dict[bytes, int] = {}
    keep: set[int] = set()
    for i, (key, value) in enumerate(records):
        if value is None:
            keep.add(i)
            chosen.pop(key, None)
            continue
        j = chosen.get(key)  # states are parsed only for a key seen twice
        if j is None or state_position(records[j][1] or b"") <= state_position(value):
            chosen[key] = i
    for key, i in chosen.items():
        stored = current(key)
        if stored is None or state_position(stored) <= state_position(records[i][1] or b""):
            keep.add(i)
    return keep


def _offsets(doc: dict[str, Any]) -> dict[int, int]:
    if "po" in doc:
        return {int(p): o for p, o in doc["po"].items()}
    # a state written before per-partition offsets: all of it came from partition "p"
    partition, offset = doc.get("p", -1), doc["o"]
    return {partition: offset} if partition >= 0 and offset >= 0 else {}


def _bounded_add(ordered: dict[str, Any], key: str, value: Any, limit: int) -> None:
    ordered.pop(key, None)  # re-insert so the newest stays
    ordered[key] = value
    while len(ordered) > limit:
        del ordered[next(iter(ordered))]


def apply_event(
    state: UserState,
    event: UserEvent,
    offset: int,
    item_vector: Callable[[str], np.ndarray | None],
    policy: UpdatePolicy,
    partition: int = 0,
    source: str = "",
) -> bool:
    """Apply one event in place; False (and no change) when it was already applied.

    Idempotent two ways: an offset at or below the last one applied from the same source
    `partition` is a redelivery after a crash (the table changelog got ahead of the
    committed offset), and a known event id is a producer duplicate. An event from another
    partition than the user's earlier ones (the topic grew, or another partitioner) is new
    unless its id is known. `source` names the topic's incarnation (its topic id): the
    first event from a new one (the topic was deleted and made again) forgets the offsets
    of the old one, and only event ids guard against duplicates across the two.
    """
    if source and source != state.source:
        if state.source:  # a state from before topic ids were kept adopts the id as it is
            state.offsets.clear()
        state.source = source
    if offset >= 0 and offset <= state.offsets.get(partition, -1):
        return False
    if offset >= 0:
        state.offsets[partition] = offset
    if event.event_id in state.recent_event_ids:
        state.last_offset = max(state.last_offset, offset)
        return False
    _bounded_add(state.recent_event_ids, event.event_id, None, policy.dedupe_size)
    if offset >= 0:
        state.last_offset = max(state.last_offset + 1, offset)
    state.n_events += 1
    state.last_event_time = max(state.last_event_time, event.timestamp)

    weight = policy.weight(event)
    state.history.append((event.item_id, event.type, event.timestamp, weight))
    if len(state.history) > policy.history_size:
        del state.history[: len(state.history) - policy.history_size]
    _bounded_add(state.seen, event.item_id, None, policy.seen_size)
    if event.rating is not None:
        _bounded_add(state.ratings, event.item_id, event.rating, policy.seen_size)
    if policy.is_like(event):
        if event.item_id in state.liked:
            state.liked.remove(event.item_id)
        state.liked.append(event.item_id)
        if len(state.liked) > policy.liked_size:
            del state.liked[0]
    elif event.item_id in state.liked and policy.is_negative(event):
        state.liked.remove(event.item_id)

    vec = item_vector(event.item_id)
    if vec is not None and weight != 0.0:
        _move_taste(state, np.asarray(vec, dtype=np.float32), weight, event.timestamp, policy)
    return True


def _move_taste(
    state: UserState, vec: np.ndarray, weight: float, ts: float, policy: UpdatePolicy
) -> None:
    norm = float(np.linalg.norm(vec))
    if norm == 0.0:
        return
    unit = vec / norm
    if state.taste is None:
        state.taste = np.zeros_like(unit)
        state.taste_time = ts
    # Decay toward the newer of the two times only: an out-of-order (older) event
    # is added with its own smaller weight instead of rewinding the clock.
    if ts > state.taste_time:
        decay = 0.5 ** ((ts - state.taste_time) / policy.half_life_seconds)
        state.taste = state.taste * decay
        state.taste_time = ts
        scaled = weight
    else:
        scaled = weight * 0.5 ** ((state.taste_time - ts) / policy.half_life_seconds)
    state.taste = (state.taste + scaled * unit).astype(np.float32)


def policy_from_settings(emb: Any, worker: Any) -> UpdatePolicy:
    """Build the pure policy from the settings sections (kept here so the core owns the mapping)."""
    return UpdatePolicy(
        half_life_seconds=emb.half_life_seconds,
        weights=(
            ("click", emb.weight_click),
            ("view", emb.weight_view),
            ("like", emb.weight_like),
            ("purchase", emb.weight_purchase),
            ("add_to_cart", (emb.weight_click + emb.weight_like) / 2),
            ("share", (emb.weight_click + emb.weight_like) / 2),
            ("dislike", emb.weight_dislike),
            ("skip", emb.weight_skip),
        ),
        rating_center=emb.rating_center,
        like_threshold=emb.like_threshold,
        history_size=worker.history_size,
        seen_size=worker.seen_size,
        dedupe_size=worker.dedupe_size,
    )
