"""Fault-injection harness: own Redis and Kafka instances, tracked producing, and the
exactly-once check of a run against a pure in-process replay of the same events.

The shared test services are never stopped: a test that stops Redis or restarts the broker
starts its own instance here, on free ports and in its own directory, and cleans it up.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nearline_rec.core.events import ItemUpdate, UserEvent, encode_item_update
from nearline_rec.producer import make_producer
from nearline_rec.records import decode_item_update
from nearline_rec.tools.localrun import free_port

REPO = Path(__file__).resolve().parents[2]
SERVICES = REPO / "scripts" / "services.sh"
T0 = 1_700_000_000.0


# -- own services ------------------------------------------------------------------------------


class OwnRedis:
    """A redis-server of the test's own. With `persistent`, an append-only file in its dir
    survives stop/start (a Redis restart keeps data, as a production Redis would)."""

    def __init__(
        self,
        tmp: Path,
        *,
        persistent: bool = True,
        extra: Sequence[str] = (),
        port: int = 0,
        tls: ThrowawayCA | None = None,
    ) -> None:
        self.port = port or free_port()
        self.dir = Path(tmp) / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.persistent = persistent
        self.extra = list(extra)
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "redis.log"

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def args(self) -> list[str]:
        persist = (
            ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
            if self.persistent
            else ["--appendonly", "no", "--save", ""]
        )
        return [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--logfile",
            str(self.log),
            *persist,
            *self.tls_args(),
            *self.extra,
        ]

    def tls_args(self) -> list[str]:
        if self.tls is None:
            return []
        return [
            "--port", "0", "--tls-port", str(self.port),
            "--tls-cert-file", str(self.tls.server_cert),
            "--tls-key-file", str(self.tls.server_key),
            "--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "no",
        ]  # fmt: skip

    def start(self, ping: Callable[[], bool] | None = None, timeout: float = 15) -> OwnRedis:
        self.proc = subprocess.Popen(
            self.args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        ping = ping or self.ping
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"own redis-server exited: {self.log_tail()}")
            if ping():
                return self
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"own redis-server did not answer: {self.log_tail()}")

    def ping(self) -> bool:
        import redis

        tls = {"ssl": True, "ssl_ca_certs": str(self.tls.ca)} if self.tls else {}
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1, **tls).ping())
        except (redis.exceptions.AuthenticationError, redis.exceptions.ResponseError):
            return True  # answers, wants a login
        except (redis.ConnectionError, redis.TimeoutError):
            return False

    def stop(self) -> None:
        """SIGTERM: Redis flushes its append-only file and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass(frozen=True)
class ThrowawayCA:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost (openssl)."""

    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def server_bundle(self) -> Path:
        """Key (PKCS#8) + certificate chain in one PEM: Kafka's PEM keystore."""
        return self.dir / "server-bundle.pem"

    @classmethod
    def make(cls, d: Path, name: str = "nearline-test-ca") -> ThrowawayCA:
        if shutil.which("openssl") is None:
            raise AssertionError("openssl not found: install it (apt-get install -y openssl)")
        d.mkdir(parents=True, exist_ok=True)

        def run(*args: str) -> None:
            subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.pem", "-days", "2", "-subj", f"/CN={name}")  # fmt: skip
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
            "server.csr", "-subj", "/CN=localhost")  # fmt: skip
        (d / "ext.cnf").write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
            "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        )
        run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2",
            "-extfile", "ext.cnf")  # fmt: skip
        ca = cls(d)
        ca.server_bundle.write_bytes(ca.server_key.read_bytes() + ca.server_cert.read_bytes())
        for p in (ca.server_key, ca.server_bundle, d / "ca.key"):
            p.chmod(0o600)
        return ca


class OwnKafka:
    """A broker of the test's own: scripts/services.sh with its own state dir and ports."""

    def __init__(self, tmp: Path, **env: str) -> None:
        self.port = free_port()
        self.controller_port = free_port()
        while self.controller_port == self.port:
            self.controller_port = free_port()
        self.dir = Path(tmp) / f"kafka-{self.port}"
        self.env = {
            **os.environ,
            "NEARLINE_SERVICES_DIR": str(self.dir),
            "NEARLINE_KAFKA_PORT": str(self.port),
            "NEARLINE_KAFKA_CONTROLLER_PORT": str(self.controller_port),
            "NEARLINE_KAFKA_HEAP_OPTS": "-Xms256m -Xmx384m",
            "NEARLINE_STOP_TIMEOUT": "20",
            **env,
        }

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self, cmd: str) -> float:
        t0 = time.monotonic()
        res = subprocess.run(
            ["bash", str(SERVICES), cmd, "kafka"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if res.returncode != 0:
            raise AssertionError(f"services.sh {cmd} kafka failed:\n{res.stdout}\n{res.stderr}")
        return time.monotonic() - t0

    def start(self) -> float:
        return self._run("start")

    def stop(self) -> float:
        return self._run("stop")

    def restart(self) -> float:
        return self._run("restart")

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = (self.dir / "kafka.log").read_text(errors="replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return ""


class OwnKafkaCluster:
    """`n` KRaft nodes (broker and controller each) of the test's own, one cluster id, one
    quorum, the broker's own topics replicated `n` ways: scripts/services.sh per node."""

    def __init__(self, tmp: Path, n: int = 3) -> None:
        import base64
        import uuid

        cluster_id = base64.urlsafe_b64encode(uuid.UUID(int=random.getrandbits(128)).bytes)
        cluster_id = b"A" + cluster_id.rstrip(b"=")[1:]  # never starting with '-'
        self.nodes = [OwnKafka(tmp) for _ in range(n)]
        voters = ",".join(
            f"{i + 1}@127.0.0.1:{node.controller_port}" for i, node in enumerate(self.nodes)
        )
        for i, node in enumerate(self.nodes):
            node.env.update(
                NEARLINE_KAFKA_NODE_ID=str(i + 1),
                NEARLINE_KAFKA_QUORUM_VOTERS=voters,
                NEARLINE_KAFKA_CLUSTER_ID=cluster_id.decode(),
                NEARLINE_KAFKA_REPLICATION=str(n),
                NEARLINE_KAFKA_START_TIMEOUT="150",
            )

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    def start(self) -> float:
        """Start every node at once (each waits for the quorum); seconds until all answer."""
        t0 = time.monotonic()
        errors: list[BaseException] = []

        def one(node: OwnKafka) -> None:
            try:
                node.start()
            except BaseException as exc:  # reported below, with the node's log
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(node,)) for node in self.nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        if errors:
            raise AssertionError(f"cluster did not start: {errors[0]}")
        return time.monotonic() - t0

    def kill(self, i: int) -> None:
        """SIGKILL node `i`'s broker process."""
        pid = int((self.nodes[i].dir / "kafka.pid").read_text().split()[0])
        os.kill(pid, 9)

    def stop(self) -> None:
        for node in self.nodes:
            try:
                node.stop()
            except AssertionError:
                pass


# -- events and producing ----------------------------------------------------------------------

TYPES = ["rating", "rating", "click", "click", "view", "like", "dislike", "skip", "purchase",
         "add_to_cart", "share"]  # fmt: skip


def event_stream(
    users: Sequence[str],
    items: Sequence[str],
    per_user: int,
    *,
    seed: int,
    unknown: int = 0,
    start: int = 0,
) -> list[UserEvent]:
    """Seeded events of every type, each user's timestamps increasing, users interleaved;
    `start` continues users' streams (event ids and times after the first wave)."""
    rng = random.Random(seed)
    per: dict[str, list[UserEvent]] = {}
    for u in users:
        evs = []
        for i in range(start, start + per_user):
            t = rng.choice(TYPES)
            item = rng.choice(items) if i >= unknown else f"unknown-item-{i}"
            evs.append(
                UserEvent(
                    event_id=f"{u}-{i}",
                    user_id=u,
                    item_id=item,
                    type=t,
                    timestamp=T0 + 60.0 * i + rng.random(),
                    rating=rng.choice([0.5, 1.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0])
                    if t == "rating"
                    else None,
                )
            )
        per[u] = evs
    out: list[UserEvent] = []
    cursors = {u: 0 for u in users}
    live = list(users)
    while live:
        u = rng.choice(live)
        out.append(per[u][cursors[u]])
        cursors[u] += 1
        if cursors[u] == per_user:
            live.remove(u)
    return out


@dataclass(frozen=True)
class Produced:
    event: UserEvent
    partition: int
    offset: int


@dataclass
class BackgroundProducer:
    """Produces events at a steady rate in a thread, keeping each record's partition and
    offset (the producer retries through broker restarts: idempotent, acks=all)."""

    settings: Any
    events: Sequence[UserEvent]
    rate: float
    bad_every: int = 0
    """> 0: after every bad_every-th event also send a record that is not JSON (same key)."""
    produced: list[Produced] = field(default_factory=list)
    sent: int = 0
    error: BaseException | None = None
    _thread: threading.Thread | None = None

    def start(self) -> BackgroundProducer:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            producer = make_producer(self.settings, retries=2**31 - 1, delivery_timeout_ms=180_000)
            topic = self.settings.topics.user_events
            futures = []
            start = time.monotonic()
            try:
                for i, ev in enumerate(self.events):
                    futures.append(
                        (ev, producer.send(topic, key=ev.user_id.encode(), value=ev.encode()))
                    )
                    self.sent = i + 1
                    if self.bad_every and i % self.bad_every == 0:
                        producer.send(topic, key=ev.user_id.encode(), value=b"{not json")
                    if self.rate > 0:
                        ahead = (i + 1) / self.rate - (time.monotonic() - start)
                        if ahead > 0.002:
                            time.sleep(ahead)
                producer.flush(timeout=180)
                for ev, fut in futures:
                    md = fut.get(timeout=180)
                    self.produced.append(Produced(ev, md.partition, md.offset))
            finally:
                producer.close(timeout=10)
        except BaseException as exc:  # surfaced by join()
            self.error = exc

    def join(self, timeout: float = 240) -> list[Produced]:
        assert self._thread is not None
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError("producer did not finish in time")
        if self.error is not None:
            raise self.error
        assert len(self.produced) == len(self.events)
        return self.produced


def produce_tracked(settings: Any, events: Sequence[UserEvent]) -> list[Produced]:
    return BackgroundProducer(settings, events, rate=0).start().join()


# -- the exactly-once check --------------------------------------------------------------------


def worker_items(updates: Sequence[ItemUpdate], dim: int) -> list[ItemUpdate]:
    """The items as a worker sees them: encoded for the topic (values rounded), decoded."""
    return [decode_item_update(u.item_id.encode(), encode_item_update(u), dim=dim) for u in updates]


def replay(
    settings: Any,
    updates: Sequence[ItemUpdate],
    produced: Sequence[Produced],
    applied: list[Produced] | None = None,
) -> dict:
    """Pure in-process reference: every event applied once, in partition-offset order,
    through the same core (nearline_rec.core) the worker uses. With `applied`, repeated event ids
    are allowed (skipped, as the worker does) and the events that applied are collected;
    without, every event must apply."""
    return replayed(settings, updates, produced, applied)[1]


def replayed(
    settings: Any,
    updates: Sequence[ItemUpdate],
    produced: Sequence[Produced],
    applied: list[Produced] | None = None,
) -> tuple[Any, dict]:
    """`replay`, returning the recommender too (its item statistics count every event)."""
    from nearline_rec.core.user_state import UserState
    from nearline_rec.factory import build_recommender

    rec = build_recommender(settings)
    rec.catalog.upsert_many(worker_items(updates, settings.items.embedding_dim))
    rec.catalog.reindex()
    states: dict[str, UserState] = {}
    for p in sorted(produced, key=lambda p: (p.partition, p.offset)):
        st = states.setdefault(p.event.user_id, UserState(user_id=p.event.user_id))
        ok = rec.apply(st, p.event, p.offset, p.partition)
        if applied is None:
            assert ok, f"event {p.event.event_id} did not apply in the replay"
        elif ok:
            applied.append(p)
    return rec, states


@dataclass
class Check:
    produced: int
    users: int
    lost: int
    applied_twice: int
    missing_users: list[str]
    embedding_mismatch: list[str]
    stale_lists: list[str]
    details: list[str]

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.applied_twice
            or self.missing_users
            or self.embedding_mismatch
            or self.stale_lists
        )

    def figures(self) -> dict[str, Any]:
        return {
            "events_produced": self.produced,
            "users": self.users,
            "lost": self.lost,
            "applied_twice": self.applied_twice,
            "embeddings_differing": len(self.embedding_mismatch),
            "lists_not_current": len(self.stale_lists),
        }


def read_user_rows(r: Any, prefix: str, users: Sequence[str]) -> dict[str, Any]:
    """Every user's decoded record in Redis (nearline_rec.storage.codes.StoredUser) or None."""
    from nearline_rec.storage.codes import read_users_sync

    return read_users_sync(r, prefix, users)


def check_against_replay(
    r: Any,
    prefix: str,
    reference: dict,
    produced: Sequence[Produced],
    duplicates: Sequence[Produced] = (),
) -> Check:
    """Every user's Redis state vs the replay: n (events applied), embedding, and a list
    that reflects the last event (event_time = the newest event time, version = 2 * last
    offset + 1); `produced` are the events that applied."""
    last: dict[str, Produced] = {}
    for p in produced:
        cur = last.get(p.event.user_id)
        if cur is None or p.offset > cur.offset:
            last[p.event.user_id] = p
    # A repeated event id changes nothing, but when it shares a batch with a new event the
    # list is made after it, so it carries the duplicate's (higher) offset.
    later_dups: dict[str, set[int]] = {}
    for d in duplicates:
        u = d.event.user_id
        if u in last and d.offset > last[u].offset:
            later_dups.setdefault(u, set()).add(2 * d.offset + 1)
    users = sorted(reference)
    rows = read_user_rows(r, prefix, users)
    c = Check(len(produced), len(users), 0, 0, [], [], [], [])
    for u in users:
        ref = reference[u]
        stored = rows[u]
        if stored is None or (stored.embedding is None and ref.embedding is not None):
            c.missing_users.append(u)
            c.lost += ref.n_events
            continue
        if stored.embedding is None:  # no usable signal yet (unknown items only)
            continue
        n = stored.n_events
        c.lost += max(0, ref.n_events - n)
        c.applied_twice += max(0, n - ref.n_events)
        vec = stored.embedding
        want = ref.embedding
        # stored as float16: equal to the reference within half a float16 ulp
        if (
            want is None
            or vec.shape != want.shape
            or not np.allclose(vec, want, rtol=1e-3, atol=1e-5)
        ):
            c.embedding_mismatch.append(u)
            c.details.append(f"{u}: embedding differs (n={n}, ref n={ref.n_events})")
        doc = stored.list
        want_version = 2 * last[u].offset + 1
        versions = {want_version} | later_dups.get(u, set())
        if doc["version"] not in versions or doc["event_time"] != ref.last_event_time:
            c.stale_lists.append(u)
            c.details.append(
                f"{u}: list version {doc['version']} event_time {doc['event_time']}, "
                f"want {want_version} / {ref.last_event_time}"
            )
    return c


def wait_lists_current(
    r: Any,
    prefix: str,
    produced: Sequence[Produced],
    timeout: float,
    alive: Callable[[], bool] = lambda: True,
) -> float:
    """Wait until every user's list has the version of its last event; seconds waited."""
    want: dict[str, int] = {}
    for p in produced:
        want[p.event.user_id] = max(want.get(p.event.user_id, -1), 2 * p.offset + 1)
    users = sorted(want)
    t0 = time.monotonic()
    behind: list[str] = users
    while time.monotonic() - t0 < timeout:
        assert alive(), "worker died while catching up"
        pipe = r.pipeline(transaction=False)
        for u in behind:
            pipe.getrange(f"{prefix}rec:{{{u}}}", 1, 8)  # the record's big-endian version
        try:
            vers = pipe.execute()
        except Exception:  # Redis briefly away (outage tests): keep waiting
            time.sleep(0.5)
            continue
        behind = [
            u
            for u, v in zip(behind, vers, strict=True)
            if len(v) < 8 or int.from_bytes(v, "big") < want[u]
        ]
        if not behind:
            return time.monotonic() - t0
        time.sleep(0.3)
    raise AssertionError(f"{len(behind)} users' lists not current after {timeout:.0f}s: "
                         f"{behind[:5]}")  # fmt: skip


def http_get(port: int, path: str, token: str | None = None) -> tuple[int, str]:
    """(status, body) of a GET on a worker, errors included (503 from /health is data)."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=3) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def metric(port: int, name: str) -> float | None:
    """One unlabelled sample of the worker's /metrics."""
    status, body = http_get(port, "/metrics")
    if status != 200:
        return None
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def poll_until(pred: Callable[[], bool], timeout: float, what: str, every: float = 0.2) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(every)
    raise AssertionError(f"timeout ({timeout:.0f}s) waiting for {what}")


def assigned_partitions(w: Any) -> set[int]:
    """The user-events partitions a worker reports owning (empty while it cannot answer)."""
    st = w.status()
    return {int(p) for p in st["lag_by_partition"]} if st else set()


def spread_over(ws: Sequence[Any], partitions: int) -> bool:
    """Every worker owns some partitions, none twice, all `partitions` of them owned."""
    sets = [assigned_partitions(w) for w in ws]
    union = set().union(*sets)
    return all(sets) and sum(map(len, sets)) == len(union) == partitions


def agent_crashes(status: dict[str, Any]) -> int:
    """Exceptions that escaped an agent or task of a worker (its /status/ agent_crashes,
    summed over agents; Faust restarts the agent after each); 0 expected."""
    return sum(status["agent_crashes"].values())


def exits(*workers: Any) -> int:
    """How many of these worker processes have exited (each was started once, so one that
    is not alive now exited during the test)."""
    return sum(1 for w in workers if not w.alive)


def survived(*workers: Any, killed: Sequence[dict[str, Any]] = ()) -> dict[str, int]:
    """Check that none of these workers exited and no agent crashed in them, nor in the
    workers the test killed (`killed`: their /status/ just before the kill); the measured
    figures, for report() after the check."""
    statuses = [w.status() for w in workers]
    exited = exits(*workers)
    assert exited == 0, "\n\n".join(w.log_tail() for w in workers if not w.alive)
    assert all(st is not None for st in statuses), "a worker's /status/ did not answer"
    every = [*statuses, *killed]
    crashes = sum(agent_crashes(st) for st in every)
    assert crashes == 0, [st["agent_crashes"] for st in every]
    return {"agent_crashes": crashes, "worker_exits": exited}


def wait_shared_lists(r: Any, prefix: str, since: float, timeout: float = 30) -> dict[str, Any]:
    """Wait until the worker's refresh timer wrote the popularity list at or after `since`
    (unix time, same clock): the shared lists then include every event handled before it.
    Returns that list."""
    from nearline_rec.storage.keys import popular_list

    got: dict[str, Any] = {}

    def fresh() -> bool:
        raw = r.get(popular_list(prefix))
        got.clear()
        got.update(json.loads(raw) if raw else {})
        return got.get("generated_at", 0) >= since and bool(got.get("items"))

    poll_until(fresh, timeout, "the shared lists refreshed into Redis")
    return got


def catalog_on(env: dict[str, str], tmp: Path, *, n_items: int = 600, seed: int = 11) -> Any:
    """What the catalog_run fixture does, against the broker named in `env` (an own one)."""
    from nearline_rec.data.sample import generate_sample
    from nearline_rec.kafka_clients import ensure_topics
    from nearline_rec.producer import item_updates_from_files, publish_items
    from nearline_rec.tools.localrun import settings_for
    from tests.integration.conftest import CatalogRun

    s = settings_for(env)
    info = generate_sample(
        tmp / "sample", n_items=n_items, n_users=80, n_ratings=3000,
        dim=s.items.embedding_dim, seed=seed,
    )  # fmt: skip
    ensure_topics(s)
    updates, _ = item_updates_from_files(
        info.movies_path, info.embeddings_path, dim=s.items.embedding_dim
    )
    publish_items(s, updates)
    truth = json.loads(info.truth_path.read_text())
    return CatalogRun(env=env, settings=s, info=info, truth=truth, updates=updates)


class ProgressSampler:
    """Samples a worker's events_in in a thread; the longest stretch without progress
    while events were still outstanding is how long a fault stalled consumption."""

    def __init__(self, worker: Any, every: float = 0.25) -> None:
        self.worker = worker
        self.every = every
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> ProgressSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            st = self.worker.status()
            if st is not None:
                self.samples.append((time.monotonic(), st["counters"].get("events_in", 0)))
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def longest_stall(self, total: int) -> float:
        """Seconds of the longest gap between increases of events_in below `total`."""
        longest, last_t, last_n = 0.0, None, -1
        for t, n in self.samples:
            if n > last_n or n >= total:
                if last_t is not None and last_n < total:
                    longest = max(longest, t - last_t)
                last_t, last_n = t, n
        return longest


def produce_raw_tracked(
    settings: Any, topic: str, records: Sequence[tuple[bytes | None, bytes | None]]
) -> list[tuple[int, int]]:
    """Produce raw records; (partition, offset) of each, in order."""
    producer = make_producer(settings)
    try:
        futures = [producer.send(topic, key=k, value=v) for k, v in records]
        producer.flush(timeout=120)
        return [(md.partition, md.offset) for md in (f.get(timeout=60) for f in futures)]
    finally:
        producer.close(timeout=10)


class OwnRedisCluster:
    """Three redis-server primaries on loopback in cluster mode (no replicas), joined with
    `redis-cli --cluster create`: the slots are spread over all three."""

    def __init__(self, tmp: Path, nodes: int = 3) -> None:
        self.nodes = [
            OwnRedis(
                tmp,
                persistent=False,
                # an explicit bus port: the default (port + 10000) overflows for high ports
                extra=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                    "--cluster-port",
                    str(free_port()),
                ],  # fmt: skip
            )  # fmt: skip
            for _ in range(nodes)
        ]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0?cluster=true"

    def start(self) -> OwnRedisCluster:
        try:
            return self._start()
        except BaseException:
            self.stop()  # no node left behind
            raise

    def _start(self) -> OwnRedisCluster:
        import redis

        for n in self.nodes:
            n.start()
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        res = subprocess.run(
            [shutil.which("redis-cli") or "redis-cli", "--cluster", "create", *addrs,
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if res.returncode != 0:
            raise AssertionError(f"redis-cli --cluster create failed:\n{res.stdout}\n{res.stderr}")

        def ok() -> bool:
            for n in self.nodes:
                info = redis.Redis(port=n.port, decode_responses=True).cluster("info")
                if info.get("cluster_state") != "ok":
                    return False
            return True

        poll_until(ok, 30, "cluster_state:ok on every node")
        return self

    def client(self) -> Any:
        from redis.cluster import RedisCluster

        return RedisCluster(host="127.0.0.1", port=self.nodes[0].port)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


def thread_stacks(pid: int | None) -> str:
    """Every thread's Python stack of a running process (py-spy, from the bench extra),
    for a failure message; a line saying why when it cannot be had."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if pid is None or not Path(spy).exists():
        return "(no stacks: py-spy or the process is missing)"
    try:
        out = subprocess.run(
            [spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(no stacks: {exc})"
    return out.stdout or out.stderr
