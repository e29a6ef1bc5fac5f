"""A/B variants on the real worker: different lists per variant, separate online figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nearline_rec.core.events import UserEvent
from nearline_rec.core.experiments import Variant, assign, summarize
from nearline_rec.producer import produce_events
from nearline_rec.schemas import validate
from nearline_rec.storage.codes import read_users_sync
from nearline_rec.storage.keys import experiment_counts
from tests.integration.conftest import REPO, redis_client
from tests.integration.faults import poll_until

pytestmark = pytest.mark.integration

VARIANTS = (
    '[{"name": "control", "share": 0.5}, {"name": "short", "share": 0.5, "overrides":'
    ' {"ranking": {"top_n": 5}, "recall": {"embedding": {"enabled": false}}}}]'
)


def test_two_variants_make_different_lists_with_separate_figures(catalog_run, workers):
    run = catalog_run
    env = {
        **run.env,
        "NEARLINE_EXPERIMENTS__NAME": "ab1",
        "NEARLINE_EXPERIMENTS__VARIANTS": VARIANTS,
        "NEARLINE_DEGRADE__REFRESH_SECONDS": "1",
    }
    worker = workers(env)
    worker.wait_ready()
    s = run.settings
    users = [f"ab-{i}" for i in range(40)]
    items = run.taste_items(4) + run.taste_items(7)
    first = [
        UserEvent(f"{u}-{j}", u, items[(i + j) % len(items)], "like", 1.7e9 + j)
        for i, u in enumerate(users)
        for j in range(3)
    ]
    produce_events(s, first)
    worker.wait(lambda st: st["counters"].get("lists_written", 0) >= len(users), 60, "lists")

    r = redis_client()
    lists = {u: rec.list for u, rec in read_users_sync(r, s.redis.key_prefix, users).items()}
    split = [Variant("control", 0.5), Variant("short", 0.5)]
    for u, doc in lists.items():
        validate("redis-user-list", doc)
        assert doc["variant"] == assign(u, "ab1", split)
        if doc["variant"] == "short":
            assert len(doc["items"]) == 5
            assert all(i["channel"] != "embedding" for i in doc["items"])
        else:
            assert len(doc["items"]) == s.ranking.top_n
    assert {d["variant"] for d in lists.values()} == {"control", "short"}

    # each user likes the top item of the list they were shown: a hit for every user
    second = [
        UserEvent(f"{u}-hit", u, lists[u]["items"][0]["item_id"], "like", 1.7e9 + 100)
        for u in users
    ]
    produce_events(s, second)
    worker.wait_events(len(first) + len(second))
    worker.wait(
        lambda st: sum(v["hits"] for v in st["experiment"]["variants"]) >= len(users),
        30,
        "hits counted",
    )
    # flushed into Redis on the next refresh: the shared hash equals the worker's counts
    shared = experiment_counts(s.redis.key_prefix, env["NEARLINE_EXPERIMENTS__NAME"])

    def flushed() -> bool:
        counts = {k.decode(): int(v) for k, v in r.hgetall(shared).items()}
        st = worker.status()
        return st is not None and summarize(counts, split) == st["experiment"]["variants"]

    poll_until(flushed, 30, "the experiment counts flushed into Redis")
    res = subprocess.run(
        [sys.executable, "-m", "nearline_rec.tools.cli", "experiments", "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env={**os.environ, **env},
    )
    assert res.returncode == 0, res.stderr
    rows = {row["variant"]: row for row in json.loads(res.stdout)["variants"]}
    n = {v: sum(1 for d in lists.values() if d["variant"] == v) for v in ("control", "short")}
    for v in ("control", "short"):
        assert rows[v]["events"] == 4 * n[v]
        # the second-round likes are all hits; a first-round like may hit too when a user's
        # events landed in two batches (the second then sees the list made from the first)
        assert rows[v]["positives"] == 4 * n[v] and n[v] <= rows[v]["hits"] <= 3 * n[v]
        assert rows[v]["lists"] >= 2 * n[v]
        assert rows[v]["hit_rate"] == pytest.approx(rows[v]["hits"] / rows[v]["positives"])
