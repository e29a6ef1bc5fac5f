"""Scale-out on the real broker: user-events grown while a worker runs. Users whose key now
hashes to a new partition carry on there: every event applied exactly once (per-user event
counts and embeddings equal an in-process replay), newer lists keep replacing older ones,
and the new partitions are taken within seconds."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.integration.conftest import redis_client, run_env
from tests.integration.faults import (
    agent_crashes,
    assigned_partitions,
    catalog_on,
    event_stream,
    poll_until,
    produce_tracked,
    read_user_rows,
    wait_lists_current,
    worker_items,
)
from tests.reliability_report import report

pytestmark = pytest.mark.integration


def _replay(settings, updates, waves, sources=None):
    """The reference: each wave in the order it was produced, each event once; `sources`:
    the topic incarnation each wave was produced to."""
    from nearline_rec.core.user_state import UserState
    from nearline_rec.factory import build_recommender

    rec = build_recommender(settings)
    rec.catalog.upsert_many(worker_items(updates, settings.items.embedding_dim))
    rec.catalog.reindex()
    states: dict[str, UserState] = {}
    for i, wave in enumerate(waves):
        source = sources[i] if sources else ""
        for p in sorted(wave, key=lambda p: (p.partition, p.offset)):
            st = states.setdefault(p.event.user_id, UserState(user_id=p.event.user_id))
            assert rec.apply(st, p.event, p.offset, p.partition, source), p.event.event_id
    return states


def test_user_events_grown_while_a_worker_runs_loses_and_repeats_nothing(run_id, workers, tmp_path):
    """Failed before: the moved users' events were all dropped as redeliveries (their new
    partition's offsets are lower than the old one's), and the worker took 5 minutes to
    see the new partitions."""
    # 4 partitions grown to 8, as an operator would
    run = catalog_on(run_env(run_id, NEARLINE_TOPICS__PARTITIONS="4"), tmp_path)
    s = run.settings
    env = {**run.env, "NEARLINE_DEGRADE__MODE": "normal", "NEARLINE_WORKER__METADATA_MAX_AGE": "2"}
    w = workers(env)
    w.wait_ready()
    users = [f"grow-{u}" for u in range(60)]
    items = sorted(run.truth["items"])
    first = produce_tracked(s, event_stream(users, items, per_user=6, seed=51))
    r = redis_client()
    wait_lists_current(r, s.redis.key_prefix, first, 120, lambda: w.alive)
    versions_before = {
        u: row.list["version"] for u, row in read_user_rows(r, s.redis.key_prefix, users).items()
    }

    grown = 2 * s.topics.partitions
    t_grow = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "nearline_rec.tools.cli", "grow-partitions", str(grown)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    again = subprocess.run(
        [sys.executable, "-m", "nearline_rec.tools.cli", "grow-partitions", str(grown)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )  # Kafka cannot shrink or keep: one line saying so
    assert again.returncode == 1 and again.stderr.startswith("error: ")
    assert f"already has {grown} partitions" in again.stderr and "\n" not in again.stderr.strip()
    taken_s = poll_until(
        lambda: assigned_partitions(w) == set(range(grown)), 60, "new partitions taken"
    )
    second = produce_tracked(s, event_stream(users, items, per_user=6, seed=52, start=6))
    home = {p.event.user_id: p.partition for p in first}
    moved = sorted({p.event.user_id for p in second if p.partition != home[p.event.user_id]})
    assert moved, "no user moved partitions"

    reference = _replay(s, run.updates, [first, second])
    lost, twice = _wait_applied(r, s.redis.key_prefix, users, reference)
    caught_up_s = time.monotonic() - t_grow
    rows = read_user_rows(r, s.redis.key_prefix, users)
    older = [u for u in users if rows[u].list["version"] <= versions_before[u]]
    assert older == []
    st = w.status()
    assert w.alive and agent_crashes(st) == 0

    # A restart replays the changelog: a moved user's state is there twice, the older copy
    # on the partition it left; the newer must win, whatever order partitions recover in.
    w.stop()
    after = workers(env, name="restarted")
    after.wait_ready()
    poll_until(
        lambda: assigned_partitions(after) == set(range(grown)), 60, "partitions after restart"
    )
    third = produce_tracked(s, event_stream(users, items, per_user=3, seed=53, start=12))
    reference = _replay(s, run.updates, [first, second, third])
    lost2, twice2 = _wait_applied(r, s.redis.key_prefix, users, reference)
    st2 = after.status()
    assert after.alive and agent_crashes(st2) == 0
    report(
        "grow_partitions_while_running",
        partitions_before=s.topics.partitions,
        partitions_after=grown,
        users=len(users),
        users_moved=len(moved),
        events=len(first) + len(second) + len(third),
        lost=lost + lost2,
        applied_twice=twice + twice2,
        seconds_grow_to_new_partitions_taken=round(taken_s, 1),
        seconds_grow_to_all_applied=round(caught_up_s, 1),
        agent_crashes=agent_crashes(st) + agent_crashes(st2),
    )


def test_user_events_deleted_and_made_again_applies_every_new_event_once(catalog_run, workers):
    """An operator deletes user-events and makes it again (same name, offsets from 0 again):
    every event produced to the new topic applies once, on top of the users' state from the
    old one. Failed before: every event of a known user was taken for a redelivery (its
    offset at or below the user's last one) and dropped."""
    from kafka.admin import KafkaAdminClient

    from nearline_rec.kafka_clients import client_kwargs, ensure_topics, topic_id

    run = catalog_run
    s = run.settings
    env = {**run.env, "NEARLINE_DEGRADE__MODE": "normal"}
    users = [f"again-{u}" for u in range(40)]
    items = sorted(run.truth["items"])
    r = redis_client()
    w = workers(env)
    w.wait_ready()
    first = produce_tracked(s, event_stream(users, items, per_user=8, seed=61))
    old_id = topic_id(s, s.topics.user_events)
    reference = _replay(s, run.updates, [first], [old_id])
    _wait_applied(r, s.redis.key_prefix, users, reference)
    w.stop()

    admin = KafkaAdminClient(**client_kwargs(s.kafka))
    try:
        admin.delete_topics([s.topics.user_events])
        poll_until(
            lambda: s.topics.user_events not in set(admin.list_topics()), 60, "topic deleted"
        )
    finally:
        admin.close()
    poll_until(lambda: bool(ensure_topics(s)), 60, "topic made again")
    new_id = topic_id(s, s.topics.user_events)
    assert new_id and new_id != old_id

    again = workers(env, name="after-recreate")
    again.wait_ready()
    second = produce_tracked(s, event_stream(users, items, per_user=4, seed=62, start=8))
    assert min(p.offset for p in second) == 0, "the new topic starts at offset 0"
    reference = _replay(s, run.updates, [first, second], [old_id, new_id])
    lost, twice = _wait_applied(r, s.redis.key_prefix, users, reference)
    st = again.status()
    assert again.alive and agent_crashes(st) == 0
    report(
        "user_events_made_again",
        users=len(users),
        events_before=len(first),
        events_after=len(second),
        lost=lost,
        applied_twice=twice,
    )


def _wait_applied(r, prefix: str, users: list[str], reference: dict) -> tuple[int, int]:
    """Wait until every user's record reflects as many events as the replay; then check
    counts, embeddings and list times against it. (lost, applied twice), both asserted 0."""

    def all_applied() -> bool:
        rows = read_user_rows(r, prefix, users)
        return all(rows[u] is not None and rows[u].n_events >= reference[u].n_events for u in users)

    poll_until(all_applied, 120, "every event applied", every=0.5)
    rows = read_user_rows(r, prefix, users)
    lost = sum(max(0, reference[u].n_events - rows[u].n_events) for u in users)
    twice = sum(max(0, rows[u].n_events - reference[u].n_events) for u in users)
    differing = [
        u for u in users
        if not np.allclose(rows[u].embedding, reference[u].embedding, rtol=1e-3, atol=1e-5)
    ]  # fmt: skip
    stale = [u for u in users if rows[u].list["event_time"] != reference[u].last_event_time]
    assert (lost, twice, differing, stale) == (0, 0, [], []), (
        lost,
        twice,
        differing[:5],
        stale[:5],
    )
    return lost, twice


def test_events_from_a_producer_with_another_partitioner_apply_once(catalog_run, workers):
    """Half of each user's events produced to the partition the key's CRC32 picks (as
    librdkafka's default partitioner, kcat's, does), half by murmur2: every event applies
    once, and again after a restart (the user's state then sits on two changelog
    partitions; recovery keeps the newer copy). Failed before: the events on the second
    partition were dropped as redeliveries whenever their offsets were lower."""
    import zlib

    from kafka import KafkaProducer

    from tests.integration.conftest import KAFKA
    from tests.integration.faults import Produced

    run = catalog_run
    s = run.settings
    n = s.topics.partitions
    env = {**run.env, "NEARLINE_DEGRADE__MODE": "normal"}
    w = workers(env)
    w.wait_ready()
    users = [f"crc-{u}" for u in range(40)]
    items = sorted(run.truth["items"])

    def produce(events) -> list[Produced]:
        producer = KafkaProducer(bootstrap_servers=KAFKA, acks="all")
        try:
            futures = []
            for i, e in enumerate(events):
                key = e.user_id.encode()
                part = zlib.crc32(key) % n if i % 2 else None  # None: murmur2
                futures.append(
                    producer.send(s.topics.user_events, key=key, value=e.encode(), partition=part)
                )
            producer.flush(timeout=60)
            return [
                Produced(e, md.partition, md.offset)
                for e, md in zip(events, (f.get(timeout=30) for f in futures), strict=True)
            ]
        finally:
            producer.close(timeout=10)

    first = produce(event_stream(users, items, per_user=8, seed=61))
    crossed = {p.event.user_id for p in first} & {
        u for u in users if zlib.crc32(u.encode()) % n != _murmur2_partition(u, n)
    }
    assert crossed, "no user's events landed on two partitions"
    r = redis_client()
    reference = _replay(s, run.updates, [first])
    lost, twice = _wait_applied(r, s.redis.key_prefix, users, reference)
    w.stop()
    after = workers(env, name="restarted")
    after.wait_ready()
    second = produce(event_stream(users, items, per_user=4, seed=62, start=8))
    reference = _replay(s, run.updates, [first, second])
    lost2, twice2 = _wait_applied(r, s.redis.key_prefix, users, reference)
    st = after.status()
    assert after.alive and agent_crashes(st) == 0
    # the restarted worker saw the second wave: its events on a non-murmur2 partition counted
    foreign = sum(1 for p in second if p.partition != _murmur2_partition(p.event.user_id, n))
    assert foreign > 0
    assert st["counters"].get("events_other_partitioner", 0) == foreign
    report(
        "other_partitioner",
        users=len(users),
        users_on_two_partitions=len(crossed),
        events_counted_as_other_partitioner=st["counters"]["events_other_partitioner"],
        events=len(first) + len(second),
        lost=lost + lost2,
        applied_twice=twice + twice2,
        agent_crashes=agent_crashes(st),
    )


def _murmur2_partition(user: str, n: int) -> int:
    from kafka.partitioner.default import murmur2

    return (murmur2(user.encode()) & 0x7FFFFFFF) % n
