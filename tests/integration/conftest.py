"""Integration harness: real Kafka + Redis (scripts/services.sh), worker processes, helpers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_env(run: str, **extra: str) -> dict[str, str]:
    """Settings of one isolated run: own app id (consumer group), topics and key prefix."""
    env = {
        "NEARLINE_KAFKA__BOOTSTRAP_SERVERS": KAFKA,
        "NEARLINE_REDIS__URL": REDIS_URL,
        "NEARLINE_WORKER__APP_ID": run,
        "NEARLINE_TOPICS__USER_EVENTS": f"{run}-user-events",
        "NEARLINE_TOPICS__ITEM_UPDATES": f"{run}-item-updates",
        "NEARLINE_TOPICS__RECOMMENDATIONS": f"{run}-recommendations",
        "NEARLINE_TOPICS__USER_EVENTS_DLQ": f"{run}-user-events-dlq",
        "NEARLINE_TOPICS__ITEM_UPDATES_DLQ": f"{run}-item-updates-dlq",
        "NEARLINE_REDIS__KEY_PREFIX": f"{run[-20:]}:",
        "NEARLINE_TOPICS__PARTITIONS": "3",
        "NEARLINE_WORKER__BATCH_WITHIN": "0.1",
    }
    env.update(extra)
    return env


class Worker:
    """A real `nearline worker` process with its own settings, log and web port."""

    def __init__(self, env: dict[str, str], log_dir: Path, name: str = "worker") -> None:
        self.port = free_port()
        self.env = {**os.environ, **env, "NEARLINE_WORKER__WEB_PORT": str(self.port)}
        self.log_path = log_dir / f"{name}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker", "-l", "info"],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=self.env,
                start_new_session=True,
            )
        return self

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/status/", timeout=2) as r:
                data: dict[str, Any] = json.loads(r.read())
                return data
        except (OSError, ValueError):
            return None

    def wait(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            if not self.alive:
                raise AssertionError(f"worker died waiting for {what}:\n{self.log_tail()}")
            last = self.status()
            if last is not None and pred(last):
                return last
            time.sleep(0.3)
        raise AssertionError(
            f"timeout ({timeout}s) waiting for {what}; status={last}\n{self.log_tail()}"
        )

    def wait_ready(self, timeout: float = 90) -> dict[str, Any]:
        return self.wait(lambda s: bool(s.get("catalog_ready")), timeout, "catalog ready")

    def wait_events(self, n: int, timeout: float = 120) -> dict[str, Any]:
        return self.wait(
            lambda s: s["counters"].get("events_in", 0) >= n, timeout, f"{n} events consumed"
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def run_id() -> str:
    return f"it-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Factory of worker processes; every one started is stopped at teardown."""
    started: list[Worker] = []

    def make(env: dict[str, str], name: str = "worker") -> Worker:
        w = Worker(env, tmp_path, name)
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


def settings_for(env: dict[str, str]) -> Any:
    """The Settings a worker with this env sees (for producing from the test process)."""
    from app.settings import load_settings

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
    from app.data.sample import generate_sample
    from app.kafka_clients import ensure_topics
    from app.producer import item_updates_from_files, publish_items

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
