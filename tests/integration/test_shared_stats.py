"""Two workers, one set of item statistics: the shared lists in Redis (popular, cold start,
per genre) equal the lists one process computes over all the events, and stay equal when
both workers restart. Failed before: each worker counted only its own partitions' events
and both wrote `list:popular`, which alternated between two partial views."""

from __future__ import annotations

import json
import time

import pytest

from tests.integration.conftest import redis_client
from tests.integration.faults import (
    event_stream,
    poll_until,
    produce_tracked,
    replayed,
    spread_over,
    wait_lists_current,
    wait_shared_lists,
)
from tests.reliability_report import report

pytestmark = pytest.mark.integration

ENV = {"NEARLINE_DEGRADE__MODE": "normal", "NEARLINE_DEGRADE__REFRESH_SECONDS": "1"}


def _reference(settings, updates, produced) -> dict[str, list[tuple[str, float]]]:
    """The shared lists one in-process recommender makes after every event, each once."""
    rec, _ = replayed(settings, updates, produced)
    n = settings.degrade.popular_size
    prefix = settings.redis.key_prefix
    out = {
        f"{prefix}list:popular": rec.popular_list(n),
        f"{prefix}list:cold": rec.cold_start_list(),
    }
    for genre, lst in rec.genre_popular_lists(n).items():
        out[f"{prefix}list:genre:{genre}"] = lst
    return {k: [(i.item_id, i.score) for i in v.items] for k, v in out.items()}


def _same_up_to_ties(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> str | None:
    """None when both lists hold the same items with the same scores (1e-6 relative), in the
    same order except among items of equal score; else what differs."""
    if len(got) != len(want):
        return f"{len(got)} items, want {len(want)}"
    for i, ((gi, gs), (wi, ws)) in enumerate(zip(got, want, strict=True)):
        if abs(gs - ws) > 1e-6 * max(1.0, abs(ws)):
            return f"rank {i}: {gi} score {gs}, want {wi} score {ws}"

    def groups(rows: list[tuple[str, float]]) -> list[set[str]]:
        out: list[set[str]] = []
        last = None
        for item, score in rows:
            if last is None or abs(score - last) > 1e-6 * max(1.0, abs(score)):
                out.append(set())
            out[-1].add(item)
            last = score
        return out

    if groups(got) != groups(want):
        return (
            f"order differs beyond ties: {[i for i, _ in got[:10]]} vs {[i for i, _ in want[:10]]}"
        )
    return None


def _compare(r, reference: dict[str, list[tuple[str, float]]]) -> dict[str, str]:
    diffs = {}
    for key, want in reference.items():
        raw = r.get(key)
        if raw is None:
            diffs[key] = "missing"
            continue
        got = [(i["item_id"], float(i["score"])) for i in json.loads(raw)["items"]]
        why = _same_up_to_ties(got, want)
        if why:
            diffs[key] = why
    return diffs


def _writers(ws) -> list[bool]:
    out = []
    for w in ws:
        st = w.status() or {}
        out.append(bool((st.get("shared_stats") or {}).get("writes_shared_lists")))
    return out


def _wait_equal(r, prefix, reference, what: str, timeout: float = 60) -> float:
    """Seconds until the shared lists, written after now, equal the reference."""
    diffs: dict[str, str] = {}

    def equal() -> bool:
        wait_shared_lists(r, prefix, time.time(), timeout=30)
        diffs.clear()
        diffs.update(_compare(r, reference))
        return not diffs

    try:
        return poll_until(equal, timeout, what, every=0.5)
    except AssertionError:
        raise AssertionError(f"{what}: {json.dumps(diffs, indent=1)[:3000]}") from None


def test_two_workers_write_the_lists_one_worker_computes_over_all_events(catalog_run, workers):
    run = catalog_run
    s = run.settings
    n_part = s.topics.partitions
    env = {**run.env, **ENV}
    prefix = s.redis.key_prefix
    items = sorted(run.truth["items"])
    users = [f"stats-{u}" for u in range(120)]
    r = redis_client()

    a = workers(env, name="a")
    b = workers(env, name="b")
    a.wait_ready()
    b.wait_ready()
    poll_until(lambda: spread_over([a, b], n_part), 60, "partitions spread over both workers")
    first = produce_tracked(s, event_stream(users, items, per_user=20, seed=71))
    wait_lists_current(r, prefix, first, 120, lambda: a.alive and b.alive)
    reference = _reference(s, run.updates, first)
    equal_s = _wait_equal(r, prefix, reference, "shared lists equal the one-process lists")
    assert sorted(_writers([a, b])) == [False, True], "exactly one worker writes the lists"
    counted = [(w.status() or {})["shared_stats"]["items"] for w in (a, b)]
    assert counted[0] == counted[1] > 0, f"both workers read every item's counts: {counted}"

    # both workers restart: the statistics are not theirs to lose
    a.stop(timeout=20)
    b.stop(timeout=20)
    a2 = workers(env, name="a2")
    b2 = workers(env, name="b2")
    a2.wait_ready()
    b2.wait_ready()
    poll_until(lambda: spread_over([a2, b2], n_part), 90, "partitions spread after the restart")
    restart_equal_s = _wait_equal(r, prefix, reference, "shared lists equal after the restart")
    # the similar-users directory is refilled from the recovered table, without new events
    with_taste = sum(
        1 for st in replayed(s, run.updates, first)[1].values() if st.embedding is not None
    )
    poll_until(
        lambda: sum((w.status() or {}).get("users_indexed", 0) for w in (a2, b2)) >= with_taste,
        60,
        "every user back in the similar-users directories",
    )
    second = produce_tracked(s, event_stream(users, items, per_user=8, seed=72, start=20))
    wait_lists_current(r, prefix, first + second, 120, lambda: a2.alive and b2.alive)
    reference2 = _reference(s, run.updates, first + second)
    assert reference2 != reference, "the second wave changes the reference lists"
    equal2_s = _wait_equal(r, prefix, reference2, "shared lists equal after the second wave")
    assert sorted(_writers([a2, b2])) == [False, True]
    report(
        "shared_item_statistics",
        workers=len(_writers([a2, b2])),
        partitions=n_part,
        events=len(first) + len(second),
        shared_lists_compared=len(reference2),
        lists_current_to_equal_s=round(equal_s, 1),
        restart_to_equal_s=round(restart_equal_s, 1),
        second_wave_to_equal_s=round(equal2_s, 1),
    )
