"""A/B experiments: stable assignment, traffic shares, per-variant lists and online metric."""

from __future__ import annotations

from collections import Counter

import pytest

from nearline_rec.core.events import UserEvent
from nearline_rec.core.experiments import OnlineMetric, Variant, assign, bucket, summarize
from nearline_rec.factory import build_recommender, build_variants
from nearline_rec.processing import BatchProcessor, RawRecord
from nearline_rec.settings import SettingsError, load_settings
from tests.unit.factories import T0, two_clusters

VARIANTS = [Variant("control", 0.7), Variant("b", 0.3)]


def test_assignment_is_stable_and_follows_shares():
    users = [f"user-{i}" for i in range(20000)]
    first = [assign(u, "exp1", VARIANTS) for u in users]
    assert first == [assign(u, "exp1", VARIANTS) for u in users]
    share_b = Counter(first)["b"] / len(users)
    assert 0.28 < share_b < 0.32
    # another experiment name reshuffles users independently
    other = [assign(u, "exp2", VARIANTS) for u in users]
    both_b = sum(a == "b" and o == "b" for a, o in zip(first, other, strict=True)) / len(users)
    assert 0.07 < both_b < 0.11  # about 0.3 * 0.3
    assert all(0.0 <= bucket(u, "exp1") < 1.0 for u in users[:100])


def test_online_metric_counts_hits_on_the_current_list():
    m = OnlineMetric()
    m.observe("a", "i1", True, {"i1", "i2"})
    m.observe("a", "i9", True, {"i1"})
    m.observe("a", "i2", False, {"i2"})
    m.observe("b", "i3", True, set())
    m.list_written("a")
    rows = {
        r["variant"]: r for r in summarize(dict(m.counts), [Variant("a", 0.5), Variant("b", 0.5)])
    }
    assert (rows["a"]["events"], rows["a"]["positives"], rows["a"]["hits"]) == (3, 2, 1)
    assert rows["a"]["hit_rate"] == 0.5 and rows["a"]["on_list_rate"] == pytest.approx(2 / 3)
    assert rows["a"]["lists"] == 1
    assert rows["b"]["hit_rate"] == 0.0 and rows["b"]["events"] == 1


def test_variant_overrides_change_lists_and_are_recorded(monkeypatch):
    monkeypatch.setenv("NEARLINE_ITEMS__EMBEDDING_DIM", "16")
    monkeypatch.setenv(
        "NEARLINE_EXPERIMENTS__VARIANTS",
        '[{"name": "control", "share": 0.5},'
        ' {"name": "short", "share": 0.5, "overrides": {"ranking": {"top_n": 3},'
        ' "recall": {"embedding": {"enabled": false}}}}]',
    )
    s = load_settings()
    base = build_recommender(s)
    cat, a_ids, _ = two_clusters(n_per=15)
    base.catalog = cat  # tiny known catalog
    variants = build_variants(s, base)
    assert variants["short"].catalog is base.catalog  # shared state, not copied
    proc = BatchProcessor(
        base,
        max_event_bytes=4096,
        source_topic="t",
        variants=variants,
        experiment=s.experiments.name,
    )
    proc.set_shares({"control": 0.5, "short": 0.5})
    users = [f"u{i}" for i in range(40)]
    records = [
        RawRecord(
            "t", 0, n, u.encode(), UserEvent(f"{u}-e", u, a_ids[n % 5], "like", T0 + n).encode()
        )
        for n, u in enumerate(users)
    ]
    out = proc.process(records, lambda u: None)
    by_variant: dict[str, list] = {}
    for rec_list, _write, doc in out.lists:
        assert doc["variant"] == rec_list.variant
        assert rec_list.variant == assign(
            rec_list.user_id, "default", [Variant("control", 0.5), Variant("short", 0.5)]
        )
        by_variant.setdefault(rec_list.variant, []).append(rec_list)
    assert set(by_variant) == {"control", "short"}
    assert all(len(lst.items) == 3 for lst in by_variant["short"])
    assert all(len(lst.items) > 3 for lst in by_variant["control"])
    assert all(i.channel != "embedding" for lst in by_variant["short"] for i in lst.items)
    assert proc.metric.counts["short:lists"] == len(by_variant["short"])


@pytest.mark.parametrize(
    "raw,fragment",
    [
        ('[{"name": "a", "share": 0.5}]', "sum to 0.5"),
        ('[{"name": "a", "share": 0.5}, {"name": "a", "share": 0.5}]', "distinct"),
        (
            '[{"name": "a", "share": 1.0, "overrides": {"lsh": {"m": 3}}}]',
            "only recall and ranking",
        ),
    ],
)
def test_bad_variant_settings_name_the_setting(monkeypatch, raw, fragment):
    monkeypatch.setenv("NEARLINE_EXPERIMENTS__VARIANTS", raw)
    with pytest.raises(SettingsError, match=fragment) as info:
        load_settings()
    assert "NEARLINE_EXPERIMENTS" in str(info.value)


def test_bad_override_value_names_variant_and_field(monkeypatch):
    monkeypatch.setenv(
        "NEARLINE_EXPERIMENTS__VARIANTS",
        '[{"name": "x", "share": 1.0, "overrides": {"ranking": {"top_n": 0}}}]',
    )
    s = load_settings()
    with pytest.raises(SettingsError, match="variant 'x' top_n"):
        build_variants(s, build_recommender(s))
