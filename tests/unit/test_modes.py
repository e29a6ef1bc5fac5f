"""The modes are types (StrEnum) that keep the wire format: JSON, the stored record, metrics
labels and the settings read exactly as they did when they were bare strings."""

from __future__ import annotations

import json

from nearline_rec.core import fastjson
from nearline_rec.core.degrade import LagPolicy, LagThresholds
from nearline_rec.core.modes import ListMode, ModeOverride, WorkerMode
from nearline_rec.core.pipeline import RecItem, RecList
from nearline_rec.settings import iter_setting_docs, load_settings
from nearline_rec.storage import codec


def test_modes_are_their_names_on_every_wire():
    rec = RecList("u1", (RecItem("7", 0.5, "genre", "T"),), ListMode.DEGRADED, "m", "e", 1.0)
    doc = rec.to_json(version=3, generated_at=2.0)
    assert json.loads(fastjson.dumps(doc))["mode"] == "degraded"
    assert json.dumps(doc) == json.dumps({**doc, "mode": "degraded"})
    assert doc["degraded"] is True
    assert f"{ListMode.COLD_START}" == str(ListMode.COLD_START) == "cold_start"
    assert (
        [m.value for m in ListMode] == list(codec.MODES) == ["personal", "cold_start", "degraded"]
    )


def test_a_stored_record_gives_back_a_typed_mode_and_named_items():
    value = {"mode": "cold_start", "items": [{"item_id": "9", "channel": "genre"}]}
    rec = codec.record_from_list(
        value,
        version=1,
        embedding=None,
        n_events=0,
        event_time=1.0,
        item_code=lambda i: int(i),
        string_code=lambda s: 0,
    )
    back = codec.decode(codec.encode(rec))
    assert back.mode is ListMode.COLD_START
    assert back.items == ((9, "genre"),) and back.items[0].code == 9


def test_the_lag_policy_speaks_worker_modes_and_takes_strings():
    policy = LagPolicy(LagThresholds(high=10, low=2, hold_seconds=0.0), override="auto")
    assert policy.observe(50, now=1.0) is WorkerMode.DEGRADED
    assert policy.set_override("normal", now=2.0) is WorkerMode.NORMAL
    assert policy.override is ModeOverride.NORMAL
    assert policy.transitions[-1].reason == "forced normal"


def test_the_degrade_setting_is_typed_and_documented_as_before(monkeypatch):
    monkeypatch.setenv("NEARLINE_DEGRADE__MODE", "degraded")
    assert load_settings().degrade.mode is ModeOverride.DEGRADED
    rows = {env: default for env, default, _ in iter_setting_docs()}
    assert rows["NEARLINE_DEGRADE__MODE"] == "'auto'"
