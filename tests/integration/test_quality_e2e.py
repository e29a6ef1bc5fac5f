"""The evaluation through a real worker agrees with the in-process replay of the same core."""

from __future__ import annotations

import pytest

from nearline_rec.data.sample import generate_sample
from nearline_rec.tools.localrun import settings_for
from nearline_rec.tools.quality.e2e import E2EConfig, run_e2e
from nearline_rec.tools.quality.evaluate import EvalConfig, evaluate, prepare
from tests.integration.conftest import KAFKA, REDIS_URL

pytestmark = pytest.mark.integration


def test_e2e_replay_through_the_worker_matches_in_process(tmp_path):
    settings = settings_for(
        {"NEARLINE_KAFKA__BOOTSTRAP_SERVERS": KAFKA, "NEARLINE_REDIS__URL": REDIS_URL}
    )
    info = generate_sample(
        tmp_path / "sample",
        n_items=400,
        n_users=80,
        n_ratings=4000,
        dim=settings.items.embedding_dim,
        seed=13,
    )
    config = EvalConfig(k=10)
    prepared = prepare(settings, info.ratings_path, info.movies_path, None, config)
    report, replayed = evaluate(settings, prepared, config)
    e2e = run_e2e(settings, prepared, replayed, config, E2EConfig(), in_process=report["methods"])

    agreement = e2e["agreement"]
    assert agreement["scored_events"] == report["events"]["scored"] > 100
    assert agreement["missing_lists"] == 0
    # Same events in the same order through the same core, one list per event: the worker's
    # published lists are the in-process lists, item for item.
    assert agreement["identical_top_k"] >= 0.98, agreement
    assert abs(agreement["hit_rate@10_diff"]) <= 0.01, agreement
    assert e2e["records_in"] == len(prepared.events)
    assert e2e["lists_out"] == e2e["lists_written"] >= report["events"]["scored"]
    pipeline = e2e["methods"]["pipeline"]
    assert set(pipeline["channels"]) <= {
        "embedding",
        "item2item",
        "similar_users",
        "genre",
        "trending",
        "newest",
        "short_term",
        "friends",
        "cold_start",
    }
