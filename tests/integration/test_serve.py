"""`nearline serve` on the real broker and Redis: processes sharing one port, the list a
worker writes served fresh through the invalidated cache, fallbacks when Redis stops, token."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import struct
import time
from pathlib import Path

import pytest

from nearline_rec.core.events import UserEvent
from nearline_rec.producer import produce_events
from nearline_rec.schemas import validate
from nearline_rec.storage import keys
from nearline_rec.tools.localrun import ServeProcess
from tests.integration.conftest import redis_client, run_env
from tests.integration.faults import OwnRedis, poll_until

pytestmark = pytest.mark.integration

STALENESS_S = 1.0
"""docs/operations.md: with the invalidation channel up, a changed list is served within
this (the benchmark measures the figure; this is the bound a test can hold on a loaded CI)."""


def _version(r, key: str) -> int:
    raw = r.get(key)
    return 0 if raw is None else int.from_bytes(raw[1:9], "big")


def test_processes_on_one_port_all_answer_and_the_token_is_required(
    run_id: str, tmp_path: Path
) -> None:
    cpu = max(os.sched_getaffinity(0))
    env = run_env(
        run_id,
        NEARLINE_SERVE__TOKEN="s3cret-serve",
        # on a host shared with a worker: lower priority, SCHED_IDLE, one CPU, all inherited
        NEARLINE_SERVE__NICE="3",
        NEARLINE_SERVE__SCHED_IDLE="true",
        NEARLINE_SERVE__CPUS=str(cpu),
    )
    srv = ServeProcess(env, tmp_path, processes=3).start()
    try:
        pids: set[int] = set()
        for _ in range(300):  # each request on a new connection; the kernel spreads them
            status, body = srv.request("/health")
            assert status == 200 and body["live"] is True
            pids.add(body["pid"])
            if len(pids) == 3:
                break
        assert len(pids) == 3, pids
        for pid in pids:
            assert os.sched_getscheduler(pid) == os.SCHED_IDLE
            assert os.sched_getaffinity(pid) == {cpu}
            assert os.getpriority(os.PRIO_PROCESS, pid) == 3
        status, body = srv.request("/recommendations/nobody")
        assert status == 401 and body == {"error": "missing or wrong bearer token", "status": 401}
        status, _ = srv.request("/recommendations/nobody", token="wrong")
        assert status == 401
        assert srv.request("/metrics")[0] == 401
        status, body = srv.request("/recommendations/nobody?k=3", token="s3cret-serve")
        assert status == 200
        validate("recommendation-response", body)
        assert body["tier"] == "default" and body["items"] == [] and body["k"] == 3
        for query, k in (("x=1&k=2", 2), ("k=%32", 2), ("k=4&k=5", 5), ("", 10)):
            status, body = srv.request(f"/recommendations/nobody?{query}", token="s3cret-serve")
            assert status == 200 and body["k"] == k, (query, body)
        assert srv.request("/recommendations/x?k=0", token="s3cret-serve")[0] == 400
        # the user id arrives percent-decoded once: "a%2541" is the user "a%41"
        status, body = srv.request("/recommendations/a%2541?k=1", token="s3cret-serve")
        assert status == 200 and body["user_id"] == "a%41"
        assert srv.request("/nope", token="s3cret-serve")[0] == 404
    finally:
        srv.stop()


def test_processes_0_is_one_per_cpu_it_may_run_on(run_id: str, tmp_path: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))[:2]  # the CPUs it may run on: these
    env = run_env(run_id, NEARLINE_SERVE__CPUS=",".join(map(str, cpus)))
    srv = ServeProcess(env, tmp_path, processes=0).start()
    try:
        pids: set[int] = set()
        for _ in range(300):  # each request on a new connection; the kernel spreads them
            pids.add(srv.request("/health")[1]["pid"])
        assert len(pids) == len(cpus), (pids, cpus)
        assert f"with {len(cpus)} process(es)" in srv.log_tail()
    finally:
        srv.stop()


def test_a_serve_process_that_dies_is_replaced_and_sigterm_stops_them_all(
    run_id: str, tmp_path: Path
) -> None:
    import subprocess
    import sys

    srv = ServeProcess(run_env(run_id), tmp_path, processes=2).start()
    try:

        def serve_pids() -> set[int]:
            out = subprocess.run(["pgrep", "-g", str(srv.pgid)], capture_output=True, text=True)
            return {int(p) for p in out.stdout.split()} - {srv.pgid}

        first = serve_pids()
        assert len(first) == 2, first
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        # a new one takes its place; every answer in the meantime comes from a live one
        poll_until(lambda: len(serve_pids() - {victim}) == 2, 30, "a replacement process")
        replacement = (serve_pids() - first).pop()
        poll_until(lambda: srv.get("/health") is not None, 30, "answers")
        seen: set[int] = set()
        for _ in range(300):
            seen.add(srv.request("/health")[1]["pid"])
            if replacement in seen:
                break
        assert replacement in seen and victim not in seen
        # the port is taken: a second server says so in one line and exits
        taken = subprocess.run(
            [sys.executable, "-m", "nearline_rec.tools.cli", "serve", "--port", str(srv.port)],
            env={**srv.env, "NEARLINE_SERVE__HOST": "127.0.0.1"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert taken.returncode != 0
        assert f"cannot listen on 127.0.0.1:{srv.port}" in taken.stderr, taken.stderr[-500:]
        assert "Traceback" not in taken.stderr
    finally:
        srv.stop()
    assert srv.proc is not None and srv.proc.returncode == 0
    assert not serve_pids(), "serve processes outlived SIGTERM"


def test_a_list_the_worker_writes_is_served_fresh_within_the_staleness(
    catalog_run, workers, tmp_path: Path
) -> None:
    s = catalog_run.settings
    # the worker on its own CPU, as beside serve processes on the others
    cpu = min(os.sched_getaffinity(0))
    worker = workers({**catalog_run.env, "NEARLINE_WORKER__CPUS": str(cpu)})
    worker.wait_ready(180)
    assert worker.proc is not None
    threads = os.listdir(f"/proc/{worker.proc.pid}/task")  # Faust's and the clients' too
    assert len(threads) > 1 and all(os.sched_getaffinity(int(t)) == {cpu} for t in threads)
    env = catalog_run.env
    items = catalog_run.taste_items(0)
    user = "reader-1"
    produce_events(s, [UserEvent("e1", user, items[0], "like", 1.7e9)])
    r = redis_client()
    key = keys.user_list(s.redis.key_prefix, user)
    poll_until(lambda: _version(r, key) > 0, 120, "the first list")
    first = _version(r, key)

    srv = ServeProcess(env, tmp_path, processes=2).start()
    try:
        poll_until(lambda: srv.get("/health")["checks"]["invalidation"], 30, "invalidation up")
        tiers = set()
        for _ in range(40):  # every process reads it once from Redis, then from its cache
            body = srv.get(f"/recommendations/{user}?k=5")
            validate("recommendation-response", body)
            assert body["version"] == first
            tiers.add(body["tier"])
        assert tiers == {"redis", "cache"}, tiers
        assert body["items"] and all(i.get("title") for i in body["items"])

        produce_events(s, [UserEvent("e2", user, items[1], "like", 1.7e9 + 1)])
        poll_until(lambda: _version(r, key) > first, 120, "the second list", every=0.005)
        second = _version(r, key)
        t0 = time.monotonic()
        while (srv.get(f"/recommendations/{user}?k=5") or {}).get("version") != second:
            assert time.monotonic() - t0 < STALENESS_S, "the old list is still served"
        for _ in range(20):  # and from every process
            assert srv.get(f"/recommendations/{user}?k=5")["version"] == second
    finally:
        srv.stop()


def test_redis_stopped_answers_from_the_fallback_tiers_within_the_budget(
    run_id: str, tmp_path: Path
) -> None:
    own = OwnRedis(tmp_path, persistent=False).start()
    budget_ms = 100
    env = run_env(
        run_id,
        NEARLINE_REDIS__URL=own.url,
        NEARLINE_SERVE__READ_BUDGET_MS=str(budget_ms),
        NEARLINE_SERVE__HEALTH_INTERVAL_SECONDS="0.2",
    )
    prefix = env["NEARLINE_REDIS__KEY_PREFIX"]
    popular = {
        "items": [{"item_id": "p1", "title": "Popular One", "channel": "popular", "score": 1.0}],
        "generated_at": time.time(),
    }
    import redis

    redis.Redis(port=own.port).set(keys.popular_list(prefix), json.dumps(popular))
    srv = ServeProcess(env, tmp_path, processes=1).start()
    try:
        # no read has needed the shared lists yet: the process keeps them at hand anyway
        assert srv.get("/health")["checks"]["redis"] is True

        # Redis hangs (SIGSTOP): a read that is not cached waits at most the budget
        os.kill(own.proc.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            body = srv.get("/recommendations/other-user?k=3")
            took = time.monotonic() - t0
            assert body["tier"] == "popular" and body["items"][0]["item_id"] == "p1"
            assert took < budget_ms / 1000 + 0.4, took
        finally:
            os.kill(own.proc.pid, signal.SIGCONT)
        body = srv.get("/recommendations/cold-user?k=3")
        assert body["tier"] == "popular" and body["items"][0]["item_id"] == "p1"

        own.stop()  # Redis down
        poll_until(lambda: srv.get("/health")["checks"]["redis"] is False, 10, "health: down")
        health = srv.get("/health")
        assert health["degraded"] is True and health["serving_from"] == "fallback"
        assert health["fallbacks"].get("budget", 0) >= 1
        for n in range(5):
            t0 = time.monotonic()
            body = srv.get(f"/recommendations/user-{n}?k=3")
            assert time.monotonic() - t0 < budget_ms / 1000 + 0.4
            validate("recommendation-response", body)
            assert body["tier"] == "popular"
        assert srv.get("/health")["fallbacks"]["redis_down"] >= 5

        own.start()  # back: the process notices within a health interval
        poll_until(lambda: srv.get("/health")["checks"]["redis"] is True, 10, "health: up")
        # and its invalidation channel is set up again (the cache was flushed meanwhile)
        poll_until(lambda: srv.get("/health")["checks"]["invalidation"], 10, "invalidation")
    finally:
        srv.stop()
        own.stop()


def test_concurrent_reads_share_one_mget_and_a_read_past_its_budget_leaves_the_rest(
    run_id: str,
) -> None:
    """GetBatcher on the real Redis: the GETs of one event-loop turn go as one MGET, each
    read gets its own key's value, and a read cancelled at its budget does not disturb the
    others of its batch."""
    import asyncio

    from nearline_rec.storage.batch_get import GetBatcher
    from nearline_rec.storage.redis_store import make_client
    from nearline_rec.tools.localrun import settings_for

    s = settings_for(run_env(run_id))
    r = redis_client()
    names = [f"{run_id}:k{i}" for i in range(100)]
    for i, name in enumerate(names):
        r.set(name, f"v{i}")

    async def main() -> tuple[list[object], int]:
        client = make_client(s.redis, pool_size=4)
        batcher = GetBatcher(client)
        try:
            doomed = asyncio.ensure_future(batcher.get(names[0]))
            reads = [batcher.get(n) for n in names[1:]]
            doomed.cancel()  # as asyncio.timeout does to a read past its budget
            values = await asyncio.gather(*reads)
            return values, batcher.batches
        finally:
            await client.aclose()

    values, batches = asyncio.run(main())
    assert values == [f"v{i}".encode() for i in range(1, 100)]
    assert batches == 1
    r.delete(*names)


def test_a_batch_redis_does_not_answer_within_the_budget_fails_at_the_budget(
    run_id: str,
) -> None:
    """GetBatcher's one timer per batch: while the real Redis holds every client (CLIENT
    PAUSE), each read of the batch fails with TimeoutError at the budget, not when Redis
    comes back; afterwards reads answer again."""
    import asyncio

    from nearline_rec.storage.batch_get import GetBatcher
    from nearline_rec.storage.redis_store import make_client
    from nearline_rec.tools.localrun import settings_for

    s = settings_for(run_env(run_id))
    r = redis_client()
    names = [f"{run_id}:b{i}" for i in range(20)]
    for i, name in enumerate(names):
        r.set(name, f"v{i}")
    budget = 0.1

    async def main() -> tuple[list[object], float, object]:
        client = make_client(s.redis, pool_size=2)
        batcher = GetBatcher(client, budget=budget)
        try:
            await batcher.get(names[0])  # connected before the pause
            r.execute_command("CLIENT", "PAUSE", 1500, "ALL")
            t0 = time.monotonic()
            out = await asyncio.gather(*(batcher.get(n) for n in names), return_exceptions=True)
            waited = time.monotonic() - t0
            r.execute_command("CLIENT", "UNPAUSE")
            after = await batcher.get(names[3])
            return out, waited, after
        finally:
            await client.aclose()

    try:
        out, waited, after = asyncio.run(main())
    finally:
        r.execute_command("CLIENT", "UNPAUSE")
    assert all(isinstance(v, TimeoutError) for v in out), out
    assert budget <= waited < 1.0  # the pause lasts 1.5 s
    assert after == b"v3"
    r.delete(*names)


def test_the_reader_answers_named_unnamed_corrupt_and_missing_records_and_its_budget(
    run_id: str,
) -> None:
    """A serve process's reader on the real Redis, many reads side by side: a record whose
    items it has not named (a task names them), the same record again (by callback alone),
    a corrupt record, one naming item code 0 and a missing one (the shared lists), and a
    batch Redis holds past the budget (counted, answered from the fallback)."""
    import asyncio

    from nearline_rec.serve import Reader, ServeApp
    from nearline_rec.storage import codec
    from nearline_rec.tools.localrun import settings_for

    s = settings_for(run_env(run_id, NEARLINE_SERVE__CACHE_TTL_SECONDS="0"))
    p, r = s.redis.key_prefix, redis_client()
    r.hset(keys.item_ids(p), mapping={"1": "a", "2": "b"})
    r.hset(keys.codes_meta(p), mapping={"epoch": "e1", "item": "2", "str": "0"})
    r.hset(keys.item(p, "a"), "meta", json.dumps({"title": "A"}))
    r.hset(keys.item(p, "b"), "meta", json.dumps({"recommendable": False}))
    rec = codec.UserRecord(
        7, time.time(), 1.0, 1, "personal", 0, 0, 0, None, ((1, "genre"), (2, "embedding"))
    )
    r.set(keys.user_list(p, "u1"), codec.encode(rec))
    r.set(keys.user_list(p, "bad"), b"\x07not a record")
    # a record that decodes but names item code 0: refused when its words are named
    one = codec.encode(dataclasses.replace(rec, items=((1, "genre"),)))
    word = codec.decode_words(one).words[0]
    zero = one.replace(struct.pack("<I", word), struct.pack("<I", word & ~codec.MAX_ITEM_CODE))
    r.set(keys.user_list(p, "zero"), zero)

    async def main() -> tuple[list[tuple[int, dict]], Reader, object]:
        app = ServeApp()
        app.settings = s
        reader = app.reader = Reader(s)
        await reader.start()
        try:

            async def get(user: str) -> tuple[int, dict]:
                status, _, body = await app.handle(f"/recommendations/{user}", "k=5", "")
                return status, json.loads(body)

            first = await asyncio.gather(*(get(u) for u in ("u1", "u1", "bad", "nobody", "zero")))
            again = await asyncio.gather(*(get("u1") for _ in range(20)))
            r.execute_command("CLIENT", "PAUSE", 600, "ALL")
            t0 = time.monotonic()
            paused = await get("u1")
            waited = time.monotonic() - t0
            return [*first, *again, paused], reader, waited
        finally:
            r.execute_command("CLIENT", "UNPAUSE")
            await reader.stop()

    answers, reader, waited = asyncio.run(main())
    *named, bad, nobody, zero = answers[:5]
    for status, body in [*named, *answers[5:25]]:
        assert status == 200 and body["tier"] == "redis" and body["version"] == 7
        assert body["items"] == [{"item_id": "a", "channel": "genre", "title": "A"}]
        validate("recommendation-response", body)
    for status, body in (bad, nobody, zero):
        assert status == 200 and body["tier"] in ("popular", "cold_start", "default")
    status, body = answers[25]
    assert status == 200 and body["tier"] != "redis"  # past the budget: the fallback
    assert waited < 0.5, waited  # the budget (50 ms), not the pause (600 ms)
    assert reader.counters["corrupt"] == 2
    assert reader.fallbacks["budget"] == 1
    assert reader.reads["redis"] == 22
    r.delete(*(keys.user_list(p, u) for u in ("u1", "bad", "zero")))
