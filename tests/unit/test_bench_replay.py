"""The replay benchmark's summary: medians over rounds per ranker, the learned/linear ratio,
and a drain that measured nothing kept out of the medians."""

from __future__ import annotations

from nearline_rec.tools.bench.replay import summarize


def _phase(eps: float | None, lps: float | None, p99: float, r: int) -> dict:
    drain = {"events_per_s": eps, "lists_per_s": lps, "lists_per_event": None, "samples": []}
    if eps:
        drain["lists_per_event"] = round(lps / eps, 3)
    return {"drain": drain, "freshness": {"p99_s": p99, "latencies_sample": []}, "round": r}


def test_summary_takes_medians_and_the_ratio():
    f = {
        "data": {"events": 100},
        "bare_consumer": {"events_per_s": 90_000.0},
        "runs": {
            "linear": [
                _phase(6000, 600, 0.5, 0),
                _phase(5000, 500, 0.7, 1),
                _phase(7000, 700, 0.6, 2),
            ],
            "learned": [_phase(4000, 400, 0.8, 0), _phase(5000, 500, 0.9, 1)],
        },
    }
    s = summarize(f)
    assert s["linear"]["events_per_s"] == 6000
    assert s["linear"]["lists_per_s"] == 600
    assert s["linear"]["freshness_p99_s"] == 0.6
    assert s["learned"]["events_per_s"] == 4500
    assert s["ratio_learned_to_linear"] == 0.75
    assert s["bare_consumer_events_per_s"] == 90_000.0


def test_a_drain_without_a_rate_is_left_out():
    f = {
        "data": {},
        "runs": {"linear": [_phase(None, None, 0.4, 0), _phase(3000, 300, 0.5, 1)]},
    }
    s = summarize(f)
    assert s["linear"]["events_per_s"] == 3000
    assert s["linear"]["events_per_s_runs"] == [3000]
    assert s["linear"]["lists_per_event"] == 0.1
    assert "ratio_learned_to_linear" not in s
