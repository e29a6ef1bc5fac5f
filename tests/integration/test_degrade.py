"""Lag-aware degradation on real Kafka and Redis: burst -> degraded -> recovery -> recompute."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from nearline_rec.core.events import UserEvent
from nearline_rec.producer import produce_events
from nearline_rec.schemas import validate
from nearline_rec.storage.codes import read_users_sync
from tests.integration.conftest import consume_all, redis_client
from tests.integration.faults import wait_shared_lists

pytestmark = pytest.mark.integration


def test_burst_degrades_recovers_and_recomputes_every_dirty_user(catalog_run, workers):
    run = catalog_run
    s = run.settings
    env = {
        **run.env,
        "NEARLINE_DEGRADE__LAG_HIGH": "1500",
        "NEARLINE_DEGRADE__LAG_LOW": "300",
        "NEARLINE_DEGRADE__HOLD_SECONDS": "0.5",
        "NEARLINE_DEGRADE__CHECK_INTERVAL": "0.25",
        "NEARLINE_DEGRADE__REFRESH_SECONDS": "1",
        "NEARLINE_DEGRADE__RECOMPUTE_RATE": "400",
        "NEARLINE_WORKER__BATCH_SIZE": "500",
    }
    worker = workers(env)
    worker.wait_ready()

    # Warm-up traffic so popularity exists, then a burst of many users at once.
    items = sorted(run.truth["items"], key=lambda i: run.truth["items"][i]["popularity_rank"])
    warm = [
        UserEvent(f"w{i}", f"warm-{i % 20}", items[i % 50], "click", 1.7e9 + i) for i in range(200)
    ]
    produce_events(s, warm)
    worker.wait_events(len(warm))
    wait_shared_lists(redis_client(), s.redis.key_prefix, since=time.time())

    n_users, per_user = 400, 40
    burst = [
        UserEvent(
            f"b{u}-{j}",
            f"burst-{u}",
            items[(u * 7 + j * 13) % len(items)],
            "rating" if j % 3 == 0 else "click",
            1.7e9 + 1000 + j,
            rating=4.5 if j % 3 == 0 else None,
        )
        for j in range(per_user)
        for u in range(n_users)
    ]
    produce_events(s, burst)
    total = len(warm) + len(burst)

    modes: list[str] = []
    max_lag = 0
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        st = worker.status()
        assert worker.alive, worker.log_tail()
        if st:
            modes.append(st["mode"])
            max_lag = max(max_lag, st["lag"])
            if (
                st["counters"].get("events_in", 0) >= total
                and st["mode"] == "normal"
                and st["dirty_users"] == 0
                and "degraded" in modes
            ):
                break
        time.sleep(0.25)
    st = worker.status()
    assert "degraded" in modes, f"never degraded (max lag seen {max_lag}): {Counter(modes)}"
    assert st["mode"] == "normal", st
    assert st["dirty_users"] == 0, st
    assert st["counters"]["events_applied"] == total
    assert st["counters"]["lists_degraded"] > 0
    assert st["counters"]["dirty_recomputed"] > 0
    entered = [t for t in st["transitions"] if t["mode"] == "degraded"]
    assert entered and entered[0]["lag"] >= 1500

    # Degraded lists were published flagged degraded: true, and validate.
    recs = consume_all(s.topics.recommendations, min_records=st["counters"]["lists_written"])
    degraded = [json.loads(m.value) for m in recs if json.loads(m.value)["degraded"]]
    assert degraded
    for doc in degraded[:50]:
        validate("recommendation", doc)
        assert doc["mode"] == "degraded"
        assert all(i["channel"] == "popular" for i in doc["items"])

    # Every user ends with a normal list in Redis, and every event's effect is in its state.
    r = redis_client()
    prefix = s.redis.key_prefix
    stored = read_users_sync(r, prefix, [f"burst-{u}" for u in range(n_users)])
    for u in range(n_users):
        rec = stored[f"burst-{u}"]
        doc = rec.list
        assert doc["mode"] == "personal" and not doc["degraded"], f"burst-{u} still {doc['mode']}"
        assert rec.n_events == per_user, f"burst-{u}: {rec.n_events} events applied"
    assert r.zcard(f"{prefix}dirty") == 0
    popular = json.loads(r.get(f"{prefix}list:popular"))
    validate("redis-user-list", popular)
    assert popular["items"]


def test_operator_override_forces_modes_and_auto_recovers(catalog_run, workers):
    import os
    import subprocess
    import sys

    run = catalog_run
    s = run.settings
    env = {
        **run.env,
        "NEARLINE_DEGRADE__CHECK_INTERVAL": "0.25",
        "NEARLINE_DEGRADE__REFRESH_SECONDS": "1",
    }
    worker = workers(env)
    worker.wait_ready()

    def cli(*args: str) -> str:
        res = subprocess.run(
            [sys.executable, "-m", "nearline_rec.tools.cli", *args],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            timeout=60,
        )
        assert res.returncode == 0, res.stderr
        return res.stdout

    items = run.taste_items(1)
    produce_events(s, [UserEvent("o-0", "op-user", items[0], "like", 1.7e9)])
    worker.wait_events(1)
    wait_shared_lists(redis_client(), s.redis.key_prefix, since=time.time())
    cli("degrade", "on")
    worker.wait(
        lambda st: st["mode"] == "degraded" and st["override"] == "degraded", 20, "forced degraded"
    )
    produce_events(s, [UserEvent("o-1", "op-user", items[1], "like", 1.7e9 + 1)])
    worker.wait_events(2)
    r = redis_client()

    def stored() -> dict:
        return read_users_sync(r, s.redis.key_prefix, ["op-user"])["op-user"].list

    doc = stored()
    assert doc["degraded"] and doc["mode"] == "degraded"
    assert not {items[0], items[1]} & {i["item_id"] for i in doc["items"]}
    cli("degrade", "auto")
    st = worker.wait(
        lambda st: st["mode"] == "normal" and st["dirty_users"] == 0,
        30,
        "back to normal with the dirty user recomputed",
    )
    assert st["counters"]["dirty_recomputed"] >= 1
    doc = stored()
    assert doc["mode"] == "personal" and doc["version"] % 2 == 1
