"""End-to-end replay: the same events through a real worker on Kafka and Redis.

A worker process is started with its own app id, topics and Redis prefix (as the
integration tests start theirs), the catalog is published to its item-updates
topic, every event (warm-up and test) is produced to its user-events topic, and
the lists it publishes on its recommendations topic are read back. The list a
user had just before a scored event is the user's record with the highest source
offset below that event's offset. Metrics are computed from those lists exactly
as in-process, and the two are compared list by list.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from app.kafka_clients import client_kwargs, ensure_topics
from app.producer import produce_events, publish_items
from app.quality.evaluate import EvalConfig, EvaluationError, Prepared, Replay
from app.quality.metrics import MethodScore
from app.settings import Settings, load_settings


@dataclass(frozen=True)
class E2EConfig:
    batch_size: int = 1
    """Worker micro-batch: 1 recomputes after every event, like the in-process replay."""
    partitions: int = 1
    """user-events partitions: 1 keeps the in-process order of every event."""
    ready_timeout: float = 120.0
    keep: bool = False
    """Keep the run's topics and Redis keys (default: delete them afterwards)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_overrides(run: str, config: E2EConfig, port: int) -> dict[str, str]:
    """Settings of one isolated run: its own consumer group, topics and key prefix."""
    env = {
        "NEARLINE_WORKER__APP_ID": run,
        "NEARLINE_TOPICS__USER_EVENTS": f"{run}-user-events",
        "NEARLINE_TOPICS__ITEM_UPDATES": f"{run}-item-updates",
        "NEARLINE_TOPICS__RECOMMENDATIONS": f"{run}-recommendations",
        "NEARLINE_TOPICS__USER_EVENTS_DLQ": f"{run}-user-events-dlq",
        "NEARLINE_TOPICS__ITEM_UPDATES_DLQ": f"{run}-item-updates-dlq",
        "NEARLINE_TOPICS__PARTITIONS": str(config.partitions),
        "NEARLINE_REDIS__KEY_PREFIX": f"{run}:",
        "NEARLINE_WORKER__BATCH_SIZE": str(config.batch_size),
        "NEARLINE_WORKER__BATCH_WITHIN": "0.05",
        "NEARLINE_WORKER__WEB_PORT": str(port),
    }
    if "degrade" in Settings.model_fields:
        # A replay is one burst of lag by design; the lists must be the real ones.
        env["NEARLINE_DEGRADE__MODE"] = "normal"
    return env


def settings_with(env: dict[str, str]) -> Settings:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return load_settings()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class WorkerProcess:
    """`nearline worker` as a child process with its own settings and log file."""

    def __init__(self, env: dict[str, str], port: int, log_path: Path) -> None:
        self.env = {**os.environ, **env}
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker", "-l", "warning"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )

    def status(self) -> dict[str, Any] | None:
        try:
            url = f"http://127.0.0.1:{self.port}/status/"
            with urllib.request.urlopen(url, timeout=2) as r:
                data: dict[str, Any] = json.loads(r.read())
                return data
        except (OSError, ValueError):
            return None

    def wait(self, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise OSError(f"worker exited while waiting for {what}: {self.log_tail()}")
            st = self.status()
            if st is not None and pred(st):
                return
            time.sleep(0.3)
        raise OSError(f"timed out after {timeout:.0f}s waiting for {what} (log {self.log_path})")

    def log_tail(self, n: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


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
    port = free_port()
    env = run_overrides(run, e2e, port)
    s = settings_with(env)
    log_dir = Path(tempfile.mkdtemp(prefix="nearline-e2e-"))
    worker = WorkerProcess(env, port, log_dir / "worker.log")
    t0 = time.perf_counter()
    n = len(prepared.events)
    try:
        ensure_topics(s)
        publish_items(s, prepared.updates)
        worker.start()
        worker.wait(lambda st: bool(st.get("catalog_ready")), e2e.ready_timeout, "catalog")
        with tqdm(total=n, desc="produce", unit="ev", disable=not config.progress) as bar:
            produce_events(s, prepared.events, progress=bar.update)
        with tqdm(total=n, desc="worker", unit="ev", disable=not config.progress) as bar:

            def consumed(st: dict[str, Any]) -> bool:
                done = int(st.get("counters", {}).get("events_in", 0))
                bar.update(done - bar.n)
                return done >= n

            worker.wait(consumed, 120 + n / 20, f"the worker to consume {n} events")
        status = worker.status() or {}
        lists_written = int(status.get("counters", {}).get("lists_written", 0))
        seconds_worker = time.perf_counter() - t0
        inputs = read_topic(s, s.topics.user_events, n, 120)
        outputs = read_topic(s, s.topics.recommendations, lists_written, 120)
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
        i = index_of.get(json.loads(msg.value)["event_id"])
        if i is not None and i not in position:
            position[i] = (msg.partition, msg.offset)
    # Per user: (source offset, items, channels) of every published list, by offset.
    lists: dict[str, list[tuple[int, tuple[str, ...], tuple[str, ...]]]] = {}
    for msg in outputs:
        doc = json.loads(msg.value)
        items = tuple(i["item_id"] for i in doc["items"])
        channels = tuple(i["channel"] for i in doc["items"])
        lists.setdefault(doc["user_id"], []).append((doc["source"]["offset"], items, channels))
    for rows in lists.values():
        rows.sort(key=lambda r: r[0])
    offsets = {u: [r[0] for r in rows] for u, rows in lists.items()}

    k = config.k
    acc = MethodScore(k)
    compared = missing = identical_k = identical = hit_diff = 0
    overlap = 0.0
    for sc in replayed.scored:
        pos = position.get(sc.index)
        rows = lists.get(sc.user_id)
        j = -1 if pos is None or rows is None else bisect_left(offsets[sc.user_id], pos[1]) - 1
        if j < 0:
            missing += 1
            acc.add(sc.item_id, ())
            continue
        _, items, channels = rows[j]  # type: ignore[index]
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
            f"hit_rate@{k}_diff": e2e_pipeline[f"hit_rate@{k}"] - mine[f"hit_rate@{k}"],
            f"ndcg@{k}_diff": e2e_pipeline[f"ndcg@{k}"] - mine[f"ndcg@{k}"],
            "mrr_diff": e2e_pipeline["mrr"] - mine["mrr"],
        },
    }
