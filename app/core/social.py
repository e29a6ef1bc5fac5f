"""Who is whose friend, as events: decode user-relations and friend-activity records, and
apply them to the state of the user who owns them (pure; no I/O).

Fan-out on write. A relation "A follows B" (user-relations, any partition) is split by the
worker that reads it into two friend-activity records: `follow` keyed by A (A's state
learns its friend) and `follower` keyed by B (B's state learns who to tell). When B likes
an item, B's worker sends a `like` keyed by each follower (at most `fanout_per_like` of
them, a fresh sample per like); A's worker adds it to A's recent friend likes and makes
A's list again. A new follower gets the friend's recent likes at once (backfill).

Every change is last-writer-wins by the relation's timestamp and every like is kept once
per (friend, item), so a redelivered record changes nothing and records may arrive in
any order."""

from __future__ import annotations

import hashlib
import heapq
import json
from dataclasses import dataclass
from typing import Any

from nearline_rec.core.events import InvalidRecord, SchemaCheck, _id, _parse_json, _schema_problem

ACTIONS = ("add", "remove")
KINDS = ("follow", "follower", "like")
EDGE_SEPARATOR = "\t"
"""Between follower and followee in a user-relations key (ids hold no control character)."""


@dataclass(frozen=True, slots=True)
class Relation:
    """One change of the friend graph: `follower` starts or stops following `followee`."""

    event_id: str
    follower: str
    followee: str
    action: str
    timestamp: float

    def key(self) -> bytes:
        return edge_key(self.follower, self.followee)

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    def to_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "follower": self.follower,
            "followee": self.followee,
            "action": self.action,
            "timestamp": self.timestamp,
        }


@dataclass(frozen=True, slots=True)
class Activity:
    """A friend-activity record, keyed by `user` (the user whose state it changes).

    follow: `user` follows (add) or stops following (remove) `other`;
    follower: `other` starts or stops following `user`;
    like: `other`, whom `user` follows, liked `item_id` at `timestamp`."""

    kind: str
    user: str
    other: str
    timestamp: float
    event_id: str
    action: str = "add"
    item_id: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "user": self.user,
            "other": self.other,
            "timestamp": self.timestamp,
            "event_id": self.event_id,
        }
        if self.kind == "like":
            out["item_id"] = self.item_id
        else:
            out["action"] = self.action
        return out

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()


def edge_key(follower: str, followee: str) -> bytes:
    """Kafka key of a relation: one key per edge, so compaction keeps each edge's last action
    (keyed by user id alone, compaction would keep only a user's last edge)."""
    return f"{follower}{EDGE_SEPARATOR}{followee}".encode()


def _valid_object(
    raw: bytes | None, max_bytes: int, topic: str, schema: str, check: SchemaCheck
) -> dict[str, Any]:
    if raw is None:
        raise InvalidRecord("not_json", f"empty value (tombstone) on {topic}")
    doc = _parse_json(raw, max_bytes)
    if not isinstance(doc, dict):
        raise InvalidRecord("not_object", f"expected a JSON object, got {type(doc).__name__}")
    problem = _schema_problem(check, schema, doc)
    if problem is not None:
        raise InvalidRecord("schema", problem)
    return doc


def decode_relation(
    key: bytes | None, raw: bytes | None, *, check: SchemaCheck, max_bytes: int = 65536
) -> Relation:
    """Bytes of one user-relations record -> Relation, or InvalidRecord with a reason."""
    doc = _valid_object(raw, max_bytes, "user-relations", "user-relation", check)
    rel = Relation(
        event_id=doc["event_id"],
        follower=_id(doc["follower"]),
        followee=_id(doc["followee"]),
        action=doc["action"],
        timestamp=float(doc["timestamp"]),
    )
    if rel.follower == rel.followee:
        raise InvalidRecord("schema", f"user {rel.follower!r} cannot follow itself")
    if key is None or key != rel.key():
        got = "no key" if key is None else f"key {key[:64]!r}"
        raise InvalidRecord("bad_key", f"{got}; the key must be follower TAB followee")
    return rel


def decode_activity(
    key: bytes | None, raw: bytes | None, *, check: SchemaCheck, max_bytes: int = 65536
) -> Activity:
    """Bytes of one friend-activity record -> Activity, or InvalidRecord with a reason."""
    doc = _valid_object(raw, max_bytes, "friend-activity", "friend-activity", check)
    act = Activity(
        kind=doc["kind"],
        user=_id(doc["user"]),
        other=_id(doc["other"]),
        timestamp=float(doc["timestamp"]),
        event_id=doc["event_id"],
        action=doc.get("action", "add"),
        item_id=_id(doc["item_id"]) if "item_id" in doc else "",
    )
    if key is None or key != act.user.encode():
        got = "no key" if key is None else f"key {key[:64]!r}"
        raise InvalidRecord("bad_key", f"{got} does not match user {act.user!r}")
    return act


def split_relation(rel: Relation) -> tuple[Activity, Activity]:
    """The two records a relation becomes: one for the follower, one for the followee."""
    return (
        Activity("follow", rel.follower, rel.followee, rel.timestamp, rel.event_id, rel.action),
        Activity("follower", rel.followee, rel.follower, rel.timestamp, rel.event_id, rel.action),
    )


@dataclass(frozen=True)
class SocialPolicy:
    """Caps that keep a user with thousands of friends as cheap as one with ten."""

    friends_max: int = 1000
    """Friends a user's state keeps (past it, a fixed pseudo-random sample of them)."""
    followers_max: int = 1000
    """Followers a user's state keeps, to forward likes to (same sampling)."""
    fanout_per_like: int = 100
    """Followers one like is forwarded to (a fresh pseudo-random sample per like)."""
    likes_kept: int = 200
    """Friends' likes a user's state keeps, newest first."""
    backfill: int = 20
    """A new follower gets this many of the user's most recent likes."""


def _rank(*parts: str) -> int:
    """A stable pseudo-random rank (the same on every worker and run)."""
    h = hashlib.blake2b("\x00".join(parts).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "big")


def _set_edge(edges: dict[str, float], other: str, action: str, ts: float, cap: int) -> bool:
    """Last writer wins per edge: `edges[other]` is the time of the last change, positive
    while the edge stands, negative once removed (kept so an older add cannot revive it).
    Past `cap` standing edges, the ones of highest rank go: which ones stay does not depend
    on the order the edges came in, and costs O(log n) per edge (trimmed in bulk)."""
    current = edges.get(other)
    if current is not None and abs(current) > ts:
        return False
    if current is not None and abs(current) == ts and (current > 0) == (action == "add"):
        return False  # the same change again
    edges[other] = ts if action == "add" else -ts
    if len(edges) > cap + cap // 4 + 1:  # removals too: tombstones are bounded as well
        _trim(edges, cap)
    return True


def _trim(edges: dict[str, float], cap: int) -> None:
    standing = [o for o, t in edges.items() if t > 0]
    removed = [o for o, t in edges.items() if t <= 0]
    keep = set(heapq.nsmallest(cap, standing, key=_rank))
    # tombstones fill what is left of the room, newest first
    room = max(cap // 4, 0)
    keep.update(sorted(removed, key=lambda o: edges[o])[:room])
    for o in [o for o in edges if o not in keep]:
        del edges[o]


def standing(edges: dict[str, float]) -> list[str]:
    return [o for o, t in edges.items() if t > 0]


def fanout_targets(followers: dict[str, float], event_id: str, n: int) -> list[str]:
    """The followers one like goes to: all of them up to n, else the n of lowest rank for
    this like (each follower gets about n / followers of the friend's likes)."""
    live = standing(followers)
    if len(live) <= n:
        return sorted(live)
    return sorted(heapq.nsmallest(n, live, key=lambda f: _rank(event_id, f)))


@dataclass
class SocialChange:
    changed: bool = False
    """The state changed (write it)."""
    list_changed: bool = False
    """What the user's friends channel sees changed (make the list again)."""
    forwards: tuple[Activity, ...] = ()
    """Records to send on (backfill likes for a new follower)."""


def apply_activity(
    state: Any, act: Activity, policy: SocialPolicy, recent_likes: list[tuple[str, float]]
) -> SocialChange:
    """Apply one friend-activity record to its user's state (a UserState) in place.

    `recent_likes` are the user's own (item, time) likes, newest last: what a new follower
    gets as backfill."""
    if act.kind == "follow":
        if not _set_edge(state.friends, act.other, act.action, act.timestamp, policy.friends_max):
            return SocialChange()
        if act.action == "remove" or act.other not in state.friends:
            before = len(state.friend_likes)
            state.friend_likes = [fl for fl in state.friend_likes if fl[0] != act.other]
            return SocialChange(True, len(state.friend_likes) != before)
        return SocialChange(True, False)
    if act.kind == "follower":
        if not _set_edge(
            state.followers, act.other, act.action, act.timestamp, policy.followers_max
        ):
            return SocialChange()
        forwards: tuple[Activity, ...] = ()
        if act.action == "add" and state.followers.get(act.other, 0.0) > 0:
            recent = recent_likes[len(recent_likes) - policy.backfill :] if policy.backfill else []
            forwards = tuple(
                Activity(
                    "like", act.other, state.user_id, ts, f"bf-{state.user_id}-{item}", "add", item
                )
                for item, ts in recent
            )
        return SocialChange(True, False, forwards)
    # like: only from a standing friend (a like sent before an unfollow arrived is dropped)
    if state.friends.get(act.other, 0.0) <= 0:
        return SocialChange()
    for i, (friend, item, ts) in enumerate(state.friend_likes):
        if friend == act.other and item == act.item_id:
            if ts >= act.timestamp:
                return SocialChange()
            del state.friend_likes[i]
            break
    state.friend_likes.append((act.other, act.item_id, act.timestamp))
    if len(state.friend_likes) > policy.likes_kept:
        state.friend_likes.sort(key=lambda fl: fl[2])
        del state.friend_likes[: len(state.friend_likes) - policy.likes_kept]
    return SocialChange(True, True)


def like_forwards(
    state: Any, item_id: str, timestamp: float, event_id: str, policy: SocialPolicy
) -> list[Activity]:
    """The `like` records a user's like becomes: one per sampled follower."""
    if not state.followers:
        return []
    return [
        Activity("like", f, state.user_id, timestamp, event_id, "add", item_id)
        for f in fanout_targets(state.followers, event_id, policy.fanout_per_like)
    ]
