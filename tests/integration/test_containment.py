"""Failure containment on the real broker and Redis: a record near the broker's size limit,
a record that makes the core raise, and Redis refusing writes at maxmemory. Each ends with
every other record applied exactly once (checked against the in-process replay), no agent
crash and the worker alive; the figures are reported after the checks passed."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nearline_rec.core.events import UserEvent
from nearline_rec.schemas import validate
from tests.integration.conftest import REPO, consume_all, redis_client
from tests.integration.faults import (
    T0,
    OwnRedis,
    agent_crashes,
    check_against_replay,
    event_stream,
    http_get,
    poll_until,
    produce_raw_tracked,
    produce_tracked,
    replay,
    wait_lists_current,
)
from tests.reliability_report import report

pytestmark = pytest.mark.integration

STEADY = {"NEARLINE_DEGRADE__MODE": "normal"}


def _users_on_every_partition(prefix: str, partitions: int, per_partition: int) -> list[str]:
    """User ids whose records land on each partition (the producers' murmur2 partitioner)."""
    from kafka.partitioner.default import murmur2

    by_part: dict[int, list[str]] = {p: [] for p in range(partitions)}
    every = list(range(partitions))
    i = 0
    while any(len(v) < per_partition for v in by_part.values()):
        u = f"{prefix}-{i}"
        p = (murmur2(u.encode()) & 0x7FFFFFFF) % partitions
        if len(by_part[p]) < per_partition:
            by_part[p].append(u)
        i += 1
    return [u for p in every for u in by_part[p]]


def test_records_near_the_broker_limit_are_dead_lettered_cut_and_every_partition_goes_on(
    catalog_run, workers
):
    """A valid 900 KB event (JSON padded with whitespace) and ~1 MB of random bytes, then
    events for users on every partition. Before the cut, the first letter (1.2 MB of
    base64) failed with MessageSizeTooLargeError, the agent crashed on it again and again
    and the worker exited: this test then fails on the crash count and on lists never
    becoming current."""
    run = catalog_run
    s = run.settings
    env = {**run.env, **STEADY}
    w = workers(env)
    w.wait_ready()
    big_user = "big-0"
    valid = json.dumps(
        {
            "event_id": "big-1",
            "user_id": big_user,
            "item_id": sorted(run.truth["items"])[0],
            "type": "click",
            "timestamp": T0,
        }
    ).encode()
    valid = valid[:-1] + b" " * (900 * 1024 - len(valid)) + b"}"
    noise = random.Random(5).randbytes(1_040_000)
    json.loads(valid)  # a valid event, only too large for max_event_bytes
    big = produce_raw_tracked(
        s, s.topics.user_events, [(big_user.encode(), valid), (b"noise", noise)]
    )
    users = _users_on_every_partition("after-big", s.topics.partitions, 6)
    events = event_stream(users, sorted(run.truth["items"]), per_user=8, seed=21)
    produced = produce_tracked(s, events)
    r = redis_client()
    t0 = time.monotonic()
    wait_lists_current(r, s.redis.key_prefix, produced, 120, lambda: w.alive)
    caught_up = time.monotonic() - t0
    check = check_against_replay(r, s.redis.key_prefix, replay(s, run.updates, produced), produced)
    assert check.ok, "\n".join(check.details[:20])
    assert {p.partition for p in produced} == set(range(s.topics.partitions))

    letters = consume_all(s.topics.user_events_dlq, min_records=2, timeout=60)
    assert len(letters) == 2
    by_source = {
        (d["source"]["partition"], d["source"]["offset"]): (d, len(m.value))
        for m in letters
        for d in [json.loads(m.value)]
    }
    for original, source in zip((valid, noise), big, strict=True):
        doc, letter_bytes = by_source[source]
        validate("dead-letter", doc)
        assert doc["reason"] == "too_large"
        assert doc["payload_truncated"] is True and doc["payload_bytes"] == len(original)
        assert doc["payload_sha256"] == hashlib.sha256(original).hexdigest()
        assert original.startswith(base64.b64decode(doc["payload_b64"]))
        assert letter_bytes < 512 * 1024
    st = w.status()
    assert w.alive and st is not None
    assert agent_crashes(st) == 0, st["agent_crashes"]
    assert st["dead_letters"] == {"too_large": 2}

    # re-drive: a cut letter's original is read back from the source topic (length and
    # sha256 checked), produced again, and dead-lettered again whole-sized by the worker
    out = subprocess.run(
        [sys.executable, "-m", "nearline_rec.tools.cli", "dlq", "--redrive"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "re-drove 2 dead letters" in out.stdout, out.stdout
    redriven: list[dict] = []

    def both_redriven() -> bool:
        docs = [json.loads(m.value) for m in consume_all(s.topics.user_events_dlq, min_records=4)]
        redriven[:] = [
            d for d in docs if (d["source"]["partition"], d["source"]["offset"]) not in big
        ]
        return len(redriven) >= 2

    poll_until(both_redriven, 60, "the re-driven records dead-lettered again", every=1.0)
    assert sorted(d["payload_sha256"] for d in redriven) == sorted(
        hashlib.sha256(v).hexdigest() for v in (valid, noise)
    )
    assert agent_crashes(w.status()) == 0 and w.alive
    report(
        "record_near_size_limit",
        **check.figures(),
        record_bytes=[len(valid), len(noise)],
        letter_bytes=[len(m.value) for m in letters],
        agent_crashes=agent_crashes(st),
        seconds_to_all_lists_current=round(caught_up, 1),
    )


POISON_ITEM = "poison-item"

_SITECUSTOMIZE = f'''
"""Test-only: the worker's core raises on one item id (a record that breaks the core)."""
import sys
sys.path.insert(0, {str(REPO)!r})
from nearline_rec.core import pipeline

_apply = pipeline.Recommender.apply


def apply(self, state, event, offset, *where):
    if event.item_id == {POISON_ITEM!r}:
        raise RuntimeError("the core cannot use this record")
    return _apply(self, state, event, offset, *where)


pipeline.Recommender.apply = apply
'''


def test_a_record_that_breaks_the_core_is_quarantined_and_the_stream_goes_on(
    catalog_run, workers, tmp_path: Path
):
    """The worker runs with a core patched (sitecustomize, test-only) to raise on one item.
    Three poison events among 480 good ones, on every partition: each is dead-lettered as
    processing_error with the exception, every other event applies exactly once, nothing
    crashes. With the quarantine reverted, the agent crashes on the first poison record,
    Faust restarts it on the same records, and this test fails on the crash count and on
    the lists never becoming current."""
    run = catalog_run
    s = run.settings
    hook = tmp_path / "poison"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p)
    w = workers({**run.env, **STEADY, "PYTHONPATH": path})
    w.wait_ready()
    users = _users_on_every_partition("poison", s.topics.partitions, 10)
    events = event_stream(users, sorted(run.truth["items"]), per_user=16, seed=22)
    poisoned = {users[0], users[len(users) // 2], users[-1]}
    stream: list[UserEvent] = []
    for e in events:
        stream.append(e)
        if e.user_id in poisoned and e.event_id.endswith("-7"):
            stream.append(
                UserEvent(f"{e.user_id}-poison", e.user_id, POISON_ITEM, "like", e.timestamp + 1)
            )
    produced = produce_tracked(s, stream)
    good = [p for p in produced if p.event.item_id != POISON_ITEM]
    bad = [p for p in produced if p.event.item_id == POISON_ITEM]
    assert len(bad) == 3
    r = redis_client()
    # every user's list carries its last good event (a poison event never made a list)
    wait_lists_current(r, s.redis.key_prefix, good, 120, lambda: w.alive)
    check = check_against_replay(r, s.redis.key_prefix, replay(s, run.updates, good), good)
    assert check.ok, "\n".join(check.details[:20])

    letters = consume_all(s.topics.user_events_dlq, min_records=3, timeout=60)
    docs = [json.loads(m.value) for m in letters]
    assert sorted((d["source"]["partition"], d["source"]["offset"]) for d in docs) == sorted(
        (p.partition, p.offset) for p in bad
    )
    for doc in docs:
        validate("dead-letter", doc)
        assert doc["reason"] == "processing_error"
        assert doc["error"]["type"] == "RuntimeError"
        assert "cannot use this record" in doc["error"]["message"]
    st = w.wait(lambda x: x["processing_errors"] >= 3, 30, "errors counted")
    assert agent_crashes(st) == 0 and st["processing_errors"] == 3
    assert st["dead_letters"] == {"processing_error": 3}
    body = http_get(w.port, "/metrics")[1]
    assert "nearline_processing_errors_total 3.0" in body
    assert 'nearline_agent_crashes_total{agent="ingest"} 0.0' in body
    assert w.alive
    report(
        "poison_record",
        **check.figures(),
        poison_records=len(bad),
        dead_lettered=len(docs),
        agent_crashes=agent_crashes(st),
    )


def test_redis_at_maxmemory_holds_the_batches_says_so_and_loses_nothing(
    catalog_run, workers, tmp_path: Path
):
    """Redis with noeviction filled to its maxmemory: writes fail with OOM. The worker
    holds its batches (no event dropped, no crash), /health is 503 naming the refusal,
    /metrics counts it, the log says what to do; once maxmemory is raised every list lands.
    Before the classification the OOM reply escaped the batch as an exception: the agent
    crashed (crash count > 0) instead of holding."""
    import redis

    run = catalog_run
    s = run.settings
    own = OwnRedis(tmp_path, persistent=False, extra=["--maxmemory-policy", "noeviction"]).start()
    try:
        env = {
            **run.env,
            **STEADY,
            "NEARLINE_REDIS__URL": own.url,
            "NEARLINE_DEGRADE__CHECK_INTERVAL": "0.5",
        }
        w = workers(env)
        w.wait_ready()
        r = redis.Redis.from_url(own.url)
        used = int(r.info("memory")["used_memory"])
        r.config_set("maxmemory", str(used + 64 * 1024))
        filler = 0
        while True:  # fill the headroom: the next write of any size is refused
            try:
                r.set(f"filler:{filler}", b"x" * 4096)
            except redis.exceptions.OutOfMemoryError:
                break
            filler += 1
        users = _users_on_every_partition("oom", s.topics.partitions, 10)
        events = event_stream(users, sorted(run.truth["items"]), per_user=10, seed=23)
        produced = produce_tracked(s, events)
        seen: dict[str, object] = {}

        def refused_visible() -> bool:
            assert w.alive, w.log_tail()
            code, body = http_get(w.port, "/health")
            if code == 503 and json.loads(body).get("redis_refusal") == "OOM":
                seen["health"] = True
            metrics = http_get(w.port, "/metrics")[1]
            for line in metrics.splitlines():
                if line.startswith('nearline_redis_refusals_total{code="OOM"}'):
                    seen["metric"] = float(line.split()[1]) > 0
            return seen.get("health") is True and seen.get("metric") is True

        refused_after = poll_until(refused_visible, 30, "OOM reported by /health and /metrics")
        held_since = time.monotonic()
        while time.monotonic() - held_since < 3.0:  # hold the fault; the worker must stay up
            assert w.alive, w.log_tail()
            time.sleep(0.3)
        st = w.status()
        assert st["redis_refusal"] == "OOM" and agent_crashes(st) == 0
        r.config_set("maxmemory", "0")
        released = time.monotonic()
        wait_lists_current(r, s.redis.key_prefix, produced, 120, lambda: w.alive)
        catch_up = time.monotonic() - released
        check = check_against_replay(
            r, s.redis.key_prefix, replay(s, run.updates, produced), produced
        )
        assert check.ok, "\n".join(check.details[:20])
        poll_until(lambda: http_get(w.port, "/health")[0] == 200, 20, "healthy again")
        st = w.status()
        assert st["redis_refusal"] is None and agent_crashes(st) == 0
        log = w.log_path.read_text(errors="replace")
        assert "redis refuses writes (OOM" in log and "raise maxmemory" in log
        assert w.alive
        report(
            "redis_maxmemory_noeviction",
            **check.figures(),
            seconds_to_report_refusal=round(refused_after, 1),
            oom_refusals=st["counters"].get("redis_refused_OOM", 0),
            agent_crashes=agent_crashes(st),
            seconds_maxmemory_raised_to_all_lists_current=round(catch_up, 1),
        )
    finally:
        own.stop()


_BROKEN_EFFECTS = '''
"""Test-only: while the flag file exists, writing any list's effects raises (as a store that
is misconfigured would, for every record alike)."""
import os
import sys
sys.path.insert(0, {repo!r})
from nearline_rec import processing

_output = processing.BatchProcessor.output


def output(self, *args, **kwargs):
    if os.path.exists({flag!r}):
        raise RuntimeError("the effects cannot be written (test fault)")
    return _output(self, *args, **kwargs)


processing.BatchProcessor.output = output
'''


def test_a_fault_of_the_worker_holds_the_batch_and_dead_letters_nothing(
    catalog_run, workers, tmp_path: Path
):
    """No record of a batch can be written (the same error for every one: a fault of the
    worker, not of the records): the batch is held and retried, /health says why, nothing
    is dead-lettered; once the fault is gone every event applies once. Failed before:
    every record of every batch was dead-lettered as processing_error."""
    run = catalog_run
    s = run.settings
    flag = tmp_path / "broken"
    flag.write_text("")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_BROKEN_EFFECTS.format(repo=str(REPO), flag=str(flag)))
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p)
    w = workers({**run.env, **STEADY, "PYTHONPATH": path})
    w.wait_ready()
    users = _users_on_every_partition("held", s.topics.partitions, 5)
    produced = produce_tracked(s, event_stream(users, sorted(run.truth["items"]), 8, seed=24))

    def held() -> bool:
        code, body = http_get(w.port, "/health")
        st = w.status() or {}
        return (
            code == 503
            and json.loads(body)["checks"]["effects"] is False
            and "test fault" in (st.get("effects_error") or "")
            and st["counters"].get("batch_holds", 0) >= 2
        )

    held_after = poll_until(held, 60, "the batch held and reported")
    st = w.status()
    assert st["dead_letters"] == {} and st["counters"].get("events_done", 0) == 0
    flag.unlink()  # the fault is mended
    r = redis_client()
    wait_lists_current(r, s.redis.key_prefix, produced, 120, lambda: w.alive)
    check = check_against_replay(r, s.redis.key_prefix, replay(s, run.updates, produced), produced)
    assert check.ok, "\n".join(check.details[:20])
    poll_until(lambda: http_get(w.port, "/health")[0] == 200, 30, "healthy again")
    st = w.status()
    assert st["effects_error"] is None and st["dead_letters"] == {}
    assert agent_crashes(st) == 0 and w.alive
    report(
        "worker_fault_holds_batches",
        **check.figures(),
        seconds_to_report_hold=round(held_after, 1),
        batch_holds=st["counters"]["batch_holds"],
        dead_letters=sum(st["dead_letters"].values()),
        agent_crashes=agent_crashes(st),
    )
