"""`nearline bench friends`: fan-out on write against fan-out on read for the friends
channel, on a real friend graph (HetRec 2011 Last.fm: user_artists.dat + user_friends.dat).

The same slice of like events goes through the worker's batch processor three ways, each
on its own copy of the same warmed-up user states, in the same run:

- baseline: no friend graph (what the worker did before the channel);
- fan-out on write (what the worker does): each like becomes a friend-activity record per
  follower (capped), processed as the next batch, which makes the followers' lists again;
- fan-out on read (the alternative): each like is also written to a capped sorted set per
  user in Redis, and before a batch's lists are made the friends' sets of every touched
  user are read back (one pipeline per batch) into the user's state.

Figures: events/s (median of repeats) and the ratio to the baseline, records and lists per
event, Redis bytes per user (MEMORY USAGE) and user-state bytes per user."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from nearline_rec.core.user_state import UserState
from nearline_rec.data.loaders import Rating, read_pairs, read_plays
from nearline_rec.processing import BatchProcessor, RawRecord
from nearline_rec.settings import Settings
from nearline_rec.tools.quality.evaluate import catalog_updates
from nearline_rec.tools.quality.friends_eval import T0, replay
from nearline_rec.tools.quality.ratings import RatingTable
from nearline_rec.tools.quality.train import TrainConfig, train_embeddings

EVENTS_TOPIC = "user-events"
ACTIVITY_TOPIC = "friend-activity"
RECENT = 20
"""Likes kept per user in Redis for fan-out on read (the state's backfill size)."""


def _copy(states: dict[str, UserState]) -> dict[str, UserState]:
    return {u: UserState.from_bytes(s.to_bytes()) for u, s in states.items()}


def _records(events: list[Any], start: int) -> list[RawRecord]:
    return [
        RawRecord(EVENTS_TOPIC, 0, start + n, e.user_id.encode(), e.encode(), e.timestamp)
        for n, e in enumerate(events)
    ]


def _run(
    proc: BatchProcessor,
    states: dict[str, UserState],
    batches: list[list[RawRecord]],
    read_side: Any = None,
) -> dict[str, float]:
    lists = forwarded = 0
    t0 = time.perf_counter()
    for batch in batches:
        if read_side is not None:
            read_side.before(batch, states)
        out = proc.process(batch, states.get, now=T0)
        states.update(out.states)
        lists += len(out.lists)
        if out.forwards:  # the friend-activity agent's next batch
            acts = [
                RawRecord(ACTIVITY_TOPIC, 0, n, a.user.encode(), a.encode(), T0)
                for n, a in enumerate(out.forwards)
            ]
            forwarded += len(acts)
            more = proc.process(acts, states.get, now=T0)
            states.update(more.states)
            lists += len(more.lists)
        if read_side is not None:
            read_side.after(batch)
    seconds = time.perf_counter() - t0
    n = sum(len(b) for b in batches)
    return {"seconds": seconds, "events_per_s": n / seconds, "lists": lists, "forwarded": forwarded}


class ReadSide:
    """Fan-out on read: likes written to `likes:{user}` (a sorted set by time, capped), and
    read back for every friend of a batch's users before their lists are made."""

    def __init__(self, client: Any, prefix: str, friends: dict[str, list[str]]) -> None:
        self.r = client
        self.prefix = prefix
        self.friends = friends
        self.reads = 0

    def key(self, user: str) -> str:
        return f"{self.prefix}likes:{{{user}}}"

    def before(self, batch: list[RawRecord], states: dict[str, UserState]) -> None:
        users = list(dict.fromkeys(r.key.decode() for r in batch if r.key))
        pipe = self.r.pipeline(transaction=False)
        asked: list[tuple[str, str]] = []
        for u in users:
            for f in self.friends.get(u, ()):
                pipe.zrevrange(self.key(f), 0, RECENT - 1, withscores=True)
                asked.append((u, f))
        got = pipe.execute() if asked else []
        self.reads += len(asked)
        fresh: dict[str, list[tuple[str, str, float]]] = {}
        for (u, f), rows in zip(asked, got, strict=True):
            fresh.setdefault(u, []).extend((f, item.decode(), ts) for item, ts in rows)
        for u, likes in fresh.items():
            st = states.setdefault(u, UserState(user_id=u))
            st.friends = {f: T0 - 1.0 for f in self.friends[u]}
            st.friend_likes = likes

    def after(self, batch: list[RawRecord]) -> None:
        pipe = self.r.pipeline(transaction=False)
        for rec in batch:
            doc = json.loads(rec.value or b"{}")
            if doc.get("type") == "like":
                key = self.key(doc["user_id"])
                pipe.zadd(key, {doc["item_id"]: doc["timestamp"]})
                pipe.zremrangebyrank(key, 0, -(RECENT + 1))
        pipe.execute()


def run(
    out_dir: Path,
    settings: Settings,
    plays_path: Path,
    relations_path: Path,
    *,
    events: int = 4000,
    batch: int = 500,
    repeats: int = 3,
    seed: int = 42,
) -> dict[str, Any]:
    import redis

    plays = read_plays(plays_path)
    pairs = list(dict.fromkeys(read_pairs(relations_path)))
    rng = np.random.default_rng(seed)
    likes = list(dict.fromkeys((u, i) for u, i, _ in plays))
    likes = [likes[i] for i in rng.permutation(len(likes))]
    emb = train_embeddings(
        RatingTable.from_ratings(Rating(u, i, 5.0, float(n)) for n, (u, i) in enumerate(likes)),
        TrainConfig(dim=settings.items.embedding_dim, seed=seed),
    )
    updates = catalog_updates([], emb.item_ids, emb.items)
    warm, slice_ = likes[: len(likes) - events], likes[len(likes) - events :]
    # warmed-up states with the graph (write side) and without it (baseline, read side)
    rec_g, with_graph, _ = replay(settings, updates, warm, pairs, True, False)
    rec_b, no_graph, _ = replay(settings, updates, warm, [], True, False)
    from nearline_rec.core.events import UserEvent

    evs = [
        UserEvent(f"b-{u}-{i}", u, i, "like", T0 + len(warm) + n) for n, (u, i) in enumerate(slice_)
    ]
    batches = [_records(evs[i : i + batch], len(warm) + i) for i in range(0, len(evs), batch)]
    friends: dict[str, list[str]] = {}
    for a, b in pairs:
        friends.setdefault(a, []).append(b)
    cap = settings.recall.friends_max
    friends = {u: fs[:cap] for u, fs in friends.items()}

    client = redis.Redis.from_url(settings.redis.url)
    prefix = f"bench-friends-{os.getpid()}:"
    pipe = client.pipeline(transaction=False)
    for u, st in no_graph.items():  # fan-out on read starts from the same recent likes
        recent = [(i, ts) for i, _, ts, _ in st.history[-RECENT:]]
        if recent:
            pipe.zadd(f"{prefix}likes:{{{u}}}", dict(recent))
    pipe.execute()

    def processor(rec: Any) -> BatchProcessor:
        return BatchProcessor(
            rec, max_event_bytes=65536, source_topic=EVENTS_TOPIC, activity_topic=ACTIVITY_TOPIC
        )

    modes: dict[str, list[dict[str, float]]] = {"baseline": [], "write": [], "read": []}
    for _ in range(repeats):  # interleaved, so load changes touch every mode alike
        modes["baseline"].append(_run(processor(rec_b), _copy(no_graph), batches))
        modes["write"].append(_run(processor(rec_g), _copy(with_graph), batches))
        side = ReadSide(client, prefix, friends)
        modes["read"].append(_run(processor(rec_b), _copy(no_graph), batches, side))
        # the read side's writes are undone: every repeat starts from the same sets
        keys = {side.key(e.user_id) for e in evs}
        p = client.pipeline(transaction=False)
        for k in keys:
            p.delete(k)
        for u in {e.user_id for e in evs}:
            recent = (
                [(i, ts) for i, _, ts, _ in no_graph[u].history[-RECENT:]] if u in no_graph else []
            )
            if recent:
                p.zadd(f"{prefix}likes:{{{u}}}", dict(recent))
        p.execute()

    sample = [u for u in list(no_graph)[:500]]
    sizes = [client.memory_usage(f"{prefix}likes:{{{u}}}") or 0 for u in sample]
    read_bytes = statistics.mean(sizes)
    for k in client.scan_iter(f"{prefix}*", count=1000):
        client.delete(k)
    state_plain = statistics.mean(len(s.to_bytes()) for s in no_graph.values())
    state_graph = statistics.mean(len(s.to_bytes()) for s in with_graph.values())
    base = statistics.median(m["events_per_s"] for m in modes["baseline"])
    summary: dict[str, Any] = {
        "dataset": {"plays": plays_path.name, "relations": relations_path.name},
        "users": len(no_graph),
        "friend_edges": len(pairs),
        "mean_friends": round(len(pairs) / max(len(friends), 1), 2),
        "events_measured": len(evs),
        "batch": batch,
        "repeats": repeats,
        "load_average": os.getloadavg()[0],
    }
    for name, runs in modes.items():
        eps = statistics.median(m["events_per_s"] for m in runs)
        summary[name] = {
            "events_per_s_median": round(eps, 1),
            "ratio_to_baseline": round(eps / base, 3),
            "lists_per_event": round(runs[0]["lists"] / len(evs), 3),
            "friend_records_per_event": round(runs[0]["forwarded"] / len(evs), 3),
        }
    summary["write"]["redis_bytes_per_user_added"] = 0
    summary["write"]["state_bytes_per_user_added"] = round(state_graph - state_plain, 1)
    summary["read"]["redis_bytes_per_user_added"] = round(read_bytes, 1)
    summary["read"]["redis_reads_per_event"] = round(side.reads / len(evs), 2)  # of the last repeat
    summary["read"]["freshness"] = (
        "a friend's like reaches a list only when the user's own next event makes it"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "friends-fanout.json").write_text(
        json.dumps({"summary": summary, "runs": modes}, indent=2) + "\n", encoding="utf-8"
    )
    _plot(summary, out_dir / "friends-fanout.png")
    return summary


def _plot(summary: dict[str, Any], path: Path) -> None:
    from nearline_rec.extras import pyplot

    plt = pyplot()

    names = ["baseline", "write", "read"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    bars = ax.bar(names, [summary[n]["events_per_s_median"] for n in names])
    ax.bar_label(bars, fmt="%.0f")
    ax.set_ylabel("like events/s (median)")
    ax.set_title("batch processor, Last.fm friend graph")
    vals = [
        0,
        summary["write"]["state_bytes_per_user_added"],
        summary["read"]["redis_bytes_per_user_added"],
    ]
    bars = ax2.bar(["baseline", "write (state)", "read (Redis)"], vals)
    ax2.bar_label(bars, fmt="%.0f")
    ax2.set_ylabel("bytes per user added")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
