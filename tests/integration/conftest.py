"""Integration harness: real Kafka + Redis (scripts/services.sh), worker processes, helpers."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nearline_rec.tools.localrun import WorkerProcess, isolated_env, settings_for

REPO = Path(__file__).resolve().parents[2]
KAFKA = os.environ.get("NEARLINE_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9092")
REDIS_URL = os.environ.get("NEARLINE_REDIS__URL", "redis://127.0.0.1:6379/0")

pytestmark = pytest.mark.integration


def _reachable(hostport: str) -> bool:
    host, port = hostport.rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, int(port))) == 0


@pytest.fixture(scope="session", autouse=True)
def services() -> None:
    """Kafka and Redis must answer; under NEARLINE_REQUIRE_SERVICES=1 (CI) absence fails."""
    redis_hostport = REDIS_URL.split("://", 1)[1].split("/", 1)[0]
    missing = [
        name
        for name, hp in (("kafka", KAFKA.split(",")[0]), ("redis", redis_hostport))
        if not _reachable(hp)
    ]
    if missing:
        msg = (
            f"{' and '.join(missing)} not reachable (start them: bash scripts/services.sh "
            "start all)"
        )
        if os.environ.get("NEARLINE_REQUIRE_SERVICES") == "1" or os.environ.get("CI"):
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


def run_env(run: str, **extra: str) -> dict[str, str]:
    """An isolated run against the test services, with test-friendly batching."""
    return {
        "NEARLINE_KAFKA__BOOTSTRAP_SERVERS": KAFKA,
        "NEARLINE_REDIS__URL": REDIS_URL,
        "NEARLINE_TOPICS__PARTITIONS": "3",
        "NEARLINE_WORKER__BATCH_WITHIN": "0.1",
        **isolated_env(run),
        **extra,
    }


@pytest.fixture
def run_id() -> str:
    return f"it-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory of worker processes; every one started is stopped at teardown."""
    started: list[WorkerProcess] = []

    def make(env: dict[str, str], name: str = "worker", **kwargs: Any) -> WorkerProcess:
        w = WorkerProcess(env, tmp_path, name, **kwargs)
        started.append(w)
        return w.start()

    yield make
    for w in started:
        w.stop(timeout=20)


def consume_all(topic: str, *, min_records: int, timeout: float = 60.0) -> list[Any]:
    """Read a topic from the beginning until at least min_records arrived (or timeout)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=KAFKA,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=1000,
    )
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(out) < min_records:
            for msg in consumer:
                out.append(msg)
    finally:
        consumer.close()
    return out


def redis_client() -> Any:
    import redis

    return redis.Redis.from_url(REDIS_URL)


@dataclass
class CatalogRun:
    env: dict[str, str]
    settings: Any
    info: Any
    truth: dict[str, Any]
    updates: list[Any]

    def taste_items(self, taste: int) -> list[str]:
        """Item ids of one planted taste, most popular first."""
        items = self.truth["items"]
        ids = [i for i, v in items.items() if v["taste"] == taste]
        return sorted(ids, key=lambda i: items[i]["popularity_rank"])


@pytest.fixture
def catalog_run(run_id: str, tmp_path: Path) -> CatalogRun:
    """A run with a small planted sample generated, topics created and items published."""
    from nearline_rec.data.sample import generate_sample
    from nearline_rec.kafka_clients import ensure_topics
    from nearline_rec.producer import item_updates_from_files, publish_items

    env = run_env(run_id)
    s = settings_for(env)
    info = generate_sample(
        tmp_path / "sample",
        n_items=600,
        n_users=80,
        n_ratings=3000,
        dim=s.items.embedding_dim,
        seed=11,
    )
    ensure_topics(s)
    updates, _ = item_updates_from_files(
        info.movies_path, info.embeddings_path, dim=s.items.embedding_dim
    )
    publish_items(s, updates)
    truth = json.loads(info.truth_path.read_text())

    return CatalogRun(env=env, settings=s, info=info, truth=truth, updates=updates)
