"""Faults injected for real: crash, rebalance, Redis outage, broker restart, hostile input.

Each test runs real worker processes against a real broker and Redis, injects one fault
under load, and checks every user's end state against a pure in-process replay of the same
events through nearline_rec.core (each event applied exactly once, in offset order). Each checks
that
no agent crashed and no worker it did not kill exited, and only then reports its figures
(measured, none written in) as a `RELIABILITY <name>: ...` line and in
test-artifacts/reliability.json.
Tests that stop Redis or restart Kafka use their own instances (tests/integration/faults.py).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from nearline_rec.schemas import validate
from nearline_rec.storage.codes import read_users_sync
from tests.integration.conftest import redis_client, run_env
from tests.integration.faults import (
    T0,
    BackgroundProducer,
    OwnKafka,
    OwnRedis,
    ProgressSampler,
    assigned_partitions,
    catalog_on,
    check_against_replay,
    event_stream,
    http_get,
    metric,
    poll_until,
    replay,
    spread_over,
    survived,
    thread_stacks,
    wait_lists_current,
)
from tests.reliability_report import report

pytestmark = pytest.mark.integration

SKIPPING_WORKER = Path(__file__).with_name("skipping_worker.py")
DROPPING_WORKER = Path(__file__).with_name("dropping_worker.py")
STEADY = {"NEARLINE_DEGRADE__MODE": "normal"}  # lag-driven degradation has its own tests


# rocksdb:// restarts on the killed worker's local databases (same data directory) and
# reads only the changelog's tail; on a failure the second worker's /status/, /health and
# log are in the message (a CI run once hung here; not reproduced since, see
# docs/reliability.md).
@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
def test_crash_mid_stream_loses_nothing_and_applies_nothing_twice(catalog_run, workers, store):
    """SIGKILL mid-stream, a second worker takes over (state from the changelog)."""
    run = catalog_run
    s = run.settings
    env = {**run.env, **STEADY, "NEARLINE_WORKER__STORE": store}
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
    before_kill = first.status()
    consumed_before = before_kill["counters"]["events_in"]
    first.stop(sig=signal.SIGKILL)
    killed_at = time.monotonic()

    second = workers(env, name="second")
    second.wait_ready()
    produced = producer.join()
    r = redis_client()
    try:
        caught_up = wait_lists_current(r, s.redis.key_prefix, produced, 120, lambda: second.alive)
    except AssertionError as exc:  # say where the second worker stands, not only who is behind
        health = http_get(second.port, "/health")
        stacks = thread_stacks(second.proc.pid if second.proc else None)
        raise AssertionError(
            f"{exc}\nsecond worker: /status/ {second.status()}\n/health {health}\n"
            f"{second.log_tail(150)}\nthreads:\n{stacks}"
        ) from None
    recovery_s = time.monotonic() - killed_at

    check = check_against_replay(r, s.redis.key_prefix, replay(s, run.updates, produced), produced)
    st = second.status()
    assert check.ok, "\n".join(check.details[:20])
    alive = survived(second, killed=[before_kill])
    report(
        "crash_sigkill" if store == "memory://" else "crash_sigkill_rocksdb",
        **check.figures(),
        consumed_before_kill=consumed_before,
        redelivered_after_restart=st["counters"].get("events_duplicate", 0),
        lists_reemitted=st["counters"].get("lists_reemitted", 0),
        seconds_kill_to_all_lists_current=round(recovery_s, 1),
        catch_up_s=round(caught_up, 1),
        **alive,
    )


def test_records_the_stream_skips_are_read_back_in_order_and_never_committed_unread(
    catalog_run, workers
):
    """Faust's stream can skip a record and still ack it (a record that reaches it while
    flow control is suspended or from an older consumer generation): the offset commit
    then passes an event nobody applied. Injected here on every batch (its last record is
    dropped after take_events buffered it, by tests/integration/skipping_worker.py); the
    worker's commit guard (nearline_rec.commit_guard) must read each one back and apply it in
    order, and the commit must wait for it, including the very last record of each
    partition, which no later record reveals."""
    run = catalog_run
    s = run.settings
    env = {**run.env, **STEADY}
    items = sorted(run.truth["items"])
    users = [f"skip-{u}" for u in range(60)]
    events = event_stream(users, items, per_user=20, seed=6)
    w = workers(env, name="skipping", entry=[str(SKIPPING_WORKER)])
    w.wait_ready()
    produced = BackgroundProducer(s, events, rate=600).start().join()
    r = redis_client()
    caught_up = wait_lists_current(r, s.redis.key_prefix, produced, 120, lambda: w.alive)
    check = check_against_replay(r, s.redis.key_prefix, replay(s, run.updates, produced), produced)
    # the tails: committed == end offset on every partition (lag 0, from the broker)
    st = w.wait(
        lambda st: (
            bool(st["lag_by_partition"])
            and not any(st["lag_by_partition"].values())
            and st["counters"].get("events_refetched", 0) > 0
        ),
        60,
        "every partition committed to its end",
    )
    log = w.log_path.read_text(errors="replace")
    tails = log.count('why="acked but not delivered"')
    assert check.ok, "\n".join(check.details[:20])
    assert tails >= 1, "no partition tail was read back"
    assert st["counters"]["offset_gaps"] >= tails + 1
    # operators see them in /metrics too
    assert metric(w.port, "nearline_events_refetched_total") == st["counters"]["events_refetched"]
    alive = survived(w)
    report(
        "stream_skips_records",
        **check.figures(),
        gaps_filled=st["counters"]["offset_gaps"],
        events_read_back=st["counters"]["events_refetched"],
        tails_filled=tails,
        catch_up_s=round(caught_up, 1),
        **alive,
    )


def test_records_fetched_and_dropped_before_the_stream_are_read_again(catalog_run, workers):
    """Faust can drop records it fetched without delivering or acking them, counting on a
    seek back that does not always come (seen: a replacement worker after a SIGKILL with
    every partition fetched to its end, lag left, nothing reaching the agent). Injected here
    by tests/integration/dropping_worker.py: every user-events record of the first seconds
    is dropped before the stream, and no later record follows to reveal the gap. The worker
    must notice partitions fetched past its frontier with nothing processed, read them again,
    and lose nothing."""
    run = catalog_run
    s = run.settings
    env = {**run.env, **STEADY, "NEARLINE_TEST_DROP_SECONDS": "5"}
    items = sorted(run.truth["items"])
    users = [f"drop-{u}" for u in range(60)]
    events = event_stream(users, items, per_user=10, seed=8)
    w = workers(env, name="dropping", entry=[str(DROPPING_WORKER)])
    w.wait_ready()
    produced = BackgroundProducer(s, events, rate=3000).start().join()
    r = redis_client()
    caught_up = wait_lists_current(r, s.redis.key_prefix, produced, 120, lambda: w.alive)
    check = check_against_replay(r, s.redis.key_prefix, replay(s, run.updates, produced), produced)
    assert check.ok, "\n".join(check.details[:20])
    st = w.status()
    reread = st["counters"].get("partitions_reread", 0)
    assert reread >= 1, f"no partition was read again: {st['counters']}"
    assert "reading again from" in w.log_path.read_text(errors="replace")
    assert metric(w.port, "nearline_partitions_reread_total") == reread
    report(
        "fetched_records_dropped",
        **check.figures(),
        partitions_reread=reread,
        catch_up_s=round(caught_up, 1),
        **survived(w),
    )


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
    poll_until(lambda: spread_over([a, b], n_part), 60, "partitions spread over both workers")
    b_had = assigned_partitions(b)

    producer = BackgroundProducer(s, wave1, rate=900).start()
    poll_until(
        lambda: sum((w.status() or {"counters": {}})["counters"].get("events_in", 0)
                    for w in (a, b)) >= 0.35 * len(wave1),
        60, "35% consumed",
    )  # fmt: skip
    b_before_kill = b.status()
    b.stop(sig=signal.SIGKILL)
    killed = time.monotonic()
    takeover_s = poll_until(
        lambda: assigned_partitions(a) == set(range(n_part)), 60, "a takes over"
    )
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
    poll_until(lambda: spread_over([a, b2], n_part), 90, "partitions spread back")
    spread_s = time.monotonic() - restarted
    produced += BackgroundProducer(s, wave2, rate=900).start().join()
    wait_lists_current(r, s.redis.key_prefix, produced, 120, lambda: a.alive and b2.alive)
    check2 = check_against_replay(r, s.redis.key_prefix, replay(s, run.updates, produced), produced)
    st_b = b2.status()
    assert check2.ok, "\n".join(check2.details[:20])
    assert st_b and st_b["counters"].get("events_applied", 0) > 0, "b2 applied nothing"
    alive = survived(a, b2, killed=[b_before_kill])
    report(
        "rebalance_two_workers",
        **check2.figures(),
        partitions=n_part,
        killed_worker_had=sorted(b_had),
        takeover_s=round(takeover_s, 1),
        kill_to_all_lists_current_s=round(after_kill_s, 1),
        restart_to_spread_back_s=round(spread_s, 1),
        after_spread={"a": sorted(assigned_partitions(a)), "b": sorted(assigned_partitions(b2))},
        events_applied_by_restarted_b=st_b["counters"]["events_applied"],
        **alive,
    )


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
    assert check.ok, "\n".join(check.details[:20])
    assert "redis unavailable" in log and "redis back" in log

    # A quiet worker (no batch to write) notices an outage too: the lag monitor's ping.
    own.stop()
    idle_seen = poll_until(
        lambda: (
            http_get(w.port, "/health")[0] == 503 and metric(w.port, "nearline_redis_up") == 0.0
        ),
        15,
        "idle outage reported",
    )
    own.start()
    poll_until(lambda: http_get(w.port, "/health")[0] == 200, 15, "healthy again")
    alive = survived(w)
    report(
        "redis_outage",
        **check.figures(),
        outage_s=round(outage_s, 1),
        events_consumed_when_outage_seen=in_during,
        redis_batch_retries=st["counters"].get("redis_batch_retries", 0),
        redis_errors=st["redis_errors"],
        seconds_redis_back_to_all_lists_current=round(catch_up, 1),
        seconds_to_report_idle_outage=round(idle_seen, 1),
        **alive,
    )


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
    assert check.ok, "\n".join(check.details[:20])
    alive = survived(w)
    report(
        "broker_restart",
        **check.figures(),
        broker_restart_s=round(restart_s, 1),
        longest_consumption_stall_s=round(sampler.longest_stall(len(events)), 1),
        restart_begin_to_all_lists_current_s=round(done_s, 1),
        **alive,
    )


# -- hostile input --------------------------------------------------------------------------


def _hostile_events(items: list[str], dim: int) -> list[tuple[str, bytes | None, bytes | None]]:
    """(category, key, value) records for user-events: valid ones mixed with everything
    a broken or hostile producer can send."""
    import random

    from nearline_rec.core.events import UserEvent

    rng = random.Random(7)
    out: list[tuple[str, bytes | None, bytes | None]] = []

    def ev(user, i, item=None, t=None, **kw):
        doc = {
            "event_id": f"{user}-{i}",
            "user_id": user,
            "item_id": item if item is not None else items[(i * 7) % len(items)],
            "type": "click",
            "timestamp": T0 + 60 * i if t is None else t,
            **kw,
        }
        return doc

    def add(cat, doc_or_bytes, key=None, user=None):
        if isinstance(doc_or_bytes, bytes | type(None)):
            value = doc_or_bytes
        else:
            value = json.dumps(doc_or_bytes).encode()
            user = user if user is not None else doc_or_bytes.get("user_id")
        if key is None and isinstance(user, str | int):
            key = str(user).encode("utf-8", errors="surrogatepass")
        out.append((cat, key, value))

    # valid traffic for a few users (their state must come out exact)
    for u in range(6):
        for i in range(8):
            add("valid", ev(f"host-{u}", i, type="rating", rating=0.5 + (i % 10) / 2))
    # random bytes, with and without keys
    for _ in range(60):
        blob = rng.randbytes(rng.randint(0, 300))
        add("random_bytes", blob, key=rng.choice([None, b"host-0", rng.randbytes(8)]))
    add("empty_value", b"", key=b"host-0")
    add("tombstone", None, key=b"host-0")
    # deep and huge JSON
    add("deep_json", ("[" * 20000 + "]" * 20000).encode(), key=b"host-0")
    for depth in (500, 800, 900, 950, 980, 990, 995):
        add("deep_json", json.dumps(ev("host-0", 100))[:-1].encode()
            + b', "user_id": ' + b"[" * depth + b"]" * depth + b"}", key=b"host-0")  # fmt: skip
    add("deep_context", ev("deep-ctx", 0, context={"a": json.loads("[" * 200 + "]" * 200)}))
    add("huge_json", json.dumps(ev("host-1", 101, context={"pad": "x" * 70_000})).encode())
    add("huge_json", json.dumps([0] * 200_000).encode(), key=b"host-1")  # ~600 kB
    add("big_valid", ev("big", 0, context={str(k): "y" * 1000 for k in range(32)}))
    add("too_many_context_keys", ev("host-1", 102, context={str(k): k for k in range(33)}))
    # wrong types
    for field, bad in [
        ("user_id", ["host-2"]), ("user_id", True), ("user_id", -1), ("user_id", 1.5),
        ("item_id", {"id": 1}), ("item_id", ""), ("timestamp", "yesterday"),
        ("timestamp", None), ("type", 3), ("type", "CLICK"), ("rating", "5"),
        ("event_id", 17), ("context", [1, 2]), ("extra_field", 1),
    ]:  # fmt: skip
        doc = ev("host-2", 200)
        doc[field] = bad
        add(f"wrong_type:{field}", doc, key=b"host-2")
    add("rating_without_value", ev("host-2", 201, type="rating"))
    add("not_object", b'["host-2", "click"]', key=b"host-2")
    add("not_object", b'"just a string"', key=b"host-2")
    # NaN / inf / out-of-range numbers
    base = json.dumps(ev("host-3", 300, type="rating", rating=4.0))
    add("nan", base.replace("4.0", "NaN").encode(), key=b"host-3")
    add("inf", base.replace("4.0", "Infinity").encode(), key=b"host-3")
    add("inf", base.replace("4.0", "-Infinity").encode(), key=b"host-3")
    add("overflow", base.replace("4.0", "1e400").encode(), key=b"host-3")
    add("overflow", json.dumps(ev("host-3", 301)).replace(
        str(T0 + 60 * 301), "1e400").encode(), key=b"host-3")  # fmt: skip
    add("big_int", json.dumps(ev("host-3", 302)).encode().replace(b'"host-3",', b"9" * 5000
        + b",", 1), key=b"host-3")  # fmt: skip
    add("rating_out_of_range", ev("host-3", 303, type="rating", rating=5.5))
    # unicode edge cases
    for user in ["émile", "用户", "\U0001f600", "a\u200db", "\u202eevil", "e\u0301", "\u00e9",
                 "u\u2028", "u\n", "x" * 128, "\ufeffbom"]:  # fmt: skip
        add("unicode_ok", ev(user, 0))
    add("unicode_too_long", ev("x" * 129, 0))
    add("lone_surrogate", json.dumps(ev("\ud800-user", 0)).encode(), key=b"x")
    add("lone_surrogate", json.dumps(ev("host-4", 400, item="\udfff")).encode(), key=b"host-4")
    add("lone_surrogate", json.dumps(ev("host-4", 401, context={"\ud83d": 1})).encode(),
        key=b"host-4")  # fmt: skip
    add("invalid_utf8", b'{"event_id":"e","user_id":"\xc0\xaf","item_id":"1"}', key=b"host-4")
    add("invalid_utf8", b"\xef\xbb\xbf" + json.dumps(ev("host-4", 402)).encode(), key=b"host-4")
    add("control_char", ev("ctl\u0001", 0))
    add("cesu8", json.dumps(ev("\ud83d\ude00x", 0), ensure_ascii=False).encode(
        "utf-8", errors="surrogatepass"), key=b"x")  # fmt: skip
    # keys
    add("bad_key", ev("host-5", 500), key=b"someone-else")
    add("bad_key", json.dumps(ev("host-5", 501)).encode(), key=None, user=None)
    add("int_user_id", ev(123456, 0), key=b"123456")
    # duplicates: the same event id again (and again, later), applied once
    dup = ev("dup-user", 0, type="like")
    for _ in range(3):
        add("duplicate_id", dup)
    add("duplicate_id", ev("dup-user", 0, type="purchase"))  # same id, other content
    add("valid", ev("dup-user", 1))
    add("duplicate_id", dup)
    # unknown items, timestamps at the edges of the schema and beyond
    add("unknown_item", ev("host-5", 502, item="no-such-item"))
    add("unknown_item", ev("host-5", 503, item=99999999))
    add("far_past", ev("time-user", 0, t=0))
    add("far_future", ev("time-user", 1, t=4102444800))
    add("valid", ev("time-user", 2))
    add("beyond_future", ev("time-user", 3, t=4102444801))
    add("negative_time", ev("time-user", 4, t=-1))
    add("valid", ev("time-user", 5, t=T0 + 1e6))
    del UserEvent, dim
    return out


def _hostile_items(dim: int) -> list[tuple[str, bytes | None, bytes | None, str | None]]:
    """(category, key, value, expected dead-letter reason or None) for item-updates."""
    good = [0.1] * dim

    def up(item_id: str, embedding=good, **kw) -> bytes:
        doc = {"item_id": item_id, "op": "upsert", "embedding": embedding, **kw}
        return json.dumps(doc).encode()

    odd = {"genres": ["{x}", "a:b", "\u00e9"], "year": 2200, "release_ts": 4102444800}
    return [
        ("wrong_dim", b"hx-1", up("hx-1", [0.1] * (dim + 3)), "bad_embedding"),
        ("wrong_dim", b"hx-2", up("hx-2", [0.1, 0.2]), "bad_embedding"),
        ("zero_vector", b"hx-3", up("hx-3", [0.0] * dim), "bad_embedding"),
        ("float32_overflow", b"hx-4", up("hx-4", [1e39] * dim), "bad_embedding"),
        ("nan", b"hx-5", up("hx-5").replace(b"0.1", b"NaN", 1), "not_json"),
        ("lone_surrogate", b"hx-6", up("hx-\udc00"), "not_utf8"),
        ("lone_surrogate_genre", b"hx-7", up("hx-7", genres=["\ud800"]), "not_utf8"),
        ("not_json", b"hx-8", b"{nope", "not_json"),
        ("random_bytes", b"hx-9", bytes(range(256)), "not_utf8"),
        ("tombstone_unknown", b"hx-never-existed", None, None),
        ("tombstone_empty_key", b"", None, "bad_key"),
        ("wrong_type", b"hx-10", up("hx-10", "0.1,0.2"), "schema"),
        ("odd_genre", b"hx-11", up("hx-11", **odd), None),
    ]


def test_hostile_input_ends_in_state_or_dead_letters_and_worker_survives(catalog_run, workers):
    from nearline_rec.core.events import InvalidRecord
    from nearline_rec.factory import build_recommender
    from nearline_rec.processing import BatchProcessor, DeadLetter, RawRecord
    from nearline_rec.records import decode_item_update
    from tests.integration.conftest import consume_all
    from tests.integration.faults import Produced, produce_raw_tracked

    run = catalog_run
    s = run.settings
    dim = s.items.embedding_dim
    w = workers({**run.env, **STEADY})
    w.wait_ready()
    items = sorted(run.truth["items"])

    corpus = _hostile_events(items, dim)
    positions = produce_raw_tracked(s, s.topics.user_events, [(k, v) for _, k, v in corpus])
    bad_items = _hostile_items(dim)
    produce_raw_tracked(s, s.topics.item_updates, [(k, v) for _, k, v, _ in bad_items])
    n_items = len(run.updates) + len(bad_items)

    # What the pure decoder says about each record: accepted (an event) or a reason.
    decoder = BatchProcessor(
        build_recommender(s), max_event_bytes=s.worker.max_event_bytes,
        source_topic=s.topics.user_events,
    )  # fmt: skip
    accepted: list[Produced] = []
    want_dlq: dict[tuple[int, int], str] = {}
    for (cat, key, value), (part, off) in zip(corpus, positions, strict=True):
        got = decoder.decode(RawRecord(s.topics.user_events, part, off, key, value))
        if isinstance(got, DeadLetter):
            want_dlq[(part, off)] = got.value["reason"]
        else:
            assert not cat.startswith(("random", "deep_json", "huge", "wrong", "nan", "inf",
                                        "overflow", "lone", "invalid", "bad_key")), cat  # fmt: skip
            accepted.append(Produced(got, part, off))

    st = w.wait(
        lambda st: (
            st["counters"].get("events_in", 0) >= len(corpus)
            and st["counters"].get("item_updates", 0)
            + sum(v for k, v in st["dead_letters"].items() if k.startswith("item_"))
            >= n_items
        ),
        90,
        "the whole corpus consumed",
    )
    assert w.alive, w.log_tail()

    # Every rejected record is on the dead-letter topic, once, with the decoder's reason.
    dlq = consume_all(s.topics.user_events_dlq, min_records=len(want_dlq), timeout=30)
    got_dlq: dict[tuple[int, int], str] = {}
    for m in dlq:
        doc = json.loads(m.value)
        validate("dead-letter", doc)
        pos = (doc["source"]["partition"], doc["source"]["offset"])
        assert pos not in got_dlq, f"dead-lettered twice: {pos}"
        got_dlq[pos] = doc["reason"]
        assert doc["detail"]
    assert got_dlq == want_dlq

    # Every accepted record's effect is in its user's state, exactly once.
    applied: list[Produced] = []
    reference = replay(s, run.updates, accepted, applied)
    r = redis_client()
    wait_lists_current(r, s.redis.key_prefix, applied, 60, lambda: w.alive)
    dups = [p for p in accepted if p not in applied]
    check = check_against_replay(r, s.redis.key_prefix, reference, applied, dups)
    assert check.ok, "\n".join(check.details[:20])
    assert st["counters"]["events_applied"] == len(applied)
    assert st["counters"]["events_duplicate"] == len(accepted) - len(applied)

    # Item updates: each bad one on item-updates-dlq with its reason, the others applied.
    want_items: list[str] = []
    for cat, key, value, reason in bad_items:
        try:
            decode_item_update(key, value, dim=dim)
            got = None
        except InvalidRecord as exc:
            got = exc.reason
        assert got == reason, (cat, got, reason)
        if reason:
            want_items.append(reason)
    idlq = consume_all(s.topics.item_updates_dlq, min_records=len(want_items), timeout=30)
    assert sorted(json.loads(m.value)["reason"] for m in idlq) == sorted(want_items)
    assert r.exists(f"{s.redis.key_prefix}item:{{hx-11}}")

    # Still serving: a normal event after all that gets a normal list.
    from nearline_rec.core.events import UserEvent
    from nearline_rec.producer import produce_events

    produce_events(s, [UserEvent("after-0", "after-user", items[0], "like", T0)])
    w.wait_events(len(corpus) + 1, timeout=30)
    after = read_users_sync(r, s.redis.key_prefix, ["after-user"])["after-user"]
    assert after is not None and after.list["items"]
    unaccounted = len(corpus) - len(accepted) - len(got_dlq)
    assert unaccounted == 0
    alive = survived(w)

    by_reason: dict[str, int] = {}
    for reason in got_dlq.values():
        by_reason[reason] = by_reason.get(reason, 0) + 1
    report(
        "hostile_input",
        inputs_tried=len(corpus) + len(bad_items),
        user_event_records=len(corpus),
        item_update_records=len(bad_items),
        categories=len({c.split(":")[0] for c, _, _ in corpus} | {c for c, *_ in bad_items}),
        accepted_applied=len(applied),
        accepted_duplicates=len(accepted) - len(applied),
        dead_lettered=len(got_dlq),
        dead_letter_reasons=dict(sorted(by_reason.items())),
        item_dead_letters=len(idlq),
        unaccounted=unaccounted,
        lost=check.lost,
        applied_twice=check.applied_twice,
        **alive,
    )


def test_dead_letters_interleaved_with_events_lose_no_event(catalog_run, workers):
    """A batch with a dead letter awaits its dead-letter send before it writes the user
    table; a record arriving in that window was once filed under a stale event by
    take_events() (lost until a restart, a copy of an old one processed instead)."""
    run = catalog_run
    s = run.settings
    w = workers({**run.env, **STEADY})
    w.wait_ready()
    items = sorted(run.truth["items"])
    users = [f"mix-{u}" for u in range(60)]
    events = event_stream(users, items, per_user=30, seed=6)
    # a steady flow, so records keep arriving while a batch is being written
    produced = BackgroundProducer(s, events, rate=400, bad_every=3).start().join()
    r = redis_client()
    wait_lists_current(r, s.redis.key_prefix, produced, 60, lambda: w.alive)
    check = check_against_replay(r, s.redis.key_prefix, replay(s, run.updates, produced), produced)
    st = w.status()
    bad = st["dead_letters"].get("not_json", 0)
    assert check.ok, "\n".join(check.details[:20])
    assert bad == len(range(0, len(events), 3))
    alive = survived(w)
    report(
        "dead_letters_interleaved",
        **check.figures(),
        dead_letters=bad,
        events_in=st["counters"].get("events_in", 0),
        **alive,
    )


# -- past one machine -----------------------------------------------------------------------


def test_redis_cluster_three_nodes_two_workers_lists_and_reads(catalog_run, workers, tmp_path):
    """The worker against a three-node Redis Cluster (NEARLINE_REDIS__URL ...?cluster=true)
    and two worker processes on a multi-partition topic: lists land and reads work exactly
    as on one Redis; every user's keys share one slot ({user} hash tag)."""
    from nearline_rec.serving import get_recommendations
    from tests.integration.faults import OwnRedisCluster

    run = catalog_run
    s = run.settings
    cluster = OwnRedisCluster(tmp_path).start()
    try:
        env = {**run.env, **STEADY, "NEARLINE_REDIS__URL": cluster.url}
        a = workers(env, name="a")
        b = workers(env, name="b")
        a.wait_ready()
        b.wait_ready()
        poll_until(lambda: spread_over([a, b], s.topics.partitions), 60, "both workers assigned")
        items = sorted(run.truth["items"])
        users = [f"cl-{u}" for u in range(90)]
        events = event_stream(users, items, per_user=20, seed=8)
        produced = BackgroundProducer(s, events, rate=900).start().join()
        rc = cluster.client()
        prefix = s.redis.key_prefix
        wait_lists_current(rc, prefix, produced, 90, lambda: a.alive and b.alive)
        check = check_against_replay(rc, prefix, replay(s, run.updates, produced), produced)
        assert check.ok, "\n".join(check.details[:20])

        # one slot per user, users over every node
        for u in users[:10]:
            slots = {
                rc.execute_command("CLUSTER KEYSLOT", key)
                for key in (f"{prefix}rec:{{{u}}}", f"{prefix}emb:{{{u}}}")
            }
            assert len(slots) == 1, (u, slots)
        import redis

        keys_per_node = [redis.Redis(port=n.port).dbsize() for n in cluster.nodes]
        assert all(k > 0 for k in keys_per_node), keys_per_node

        # reads: the client function and the worker's HTTP read path, as on one Redis
        for u in users[:5]:
            stored = read_users_sync(rc, prefix, [u])[u].list
            body = get_recommendations(u, k=10, url=cluster.url, prefix=prefix)
            assert body["tier"] == "redis"
            assert [i["item_id"] for i in body["items"]] == [
                i["item_id"] for i in stored["items"][:10]
            ]
            status, text = http_get(a.port, f"/recommendations/{u}/?k=10")
            assert status == 200 and json.loads(text)["tier"] in ("redis", "cache")
        st_a, st_b = a.status(), b.status()
        alive = survived(a, b)
        report(
            "redis_cluster",
            **check.figures(),
            nodes=len(cluster.nodes),
            keys_per_node=keys_per_node,
            workers_with_partitions=sum(1 for w in (a, b) if assigned_partitions(w)),
            lists_written={"a": st_a["counters"]["lists_written"],
                           "b": st_b["counters"]["lists_written"]},
            **alive,
        )  # fmt: skip
    finally:
        for w in (locals().get("a"), locals().get("b")):
            if w is not None:
                w.stop(timeout=20)
        cluster.stop()
