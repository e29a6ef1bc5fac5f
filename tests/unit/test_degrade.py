"""LagPolicy on plain numbers: thresholds, hold time, no flapping, overrides."""

from __future__ import annotations

import pytest

from nearline_rec.core.degrade import LagPolicy, LagThresholds


def policy(high=1000, low=100, hold=5.0, override="auto") -> LagPolicy:
    return LagPolicy(LagThresholds(high, low, hold), override)


def feed(p: LagPolicy, samples: list[tuple[float, int]]) -> list[str]:
    return [p.observe(lag, t) for t, lag in samples]


def test_enters_only_after_lag_stays_high_for_the_hold_time():
    p = policy(hold=5.0)
    modes = feed(p, [(0, 2000), (2, 2000), (4.9, 2000), (5.0, 2000), (6, 2000)])
    assert modes == ["normal", "normal", "normal", "degraded", "degraded"]
    assert p.transitions[0].mode == "degraded" and p.transitions[0].lag == 2000


def test_a_dip_below_high_restarts_the_hold_clock():
    p = policy(hold=5.0)
    modes = feed(p, [(0, 2000), (4, 2000), (4.5, 999), (5, 2000), (9, 2000), (10, 2000)])
    assert modes == ["normal"] * 5 + ["degraded"]


def test_leaves_when_lag_falls_to_low_threshold():
    p = policy(hold=0.0)
    modes = feed(p, [(0, 1000), (1, 500), (2, 101), (3, 100), (4, 500)])
    assert modes == ["degraded", "degraded", "degraded", "normal", "normal"]


def test_no_flapping_when_lag_oscillates_between_thresholds():
    p = policy(hold=1.0)
    feed(p, [(0, 5000), (1, 5000)])
    assert p.mode == "degraded"
    wave = [(2 + i * 0.5, 150 if i % 2 else 950) for i in range(200)]
    assert set(feed(p, wave)) == {"degraded"}
    q = policy(hold=1.0)
    assert set(feed(q, wave)) == {"normal"}
    assert len(p.transitions) == 1 and q.transitions == []


def test_spikes_shorter_than_hold_never_degrade():
    p = policy(hold=3.0)
    samples = []
    for i in range(100):
        t = i * 1.0
        samples.append((t, 5000 if i % 3 == 0 else 0))  # 1 s above, 2 s below
    assert set(feed(p, samples)) == {"normal"}


def test_override_forces_mode_and_auto_resumes_following_lag():
    p = policy(hold=0.0)
    p.set_override("degraded", now=1.0)
    assert feed(p, [(2, 0), (3, 0)]) == ["degraded", "degraded"]
    p.set_override("normal", now=4.0)
    assert feed(p, [(5, 99999)]) == ["normal"]
    p.set_override("auto", now=6.0)
    assert feed(p, [(7, 99999)]) == ["degraded"]
    assert [t.mode for t in p.transitions] == ["degraded", "normal", "degraded"]


@pytest.mark.parametrize("high,low,hold", [(100, 100, 1), (100, 200, 1), (0, 0, 1), (10, 1, -1)])
def test_invalid_thresholds_are_rejected(high, low, hold):
    with pytest.raises(ValueError):
        LagThresholds(high, low, hold)


def test_unknown_override_is_rejected():
    with pytest.raises(ValueError, match="override"):
        policy(override="sometimes")


# -- the degraded path of one micro-batch (pure core, no services) ----------------------------

from nearline_rec.core.events import UserEvent  # noqa: E402
from nearline_rec.core.pipeline import PipelineConfig, Recommender  # noqa: E402
from nearline_rec.core.rank import load_model  # noqa: E402
from nearline_rec.core.user_state import UserState  # noqa: E402
from nearline_rec.processing import BatchProcessor, RawRecord, list_version  # noqa: E402
from tests.unit.factories import T0, two_clusters  # noqa: E402


def _setup():
    cat, a_ids, b_ids = two_clusters(n_per=10)
    rec = Recommender(cat, load_model(), config=PipelineConfig(top_n=5))
    # popularity: b0 > b1 > ... from earlier traffic
    for n, item_id in enumerate(b_ids):
        for _ in range(len(b_ids) - n):
            rec.stats.add(cat.key(item_id), 1.0, T0)
    return rec, BatchProcessor(rec, max_event_bytes=4096, source_topic="t"), a_ids, b_ids


def _records(user: str, items: list[str], start: int) -> list[RawRecord]:
    return [
        RawRecord(
            "t",
            1,
            start + i,
            user.encode(),
            UserEvent(f"{user}-{i}", user, it, "click", T0 + i).encode(),
            T0,
        )
        for i, it in enumerate(items)
    ]


def test_degraded_batch_serves_popular_minus_seen_and_marks_dirty():
    rec, proc, a_ids, b_ids = _setup()
    popular = rec.popular_rows(20)
    assert [rec.catalog.item_id(k) for k, _, _ in popular[:3]] == b_ids[:3]
    saved: dict[str, bytes] = {}
    out = proc.process(_records("u", [b_ids[0], a_ids[0]], 10), lambda u: None, degraded=popular)
    assert out.dirty == ["u"]
    ((rec_list, write, doc),) = out.lists
    ids = [i.item_id for i in rec_list.items]
    assert rec_list.mode == "degraded" and rec_list.degraded
    assert ids == b_ids[1:6], "popular order, seen b0 removed"
    assert {i.channel for i in rec_list.items} == {"popular"}
    assert write.version == list_version(11, "degraded") == 22
    # the cheap state is fully updated: nothing is lost while degraded
    state = out.states["u"]
    assert state.n_events == 2 and list(state.seen) == [b_ids[0], a_ids[0]]
    assert state.embedding is not None
    saved["u"] = state.to_bytes()

    # after recovery the recompute gives a personal list that outranks the degraded one
    rl, w2, doc2 = proc.recompute(UserState.from_bytes(saved["u"]))
    assert rl.mode == "personal" and w2.version == 23 > write.version
    assert doc2["source"]["partition"] == 1 and doc2["source"]["offset"] == 11


def test_normal_batch_marks_nobody_dirty():
    rec, proc, a_ids, _ = _setup()
    out = proc.process(_records("u", a_ids[:2], 0), lambda u: None)
    assert out.dirty == [] and out.lists[0][0].mode == "personal"
