"""Validated ingest on the real broker: bad records go to the dead-letter topic, the rest flow."""

from __future__ import annotations

import base64
import json

import pytest

from nearline_rec.schemas import validate
from nearline_rec.storage.codes import read_users_sync
from tests.integration.conftest import KAFKA, consume_all, redis_client

pytestmark = pytest.mark.integration


def _event(i: int, user: str, item: str) -> bytes:
    return json.dumps(
        {
            "event_id": f"ok-{i}",
            "user_id": user,
            "item_id": item,
            "type": "rating",
            "rating": 4.5,
            "timestamp": 1_600_000_000 + i,
        }
    ).encode()


BAD = [
    (b"u-bad", b"this is not json", "not_json"),
    (b"u-bad", b"\xff\xfe\x00garbage", "not_utf8"),
    (b"u-bad", b"[1, 2, 3]", "not_object"),
    (
        b"u-bad",
        b'{"event_id": "x1", "user_id": "u-bad", "item_id": "1", "timestamp": 1}',
        "schema",
    ),  # missing type
    (
        b"u-bad",
        b'{"event_id": "x2", "user_id": "u-bad", "item_id": "1", "type": "teleport",'
        b' "timestamp": 1}',
        "schema",
    ),
    (
        b"u-bad",
        b'{"event_id": "x3", "user_id": "u-bad", "item_id": "1", "type": "rating",'
        b' "rating": 9, "timestamp": 1}',
        "schema",
    ),
    (
        b"u-bad",
        b'{"event_id": "x4", "user_id": {"a": 1}, "item_id": "1", "type": "click", "timestamp": 1}',
        "schema",
    ),
    (
        b"u-bad",
        b'{"event_id": "x5", "user_id": "u-bad", "item_id": "1", "type": "click",'
        b' "timestamp": NaN}',
        "not_json",
    ),
    (b"u-bad", b'{"pad": "' + b"x" * 70_000 + b'"}', "too_large"),
    (
        None,
        b'{"event_id": "x6", "user_id": "u9", "item_id": "1", "type": "click", "timestamp": 1}',
        "bad_key",
    ),
    (
        b"someone-else",
        b'{"event_id": "x7", "user_id": "u9", "item_id": "1", "type": "click", "timestamp": 1}',
        "bad_key",
    ),
]


def test_malformed_events_are_dead_lettered_and_valid_ones_processed(catalog_run, workers):
    from kafka import KafkaProducer

    run = catalog_run
    s = run.settings
    worker = workers(run.env)
    worker.wait_ready()
    items = run.taste_items(0)[:20]
    records: list[tuple[bytes | None, bytes]] = []
    valid_users = set()
    for i, (key, value, _) in enumerate(BAD):
        user = f"ok-user-{i % 4}"
        valid_users.add(user)
        records.append((user.encode(), _event(2 * i, user, items[i])))
        records.append((key, value))
        records.append((user.encode(), _event(2 * i + 1, user, items[i + 1])))
    producer = KafkaProducer(bootstrap_servers=KAFKA, max_request_size=1 << 20)
    for key, value in records:
        producer.send(s.topics.user_events, key=key, value=value)
    producer.flush()
    producer.close()

    # counters move during the batch (the dead-letter sends yield): wait for both
    status = worker.wait(
        lambda st: (
            st["counters"].get("events_in", 0) >= len(records)
            and sum(st["dead_letters"].values()) >= len(BAD)
            and st["counters"].get("events_applied", 0) >= len(records) - len(BAD)
        ),
        120,
        "all records handled",
    )
    assert status["counters"]["events_applied"] == len(records) - len(BAD)

    dlq = consume_all(s.topics.user_events_dlq, min_records=len(BAD))
    assert len(dlq) == len(BAD)
    got = {}
    for msg in dlq:
        doc = json.loads(msg.value)
        validate("dead-letter", doc)
        assert doc["source"]["topic"] == s.topics.user_events
        assert doc["source"]["offset"] >= 0
        assert doc["detail"]
        original = base64.b64decode(doc["payload_b64"])
        got[original] = doc["reason"]
        assert msg.key == (None if doc["key_b64"] is None else base64.b64decode(doc["key_b64"]))
    assert got == {value: reason for _, value, reason in BAD}
    assert sum(status["dead_letters"].values()) == len(BAD)

    r = redis_client()
    for user in valid_users:
        rec = read_users_sync(r, s.redis.key_prefix, [user])[user]
        assert rec is not None, f"no list for {user}"
        validate("redis-user-list", rec.list)
    assert worker.alive and worker.status() is not None
