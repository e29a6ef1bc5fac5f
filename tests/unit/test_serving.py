"""Read-path tier choice, input checks, metrics rendering, JSON logs (pure, no services)."""

from __future__ import annotations

import json
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nearline_rec.logs import JsonFormatter, log_fields
from nearline_rec.metrics import Metrics
from nearline_rec.schemas import validate
from nearline_rec.serving import BadRequest, check_user_id, parse_k, resolve

LIST = {
    "user_id": "u",
    "items": [{"item_id": str(i), "score": 1.0 - i / 10, "channel": "embedding"} for i in range(8)],
    "degraded": False,
    "mode": "personal",
    "model_version": "m",
    "embedding_version": "v1",
    "generated_at": 1000.0,
    "version": 7,
}
SHARED = dict(
    LIST,
    user_id="__popular__",
    mode="degraded",
    degraded=True,
    items=[dict(i, channel="popular") for i in LIST["items"]],
)


@pytest.mark.parametrize(
    "tiers,expected",
    [
        ({"cached": LIST, "personal": LIST, "popular": SHARED}, "cache"),
        ({"personal": LIST, "popular": SHARED}, "redis"),
        ({"popular": SHARED, "cold_start": SHARED}, "popular"),
        ({"popular": dict(SHARED, items=[]), "cold_start": SHARED}, "cold_start"),
        ({"default": SHARED}, "default"),
        ({}, "default"),
    ],
)
def test_first_available_tier_wins(tiers, expected):
    result = resolve("u", **tiers)
    assert result.tier == expected
    body = result.response(5, now=1010.0, stale_after=60)
    validate("recommendation-response", body)
    assert body["tier"] == expected and len(body["items"]) <= 5


def test_shared_lists_answer_as_cold_start_not_degraded():
    body = resolve("new", popular=SHARED).response(3, now=1001.0, stale_after=60)
    assert body["mode"] == "cold_start" and body["degraded"] is False
    assert body["user_id"] == "new" and [i["item_id"] for i in body["items"]] == ["0", "1", "2"]


def test_staleness_by_age_and_default_tier():
    assert not resolve("u", personal=LIST).response(5, 1059.0, 60)["stale"]
    assert resolve("u", personal=LIST).response(5, 1061.0, 60)["stale"]
    assert resolve("u", default=SHARED).response(5, 1000.0, 60)["stale"]
    empty = resolve("u").response(5, 1000.0, 60)
    assert empty["items"] == [] and empty["stale"] and empty["age_seconds"] is None


@pytest.mark.parametrize("raw,ok", [(None, 10), ("", 10), ("1", 1), ("1000", 1000)])
def test_parse_k_accepts(raw, ok):
    assert parse_k(raw, 10) == ok


@pytest.mark.parametrize("raw", ["0", "-3", "1001", "abc", "1.5", "9" * 40])
def test_parse_k_rejects_with_message(raw):
    with pytest.raises(BadRequest, match="k must be"):
        parse_k(raw, 10)


@pytest.mark.parametrize("uid", ["", "x" * 129, "a\nb", "tab\there"])
def test_bad_user_ids(uid):
    with pytest.raises(BadRequest):
        check_user_id(uid)


def _snapshot():
    return {
        "counters": {
            "events_in": 12,
            "events_applied": 10,
            "events_duplicate": 2,
            "lists_written": 5,
            "lists_degraded": 2,
            "dirty_recomputed": 1,
            "processing_errors": 2,
            "list_errors": 1,
            "redis_refused_OOM": 3,
        },
        "agent_crashes": {"ingest": 1},
        "dead_letters": {"not_json": 3},
        "redis_errors": 1,
        "redis_retries": 4,
        "reads": {"cache": 6, "redis": 2},
        "lag_by_partition": {"0": 5, "1": 0},
        "mode": "degraded",
        "dirty_users": 2,
        "items": 100,
        "redis_ok": True,
        "newest_event_age_s": 0.5,
    }


def test_metrics_text_parses_with_prometheus_parser_and_matches_runtime():
    m = Metrics(_snapshot)
    m.observe_batch(50, 0.02, [0.1, 0.3])
    fams = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples
    }
    assert samples[("nearline_events_in_total", ())] == 12
    assert samples[("nearline_dead_letters_total", (("reason", "not_json"),))] == 3
    assert samples[("nearline_lists_written_total", (("mode", "personal"),))] == 3
    assert samples[("nearline_lists_written_total", (("mode", "degraded"),))] == 2
    assert samples[("nearline_consumer_lag", (("partition", "0"),))] == 5
    assert samples[("nearline_degraded", ())] == 1.0
    assert samples[("nearline_reads_total", (("tier", "cache"),))] == 6
    assert samples[("nearline_event_to_list_seconds_count", ())] == 2
    assert samples[("nearline_batch_size_events_sum", ())] == 50
    assert samples[("nearline_agent_crashes_total", (("agent", "ingest"),))] == 1
    assert samples[("nearline_agent_crashes_total", (("agent", "items"),))] == 0
    assert samples[("nearline_processing_errors_total", ())] == 2
    assert samples[("nearline_list_errors_total", ())] == 1
    assert samples[("nearline_redis_refusals_total", (("code", "OOM"),))] == 3
    assert samples[("nearline_redis_refusals_total", (("code", "READONLY"),))] == 0


def test_json_log_lines_carry_fields():
    logger = logging.getLogger("test.nearline.json")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        log_fields(logger, "mode change", user_id="42", partition=3, offset=17, mode="degraded")
    finally:
        logger.removeHandler(handler)
    doc = json.loads(JsonFormatter().format(records[0]))
    assert doc["msg"] == "mode change"
    assert (doc["user_id"], doc["partition"], doc["offset"], doc["mode"]) == (
        "42",
        3,
        17,
        "degraded",
    )
    text = records[0].getMessage()
    assert text == 'mode change user_id="42" partition=3 offset=17 mode="degraded"'


def test_titles_fill_items_without_one_and_keep_the_rest():
    stored = dict(
        LIST,
        items=[
            {"item_id": "1", "channel": "genre"},
            {"item_id": "2", "channel": "genre", "title": "Kept"},
            {"item_id": "3", "channel": "trending"},
        ],
    )
    body = resolve("u", personal=stored).response(
        3, 1001.0, 60, titles={"1": "One", "2": "Other"}.get
    )
    validate("recommendation-response", body)
    assert body["items"] == [
        {"item_id": "1", "channel": "genre", "title": "One"},
        {"item_id": "2", "channel": "genre", "title": "Kept"},
        {"item_id": "3", "channel": "trending"},
    ]
    assert "title" not in stored["items"][0]  # the stored (cached) list is not changed


def test_a_retired_item_is_left_out_of_the_response_and_the_list_refills_to_k():
    from nearline_rec.serving import ReadResult

    value = {
        "items": [{"item_id": i, "channel": "embedding"} for i in ("a", "gone", "b", "c")],
        "mode": "personal",
        "generated_at": 1.0,
    }
    keep = lambda i: i != "gone"  # noqa: E731
    body = ReadResult("u", "redis", value).response(3, 2.0, 60.0, keep=keep)
    assert [i["item_id"] for i in body["items"]] == ["a", "b", "c"]
    unfiltered = ReadResult("u", "redis", value).response(3, 2.0, 60.0)
    assert [i["item_id"] for i in unfiltered["items"]] == ["a", "gone", "b"]
