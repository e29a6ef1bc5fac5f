"""An item retired while users hold it in their lists (made not recommendable, or deleted):
from then on no read returns it, neither the worker's HTTP read path nor
`get_recommendations` for services that read Redis directly."""

from __future__ import annotations

import dataclasses
import json

import pytest

from nearline_rec.serving import get_recommendations
from nearline_rec.storage.codes import read_users_sync
from tests.integration.conftest import REDIS_URL, redis_client
from tests.integration.faults import event_stream, http_get, poll_until, produce_tracked
from tests.reliability_report import report

pytestmark = pytest.mark.integration


def test_a_retired_item_is_never_read_again(catalog_run, workers):
    """Failed before: both read paths served the stored list as written, retired items
    included, until the user's next event or the list's TTL (days)."""
    from nearline_rec.producer import publish_items

    run = catalog_run
    s = run.settings
    w = workers(run.env)
    w.wait_ready()
    users = [f"ret-{u}" for u in range(30)]
    items = run.taste_items(0)[:40]  # one taste: the lists overlap
    produced = produce_tracked(s, event_stream(users, items, per_user=6, seed=41))
    w.wait_events(len(produced))
    r = redis_client()
    stored = read_users_sync(r, s.redis.key_prefix, users)
    holding: dict[str, set[str]] = {}
    for u, rec in stored.items():
        assert rec is not None, u
        for item in rec.list["items"]:
            holding.setdefault(item["item_id"], set()).add(u)
    hidden, deleted = sorted(holding, key=lambda i: (-len(holding[i]), i))[:2]
    by_id = {u.item_id: u for u in run.updates}
    before = w.status()["counters"].get("item_updates", 0)
    publish_items(
        s,
        [
            dataclasses.replace(by_id[hidden], recommendable=False),
            dataclasses.replace(by_id[deleted], op="delete", embedding=None),
        ],
    )
    w.wait(lambda st: st["counters"].get("item_updates", 0) >= before + 2, 60, "items applied")
    affected = sorted(holding[hidden] | holding[deleted])
    assert affected, "no list held the retired items"

    def served(user: str) -> set[str]:
        code, body = http_get(w.port, f"/recommendations/{user}?k=100")
        assert code == 200, body
        via_http = {i["item_id"] for i in json.loads(body)["items"]}
        direct = get_recommendations(user, k=100, url=REDIS_URL, prefix=s.redis.key_prefix)
        return via_http | {i["item_id"] for i in direct["items"]}

    # the mirror is written right after the catalog: wait until the direct path sees it too
    poll_until(
        lambda: not any({hidden, deleted} & served(u) for u in affected), 30, "retired unread"
    )
    leaks = {u: sorted({hidden, deleted} & served(u)) for u in users}
    assert not any(leaks.values()), leaks

    # and the users holding them are recomputed: their stored lists stop naming them
    def stored_clean() -> bool:
        rows = read_users_sync(r, s.redis.key_prefix, affected)
        return not any(
            {hidden, deleted} & {i["item_id"] for i in rec.list["items"]} for rec in rows.values()
        )

    rewritten_s = poll_until(stored_clean, 60, "stored lists rewritten without retired items")
    st = w.status()
    assert st["counters"].get("retired_holders_marked", 0) >= len(affected)
    report(
        "retired_items_leave_stored_lists",
        users_holding=len(affected),
        users_marked=st["counters"]["retired_holders_marked"],
        seconds_to_lists_rewritten=round(rewritten_s, 1),
    )
