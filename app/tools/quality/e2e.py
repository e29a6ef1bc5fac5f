"""End-to-end replay: the same events through a real worker on Kafka and Redis.

A worker process is started with its own app id, topics and Redis prefix (as the
integration tests start theirs, nearline_rec.tools.localrun), the catalog is published to its
item-updates topic, every event (warm-up and test) is produced to its user-events
topic, and the lists it publishes on its recommendations topic are read back. The
list a user had just before a scored event is the user's record with the highest
source offset below that event's offset. Metrics are computed from those lists
exactly as in-process, and the two are compared list by list.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import uuid
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nearline_rec.kafka_clients import client_kwargs, ensure_topics
from nearline_rec.producer import produce_events, publish_items
from nearline_rec.progress import Progress
from nearline_rec.settings import LSHSettings, Settings
from nearline_rec.tools.localrun import WorkerProcess, isolated_env, settings_for
from nearline_rec.tools.quality.evaluate import EvalConfig, EvaluationError, Prepared, Replay
from nearline_rec.tools.quality.metrics import MethodScore


@dataclass(frozen=True)
class E2EConfig:
    batch_size: int = 1
    """Worker micro-batch: 1 recomputes after every event, like the in-process replay."""
    partitions: int = 1
    """user-events partitions: 1 keeps the in-process order of every event."""
    ready_timeout: float = 120.0
    keep: bool = False
    """Keep the run's topics and Redis keys (default: delete them afterwards)."""


def run_overrides(settings: Settings, run: str, config: E2EConfig) -> dict[str, str]:
    """Settings of one isolated run (own consumer group, topics, key prefix) on the
    services these settings point at."""
    extra = {
        "NEARLINE_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "NEARLINE_REDIS__URL": settings.redis.url,
        "NEARLINE_TOPICS__PARTITIONS": str(config.partitions),
        "NEARLINE_WORKER__BATCH_SIZE": str(config.batch_size),
        "NEARLINE_WORKER__BATCH_WITHIN": "0.05",
    }
    if "degrade" in Settings.model_fields:
        # A replay is one burst of lag by design; the lists must be the real ones.
        extra["NEARLINE_DEGRADE__MODE"] = "normal"
        # One worker: its own counts are all the counts, and counting in memory applies an
        # event's popularity before its list is made, as the in-process replay does (the
        # shared counts reach a worker on its next read, a second later).
        extra["NEARLINE_DEGRADE__SHARED_STATS"] = "false"
    if "calibrate" in LSHSettings.model_fields:
        # the in-process replay indexes with the size defaults: the same index on both sides
        extra["NEARLINE_LSH__CALIBRATE"] = "false"
    return isolated_env(run, **extra)


def read_topic(settings: Settings, topic: str, n: int, timeout: float) -> list[Any]:
    """Every record of a topic from the beginning, until n arrived (or the timeout)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=1000,
        **client_kwargs(settings.kafka),
    )
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < n and time.monotonic() < deadline:
            for msg in consumer:
                out.append(msg)
    finally:
        consumer.close()
    return out


def cleanup(settings: Settings, run: str) -> None:
    """Delete the run's topics (all named after its unique id) and its Redis keys."""
    import redis
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(client_id=f"{run}-cleanup", **client_kwargs(settings.kafka))
    try:
        mine = [t for t in admin.list_topics() if t.startswith(f"{run}-")]
        if mine:
            admin.delete_topics(mine)
    finally:
        admin.close()
    r = redis.Redis.from_url(
        settings.redis.url,
        username=settings.redis.username,
        password=settings.redis.password.get_secret_value() if settings.redis.password else None,
    )
    keys = list(r.scan_iter(match=f"{settings.redis.key_prefix}*", count=1000))
    for i in range(0, len(keys), 500):
        r.delete(*keys[i : i + 500])


def run_e2e(
    settings: Settings,
    prepared: Prepared,
    replayed: Replay,
    config: EvalConfig,
    e2e: E2EConfig,
    *,
    in_process: dict[str, Any],
) -> dict[str, Any]:
    """Replay through a real worker; metrics from its published lists and the agreement."""
    run = f"eval-{uuid.uuid4().hex[:10]}"
    env = run_overrides(settings, run, e2e)
    s = settings_for(env)
    worker = WorkerProcess(env, Path(tempfile.mkdtemp(prefix="nearline-e2e-")), loglevel="warning")
    t0 = time.perf_counter()
    n = len(prepared.events)
    try:
        ensure_topics(s)
        publish_items(s, prepared.updates)
        worker.start()
        worker.wait_ready(e2e.ready_timeout)
        with Progress(n, "produce", "ev", enabled=config.progress) as bar:
            produce_events(s, prepared.events, progress=bar.update)
        with Progress(n, "worker", "ev", enabled=config.progress) as bar:

            def consumed(st: dict[str, Any]) -> bool:
                done = int(st.get("counters", {}).get("events_done", 0))
                bar.update(done - bar.n)
                return done >= n

            worker.wait(consumed, 120 + n / 20, f"the worker to consume {n} events")
        status = worker.status() or {}
        lists_written = int(status.get("counters", {}).get("lists_written", 0))
        seconds_worker = time.perf_counter() - t0
        inputs = read_topic(s, s.topics.user_events, n, 120)
        outputs = read_topic(s, s.topics.recommendations, lists_written, 120)
    except RuntimeError as exc:  # the worker process exited
        raise EvaluationError(f"{exc} (log {worker.log_path})") from None
    finally:
        worker.stop()
        if not e2e.keep:
            try:
                cleanup(s, run)
            except Exception as exc:  # noqa: BLE001 - cleanup must not hide the result
                print(f"warning: cleanup of {run} failed: {exc}", file=sys.stderr)
    return compare(
        prepared,
        replayed,
        config,
        inputs,
        outputs,
        in_process=in_process,
        info={
            "run": run,
            "batch_size": e2e.batch_size,
            "partitions": e2e.partitions,
            "records_in": len(inputs),
            "lists_out": len(outputs),
            "lists_written": lists_written,
            "seconds": round(seconds_worker, 1),
        },
    )


def compare(
    prepared: Prepared,
    replayed: Replay,
    config: EvalConfig,
    inputs: list[Any],
    outputs: list[Any],
    *,
    in_process: dict[str, Any],
    info: dict[str, Any],
) -> dict[str, Any]:
    """Score the worker's lists on the in-process scored events and compare them."""
    index_of: dict[str, int] = {}
    for i, ev in enumerate(prepared.events):
        index_of.setdefault(ev.event_id, i)
    position: dict[int, tuple[int, int]] = {}
    for msg in inputs:
        at = index_of.get(json.loads(msg.value)["event_id"])
        if at is not None and at not in position:
            position[at] = (msg.partition, msg.offset)
    # Per user: (source offset, items, channels) of every published list, by offset.
    lists: dict[str, list[tuple[int, tuple[str, ...], tuple[str, ...]]]] = {}
    versions: dict[str, int] = {}  # the ranking model each published list records
    for msg in outputs:
        doc = json.loads(msg.value)
        version = str(doc.get("model_version"))
        versions[version] = versions.get(version, 0) + 1
        items = tuple(i["item_id"] for i in doc["items"])
        channels = tuple(i["channel"] for i in doc["items"])
        lists.setdefault(doc["user_id"], []).append((doc["source"]["offset"], items, channels))
    for published in lists.values():
        published.sort(key=lambda r: r[0])
    offsets = {u: [r[0] for r in published] for u, published in lists.items()}

    k = config.k
    acc = MethodScore(k)
    compared = missing = identical_k = identical = hit_diff = 0
    overlap = 0.0
    for sc in replayed.scored:
        pos = position.get(sc.index)
        rows = lists.get(sc.user_id, [])
        j = -1 if pos is None or not rows else bisect_left(offsets[sc.user_id], pos[1]) - 1
        if j < 0:
            missing += 1
            acc.add(sc.item_id, ())
            continue
        _, items, channels = rows[j]
        rank = acc.add(sc.item_id, items, channels)
        mine = sc.lists["pipeline"]
        compared += 1
        identical_k += items[:k] == mine[:k]
        identical += items == mine
        overlap += len(set(items[:k]) & set(mine[:k])) / k
        in_proc_hit = sc.item_id in mine[:k]
        hit_diff += in_proc_hit != (0 < rank <= k)
    if not replayed.scored:
        raise EvaluationError("no scored events to compare")
    n_items = len(prepared.updates)
    e2e_pipeline = {"label": "full pipeline (through the worker)", **acc.summary(n_items)}
    mine = in_process["pipeline"]
    total = len(replayed.scored)
    return {
        **info,
        "methods": {"pipeline": e2e_pipeline},
        "agreement": {
            "scored_events": total,
            "compared": compared,
            "missing_lists": missing,
            "identical_top_k": identical_k / total,
            "identical_lists": identical / total,
            f"mean_overlap@{k}": overlap / total,
            "hit_disagreements": hit_diff,
            "worker_model_versions": versions,
            f"hit_rate@{k}_diff": e2e_pipeline[f"hit_rate@{k}"] - mine[f"hit_rate@{k}"],
            f"ndcg@{k}_diff": e2e_pipeline[f"ndcg@{k}"] - mine[f"ndcg@{k}"],
            "mrr_diff": e2e_pipeline["mrr"] - mine["mrr"],
        },
    }
