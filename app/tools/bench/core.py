"""In-process core throughput: BatchProcessor micro-batches with no Kafka, Redis or Faust.

It does the pure part of what the ingest agent does per batch: decode and validate the raw
bytes, load/store user state as the table's bytes, apply, recompute every touched user's list,
and encode the Redis value and the output record. The end-to-end figure minus this one is
what the services and the framework cost.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from nearline_rec.core.user_state import UserState
from nearline_rec.factory import build_recommender
from nearline_rec.heap import freeze_heap
from nearline_rec.processing import BatchProcessor, RawRecord
from nearline_rec.settings import load_settings
from nearline_rec.tools.bench import median
from nearline_rec.tools.bench.workload import Catalogue, events, item_updates


def build_processor(cat: Catalogue, **settings: Any) -> BatchProcessor:
    s = load_settings(items={"embedding_dim": cat.vectors.shape[1]}, **settings)
    rec = build_recommender(s)
    ups = item_updates(cat)
    for start in range(0, len(ups), 5000):
        rec.catalog.upsert_many(ups[start : start + 5000])
    rec.catalog.reindex()
    return BatchProcessor(
        rec, max_event_bytes=s.worker.max_event_bytes, source_topic=s.topics.user_events
    )


def raw_batches(
    cat: Catalogue,
    n_events: int,
    n_users: int,
    batch_size: int,
    partitions: int = 4,
    seed: int = 2,
    start_index: int = 0,
) -> list[list[RawRecord]]:
    records = []
    offsets = [0] * partitions
    for ev in events(cat, n_events, n_users=n_users, seed=seed, start_index=start_index):
        p = hash(ev.user_id) % partitions
        records.append(
            RawRecord("user-events", p, offsets[p], ev.user_id.encode(), ev.encode(), ev.timestamp)
        )
        offsets[p] += 1
    return [records[i : i + batch_size] for i in range(0, len(records), batch_size)]


def run_batches(
    processor: BatchProcessor, batches: list[list[RawRecord]], table: dict[bytes, bytes]
) -> tuple[list[float], int, int]:
    """(seconds per batch, events, lists) doing everything the agent does but the I/O."""

    def load(user_id: str) -> UserState | None:
        raw = table.get(user_id.encode())
        return None if raw is None else UserState.from_bytes(raw)

    times = []
    n_events = n_lists = 0
    for batch in batches:
        t = time.perf_counter()
        result = processor.process(batch, load)
        for user_id, state in result.states.items():
            table[user_id.encode()] = state.to_bytes()
        for _, write, doc in result.lists:
            json.dumps(write.value, separators=(",", ":"))  # the Redis value
            json.dumps(doc, separators=(",", ":"))  # the recommendations record
        times.append(time.perf_counter() - t)
        n_events += len(batch)
        n_lists += len(result.lists)
    return times, n_events, n_lists


def core_throughput(
    cat: Catalogue,
    *,
    n_events: int,
    n_users: int,
    batch_size: int = 200,
    warm_events: int = 5000,
    settings: dict[str, Any] | None = None,
    profile: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Events/s of the in-process core; `settings` overrides groups of the settings (e.g.
    {"ranking": {"model_path": "m.onnx"}}). With `profile`, one more pass over the same
    batches under cProfile gives the ranking stage's share of the time (`ranking_share`)."""
    from nearline_rec.blas import limit_blas_threads

    limit_blas_threads(1)  # as in a worker process
    t = time.perf_counter()
    processor = build_processor(cat, **(settings or {}))
    load_s = time.perf_counter() - t
    freeze_heap()  # as the worker does once its catalog is loaded
    table: dict[bytes, bytes] = {}
    warm = raw_batches(cat, warm_events, n_users, batch_size, seed=11)
    run_batches(processor, warm, table)
    batches = raw_batches(cat, n_events, n_users, batch_size)
    times, n_ev, n_lists = run_batches(processor, batches, table)
    per_batch_eps = [len(b) / s for b, s in zip(batches, times, strict=True)]
    total = sum(times)
    out = {
        "events": n_ev,
        "batch_size": batch_size,
        "catalog_load_s": round(load_s, 2),
        "index": "lsh" if processor.rec.catalog.uses_lsh else "exact",
        "events_per_s": round(n_ev / total, 1),
        "median_batch_events_per_s": round(median(per_batch_eps), 1),
        "lists_per_s": round(n_lists / total, 1),
        "lists_per_event": round(n_lists / n_ev, 3),
        "ms_per_list": round(1000 * total / max(n_lists, 1), 3),
        "model_version": processor.rec.model.version,
    }
    if profile:
        # new events (own ids) after the timed ones, so every list is recomputed
        more = raw_batches(cat, n_events, n_users, batch_size, seed=5, start_index=10 * n_events)
        out["ranking_share"] = ranking_share(processor, more, table)
    log(
        f"  core in-process: {out['events_per_s']} events/s, {out['lists_per_s']} lists/s "
        f"({out['ms_per_list']} ms a list)"
    )
    return out


# The ranking stage: the linear path's rank(); the learned path's feature rows, the model
# call (the scorer from app/ranking.py) and diversify() outside rank().
_RANK_FUNCS = {
    ("rank.py", "rank"): "rank",
    ("rank.py", "learned_features"): "features",
    ("rank.py", "diversify"): "diversify",
    ("ranking.py", "scorer"): "model_call",
}


def ranking_share(
    processor: BatchProcessor, batches: list[list[RawRecord]], table: dict[bytes, bytes]
) -> dict[str, Any]:
    """Share of the core's time spent ranking, from a cProfile pass over `batches` (the
    profiler slows every call, so this is a share, not a speed): per part and in total."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    run_batches(processor, batches, table)
    prof.disable()
    wall = time.perf_counter() - t
    stats: dict[Any, Any] = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    parts = dict.fromkeys(_RANK_FUNCS.values(), 0.0)
    rank_key = None
    for key in stats:
        if (key[0].rsplit("/", 1)[-1], key[2]) == ("rank.py", "rank"):
            rank_key = key
    for key, (_cc, _nc, _tt, ct, callers) in stats.items():
        part = _RANK_FUNCS.get((key[0].rsplit("/", 1)[-1], key[2]))
        if part is None:
            continue
        if part == "diversify":  # the linear path's diversify is inside rank() already
            ct = sum(c[3] for caller, c in callers.items() if caller != rank_key)
        parts[part] += ct
    total = sum(parts.values())
    return {
        "profiled_wall_s": round(wall, 3),
        "share": round(total / wall, 4) if wall > 0 else None,
        "parts": {k: round(v / wall, 4) for k, v in parts.items()} if wall > 0 else {},
        "how": "cProfile cumulative time of rank(), learned_features(), the model call and "
        "diversify() outside rank(), over the profiled wall time of the same batches",
    }
