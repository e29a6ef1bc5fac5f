"""A 3-broker KRaft cluster, topics replicated 3 ways with min.insync.replicas 2: one broker
SIGKILLed under load loses no event and applies none twice; the stall is reported."""

from __future__ import annotations

import time

import pytest

from tests.integration.conftest import redis_client, run_env
from tests.integration.faults import (
    BackgroundProducer,
    OwnKafkaCluster,
    ProgressSampler,
    agent_crashes,
    catalog_on,
    check_against_replay,
    event_stream,
    replay,
    wait_lists_current,
)
from tests.reliability_report import report

pytestmark = pytest.mark.integration


def test_one_of_three_brokers_killed_under_load_loses_nothing(run_id, workers, tmp_path):
    from kafka.admin import KafkaAdminClient

    from nearline_rec.kafka_clients import client_kwargs

    cluster = OwnKafkaCluster(tmp_path, 3)
    try:
        started_s = cluster.start()
        env = run_env(
            run_id,
            NEARLINE_KAFKA__BOOTSTRAP_SERVERS=cluster.bootstrap,
            NEARLINE_TOPICS__REPLICATION_FACTOR="3",
            NEARLINE_TOPICS__MIN_INSYNC_REPLICAS="2",
            NEARLINE_DEGRADE__MODE="normal",
        )
        run = catalog_on(env, tmp_path)
        s = run.settings
        admin = KafkaAdminClient(**client_kwargs(s.kafka))
        try:
            described = admin.describe_topics([s.topics.user_events])
        finally:
            admin.close()
        replicas = {len(p["replica_nodes"]) for p in described[0]["partitions"]}
        assert replicas == {3}, f"user-events replicas per partition: {replicas}"

        w = workers(run.env, name="on-cluster")
        w.wait_ready(timeout=150)
        items = sorted(run.truth["items"])
        users = [f"cl-{u}" for u in range(80)]
        events = event_stream(users, items, per_user=25, seed=81)
        sampler = ProgressSampler(w).start()
        producer = BackgroundProducer(s, events, rate=400).start()
        w.wait(lambda st: st["counters"].get("events_in", 0) >= 0.3 * len(events), 90, "30%")
        cluster.kill(1)
        killed = time.monotonic()
        produced = producer.join()
        r = redis_client()
        wait_lists_current(r, s.redis.key_prefix, produced, 180, lambda: w.alive)
        recovered_s = time.monotonic() - killed
        sampler.stop()
        check = check_against_replay(
            r, s.redis.key_prefix, replay(s, run.updates, produced), produced
        )
        st = w.status()
        assert check.ok, "\n".join(check.details[:20])
        assert w.alive and agent_crashes(st) == 0
        report(
            "broker_killed_in_3_node_cluster",
            **check.figures(),
            brokers=len(cluster.nodes),
            replication_factor=min(replicas),
            cluster_start_s=round(started_s, 1),
            longest_stall_s=round(sampler.longest_stall(len(produced)), 1),
            kill_to_all_lists_current_s=round(recovered_s, 1),
            agent_crashes=agent_crashes(st),
        )
    finally:
        cluster.stop()
