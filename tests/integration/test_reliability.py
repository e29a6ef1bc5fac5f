"""Faults injected for real: crash, rebalance, Redis outage, broker restart, hostile input.

Each test runs real worker processes against a real broker and Redis, injects one fault
under load, and checks every user's end state against a pure in-process replay of the same
events through app.core (each event applied exactly once, in offset order). Each reports
its figures as a `RELIABILITY <name>: ...` line and in test-artifacts/reliability.json.
Tests that stop Redis or restart Kafka use their own instances (tests/integration/faults.py).
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.integration.conftest import redis_client, run_env
from tests.integration.faults import (
    BackgroundProducer,
    OwnKafka,
    OwnRedis,
    ProgressSampler,
    catalog_on,
    check_against_replay,
    event_stream,
    http_get,
    metric,
    poll_until,
    replay,
    wait_lists_current,
)
from tests.reliability_report import report

pytestmark = pytest.mark.integration

STEADY = {"NEARLINE_DEGRADE__MODE": "normal"}  # lag-driven degradation has its own tests


def test_crash_mid_stream_loses_nothing_and_applies_nothing_twice(catalog_run, workers):
    run = catalog_run
    s = run.settings
    env = {**run.env, **STEADY}
    items = sorted(run.truth["items"])
    users = [f"crash-{u}" for u in range(120)]
    events = event_stream(users, items, per_user=40, seed=1, unknown=2)

    first = workers(env, name="first")
    first.wait_ready()
    producer = BackgroundProducer(s, events, rate=900).start()
    # SIGKILL in the middle of the stream: batches in flight, offsets not yet committed.
    first.wait(
        lambda st: st["counters"].get("events_in", 0) >= 0.4 * len(events), 60, "40% consumed"
    )
    consumed_before = first.status()["counters"]["events_in"]
    first.stop(sig=signal.SIGKILL)
    killed_at = time.monotonic()

    second = workers(env, name="second")
    second.wait_ready()
    produced = producer.join()
    r = redis_client()
    caught_up = wait_lists_current(r, s.redis.key_prefix, produced, 120, lambda: second.alive)
    recovery_s = time.monotonic() - killed_at

    check = check_against_replay(r, s.redis.key_prefix, replay(s, run.updates, produced), produced)
    st = second.status()
    redelivered = st["counters"].get("events_duplicate", 0)
    report(
        "crash_sigkill",
        **check.figures(),
        consumed_before_kill=consumed_before,
        redelivered_after_restart=redelivered,
        lists_reemitted=st["counters"].get("lists_reemitted", 0),
        seconds_kill_to_all_lists_current=round(recovery_s, 1),
        catch_up_s=round(caught_up, 1),
    )
    assert check.ok, "\n".join(check.details[:20])
    assert second.alive


def _assigned(w) -> set[int]:
    st = w.status()
    return {int(p) for p in st["lag_by_partition"]} if st else set()


def _spread(ws, partitions: int) -> bool:
    sets = [_assigned(w) for w in ws]
    union = set().union(*sets)
    return all(sets) and sum(map(len, sets)) == len(union) == partitions


def test_two_workers_one_killed_under_load_other_takes_over_then_spread_back(catalog_run, workers):
    run = catalog_run
    s = run.settings
    n_part = s.topics.partitions
    env = {**run.env, **STEADY}
    items = sorted(run.truth["items"])
    users = [f"pair-{u}" for u in range(150)]
    wave1 = event_stream(users, items, per_user=30, seed=2)
    wave2 = event_stream(users, items, per_user=6, seed=3, start=30)

    a = workers(env, name="a")
    b = workers(env, name="b")
    a.wait_ready()
    b.wait_ready()
    poll_until(lambda: _spread([a, b], n_part), 60, "partitions spread over both workers")
    b_had = _assigned(b)

    producer = BackgroundProducer(s, wave1, rate=900).start()
    poll_until(
        lambda: sum((w.status() or {"counters": {}})["counters"].get("events_in", 0)
                    for w in (a, b)) >= 0.35 * len(wave1),
        60, "35% consumed",
    )  # fmt: skip
    b.stop(sig=signal.SIGKILL)
    killed = time.monotonic()
    takeover_s = poll_until(lambda: _assigned(a) == set(range(n_part)), 60, "a takes over")
    assert a.alive
    produced = producer.join()
    r = redis_client()
    wait_lists_current(r, s.redis.key_prefix, produced, 120, lambda: a.alive)
    after_kill_s = time.monotonic() - killed
    check1 = check_against_replay(r, s.redis.key_prefix, replay(s, run.updates, produced), produced)
    assert check1.ok, "\n".join(check1.details[:20])

    # b comes back: the group spreads the partitions again; the partitions b gets recover
    # their users from the changelog, and a second wave for the same users still counts once.
    restarted = time.monotonic()
    b2 = workers(env, name="b2")
    b2.wait_ready()
    poll_until(lambda: _spread([a, b2], n_part), 90, "partitions spread back")
    spread_s = time.monotonic() - restarted
    produced += BackgroundProducer(s, wave2, rate=900).start().join()
    wait_lists_current(r, s.redis.key_prefix, produced, 120, lambda: a.alive and b2.alive)
    check2 = check_against_replay(r, s.redis.key_prefix, replay(s, run.updates, produced), produced)
    st_b = b2.status()
    report(
        "rebalance_two_workers",
        **check2.figures(),
        partitions=n_part,
        killed_worker_had=sorted(b_had),
        takeover_s=round(takeover_s, 1),
        kill_to_all_lists_current_s=round(after_kill_s, 1),
        restart_to_spread_back_s=round(spread_s, 1),
        after_spread={"a": sorted(_assigned(a)), "b": sorted(_assigned(b2))},
        events_applied_by_restarted_b=st_b["counters"].get("events_applied", 0) if st_b else 0,
    )
    assert check2.ok, "\n".join(check2.details[:20])
    assert st_b and st_b["counters"].get("events_applied", 0) > 0, "b2 applied nothing"


def test_redis_outage_under_load_pauses_and_recovers_without_loss(catalog_run, workers, tmp_path):
    run = catalog_run
    s = run.settings
    own = OwnRedis(tmp_path, persistent=True).start()  # append-only file: a restart keeps data
    try:
        _redis_outage(run, s, own, workers)
    finally:
        own.stop()


def _redis_outage(run, s, own, workers) -> None:
    import redis

    env = {
        **run.env,
        **STEADY,
        "NEARLINE_REDIS__URL": own.url,
        "NEARLINE_DEGRADE__CHECK_INTERVAL": "0.5",
    }
    items = sorted(run.truth["items"])
    users = [f"outage-{u}" for u in range(120)]
    events = event_stream(users, items, per_user=40, seed=4)
    w = workers(env)
    w.wait_ready()
    assert json.loads(http_get(w.port, "/health")[1])["checks"]["redis"] is True

    producer = BackgroundProducer(s, events, rate=450).start()
    w.wait(lambda st: st["counters"].get("events_in", 0) >= 0.25 * len(events), 60, "25%")
    own.stop()
    down_at = time.monotonic()
    seen = {"health_503_redis_false": False, "redis_up_metric_0": False}

    def outage_visible() -> bool:
        assert w.alive, w.log_tail()
        status, body = http_get(w.port, "/health")
        if status == 503 and json.loads(body)["checks"]["redis"] is False:
            seen["health_503_redis_false"] = True
        if metric(w.port, "nearline_redis_up") == 0.0:
            seen["redis_up_metric_0"] = True
        return all(seen.values())

    poll_until(outage_visible, 20, "outage reported by /health and /metrics", every=0.3)
    st = w.status()
    assert st is not None and st["redis_ok"] is False
    in_during = st["counters"].get("events_in", 0)
    while time.monotonic() - down_at < 8.0:  # hold the outage; the worker must stay up
        assert w.alive, w.log_tail()
        time.sleep(0.5)
    own.start()
    outage_s = time.monotonic() - down_at

    produced = producer.join()
    r = redis.Redis.from_url(own.url)
    catch_up = wait_lists_current(r, s.redis.key_prefix, produced, 120, lambda: w.alive)
    check = check_against_replay(r, s.redis.key_prefix, replay(s, run.updates, produced), produced)
    poll_until(
        lambda: (
            json.loads(http_get(w.port, "/health")[1])["checks"]["redis"] is True
            and metric(w.port, "nearline_redis_up") == 1.0
        ),
        20,
        "health and metric back to redis up",
    )
    st = w.status()
    log = w.log_path.read_text(errors="replace")
    report(
        "redis_outage",
        **check.figures(),
        outage_s=round(outage_s, 1),
        events_consumed_when_outage_seen=in_during,
        redis_batch_retries=st["counters"].get("redis_batch_retries", 0),
        redis_errors=st["redis_errors"],
        seconds_redis_back_to_all_lists_current=round(catch_up, 1),
        worker_restarts=0,
    )
    assert check.ok, "\n".join(check.details[:20])
    assert "redis unavailable" in log and "redis back" in log
    assert w.alive

    # A quiet worker (no batch to write) notices an outage too: the lag monitor's ping.
    own.stop()
    poll_until(
        lambda: (
            http_get(w.port, "/health")[0] == 503 and metric(w.port, "nearline_redis_up") == 0.0
        ),
        15,
        "idle outage reported",
    )
    own.start()
    poll_until(lambda: http_get(w.port, "/health")[0] == 200, 15, "healthy again")
    assert w.alive


@pytest.fixture
def own_kafka(tmp_path):
    """A broker of this test's own (services.sh in a tmp dir, free ports), stopped after
    the workers (requested before `workers`, so torn down after them)."""
    kafka = OwnKafka(tmp_path)
    kafka.start()
    yield kafka
    kafka.stop()


def test_broker_restart_under_load_worker_reconnects_nothing_lost(
    own_kafka, run_id, workers, tmp_path
):
    kafka = own_kafka
    env = {**run_env(run_id), "NEARLINE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap, **STEADY}
    run = catalog_on(env, tmp_path)
    s = run.settings
    items = sorted(run.truth["items"])
    users = [f"broker-{u}" for u in range(100)]
    events = event_stream(users, items, per_user=40, seed=5)
    w = workers(env)
    w.wait_ready()
    producer = BackgroundProducer(s, events, rate=450).start()
    w.wait(lambda st: st["counters"].get("events_in", 0) >= 0.3 * len(events), 60, "30%")
    sampler = ProgressSampler(w).start()
    t0 = time.monotonic()
    restart_s = kafka.restart()  # SIGTERM (controlled shutdown), then the same storage again
    assert w.alive, w.log_tail()
    produced = producer.join()
    r = redis_client()
    try:
        wait_lists_current(r, s.redis.key_prefix, produced, 180, lambda: w.alive)
    finally:
        sampler.stop()
    done_s = time.monotonic() - t0
    check = check_against_replay(r, s.redis.key_prefix, replay(s, run.updates, produced), produced)
    report(
        "broker_restart",
        **check.figures(),
        broker_restart_s=round(restart_s, 1),
        longest_consumption_stall_s=round(sampler.longest_stall(len(events)), 1),
        restart_begin_to_all_lists_current_s=round(done_s, 1),
        worker_restarts=0,
    )
    assert check.ok, "\n".join(check.details[:20])
    assert w.alive
