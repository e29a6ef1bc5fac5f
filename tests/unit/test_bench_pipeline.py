"""The pipeline benchmark's learned-ranker comparison: the in-process core really ranks with
the ONNX model and says where the ranking time goes; the summary's ratios and verdict."""

from __future__ import annotations

from nearline_rec.tools.bench.core import core_throughput
from nearline_rec.tools.bench.pipeline import _ranker_summary
from nearline_rec.tools.bench.workload import catalogue
from nearline_rec.tools.quality.learn import LearnConfig, fit
from tests.unit.test_learned_ranker import _rows, _write


def test_core_ranks_with_the_onnx_model_and_reports_the_ranking_share(tmp_path):
    x, y, g = _rows()
    model = _write(tmp_path, "logistic", fit("logistic", x, y, g, LearnConfig()), "v-bench")
    cat = catalogue(1000, 16)
    kw = {"n_events": 300, "n_users": 40, "batch_size": 100, "warm_events": 100, "log": print}
    linear = core_throughput(cat, profile=True, **kw)
    learned = core_throughput(
        cat, settings={"ranking": {"model_path": str(model)}}, profile=True, **kw
    )
    assert learned["model_version"] == "v-bench"
    assert linear["model_version"] != "v-bench"
    lin, lea = linear["ranking_share"]["parts"], learned["ranking_share"]["parts"]
    # the linear path ranks inside rank(); the learned one builds rows and calls the model
    assert lin["rank"] > 0 and lin["model_call"] == 0 and lin["features"] == 0
    assert lea["rank"] == 0 and lea["model_call"] > 0 and lea["features"] > 0
    assert lea["diversify"] > 0
    for r in (linear, learned):
        share = r["ranking_share"]["share"]
        assert 0 < share < 1
        assert abs(share - sum(r["ranking_share"]["parts"].values())) < 1e-3


def _phase(eps: float, p99: float, version: str = "v1", fallbacks: int = 0) -> dict:
    status = {"learned_version": version, "fallbacks": {"slow": fallbacks}, "seconds": 0.5}
    return {
        "drain": {"events_per_s": eps, "samples": [{"t": 10.0}], "ranker": status},
        "freshness": {"p99_s": p99, "ranker": status},
    }


def _figures(learned: list[dict]) -> dict:
    core = {"events_per_s": 1000.0, "ranking_share": {"share": 0.2, "parts": {}}}
    return {
        "version": "v1",
        "core": {"linear": [core, core], "learned": [core, {**core, "events_per_s": 800.0}]},
        "runs": {"linear": [_phase(6000, 0.5), _phase(7000, 0.7)], "learned": learned},
    }


def test_summary_medians_ratios_and_targets():
    s = _ranker_summary(_figures([_phase(5500, 0.6), _phase(6500, 0.8)]))
    assert s["linear"]["events_per_s"] == 6500 and s["learned"]["events_per_s"] == 6000
    assert s["ratio_events_per_s"] == round(6000 / 6500, 3)
    assert s["ratio_core_events_per_s"] == 0.9
    assert s["ratio_freshness_p99"] == round(0.7 / 0.6, 3)
    assert s["learned"]["worker_model_call_share"] == 0.05
    assert s["learned"]["versions_served"] == ["v1"] and s["targets_met"]
    # a batch ranked by the fallback, a slow run, or another version: not met
    assert not _ranker_summary(_figures([_phase(6000, 0.6, fallbacks=1)] * 2))["targets_met"]
    assert not _ranker_summary(_figures([_phase(4000, 0.6)] * 2))["targets_met"]
    assert not _ranker_summary(_figures([_phase(6000, 1.2)] * 2))["targets_met"]
    assert not _ranker_summary(_figures([_phase(6000, 0.6, version="v0")] * 2))["targets_met"]
