"""A real worker serving a learned ranker from an ONNX file: every list records the model
version it was ranked with, a new file is picked up between batches without a restart (no
list mixes two versions: once the new version appears the old one does not come back), a
bad file keeps the previous model, and a missing file ranks with the linear model, counted."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from nearline_rec.core.rank import LEARNED_FEATURES, load_model
from nearline_rec.ranking import card_path
from nearline_rec.tools.quality.learn import LearnConfig, fit, to_onnx
from tests.integration.conftest import KAFKA, consume_all
from tests.integration.faults import http_get

N = len(LEARNED_FEATURES)


def install(path: Path, version: str, seed: int) -> None:
    """A small logistic model at `path` (card first, then the model by an atomic rename)."""
    rng = np.random.default_rng(seed)
    x = rng.random((600, N)).astype(np.float32)
    y = (x[:, 5] + 0.1 * rng.random(600) > 0.8).astype(np.float32)
    data, output, column = to_onnx("logistic", fit("logistic", x, y, None, LearnConfig()), N)
    card = {"version": version, "features": list(LEARNED_FEATURES), "output": output}
    card_path(path).write_text(json.dumps({**card, "column": column}))
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def produce(run, start: int, n: int) -> None:
    from kafka import KafkaProducer

    items = run.taste_items(1)[:40]
    producer = KafkaProducer(bootstrap_servers=KAFKA)
    for i in range(start, start + n):
        user = f"lr-{i % 6}"
        doc = {
            "event_id": f"lr-{i}",
            "user_id": user,
            "item_id": items[i % len(items)],
            "type": "like",
            "timestamp": 1.7e9 + i,
        }
        producer.send(
            run.settings.topics.user_events, key=user.encode(), value=json.dumps(doc).encode()
        )
    producer.flush()
    producer.close()


def versions(run, n: int) -> list[str]:
    """model_version of the recommendation records in offset order per partition."""
    msgs = consume_all(run.settings.topics.recommendations, min_records=n)
    msgs.sort(key=lambda m: (m.partition, m.offset))
    return [(m.partition, json.loads(m.value)["model_version"]) for m in msgs]


def test_hot_reload_and_bad_file(catalog_run, workers, tmp_path):
    run = catalog_run
    model = tmp_path / "ranker.onnx"
    install(model, "it-v1", 1)
    env = {
        **run.env,
        "NEARLINE_RANKING__MODEL_PATH": str(model),
        "NEARLINE_RANKING__RELOAD_SECONDS": "0.2",
        "NEARLINE_RANKING__BUDGET_MS": "5000",
    }
    worker = workers(env)
    worker.wait_ready()
    produce(run, 0, 30)
    st = worker.wait(
        lambda s: (
            s["counters"].get("lists_written", 0) >= 1 and s["counters"].get("events_in", 0) >= 30
        ),
        120,
        "first lists",
    )
    assert st["ranker"]["learned_version"] == "it-v1"
    first = versions(run, st["counters"]["lists_written"])
    assert first and {v for _, v in first} == {"it-v1"}

    time.sleep(0.01)
    install(model, "it-v2", 2)
    # the file is looked at between batches: the next events bring the new model in
    produce(run, 30, 30)
    st = worker.wait(
        lambda s: (
            s["counters"].get("events_in", 0) >= 60 and s["ranker"]["learned_version"] == "it-v2"
        ),
        120,
        "second batch, ranked by the new model",
    )
    if {v for _, v in versions(run, st["counters"]["lists_written"])} != {"it-v1", "it-v2"}:
        produce(run, 60, 6)  # every list of the second batch came before the check: one more
        st = worker.wait(lambda s: s["counters"].get("events_in", 0) >= 66, 120, "one more")
    got = versions(run, st["counters"]["lists_written"])
    assert {v for _, v in got} == {"it-v1", "it-v2"}
    for part in {p for p, _ in got}:
        seq = [v for p, v in got if p == part]
        if "it-v2" in seq:  # once the new model ranked a list, the old one never does again
            assert "it-v1" not in seq[seq.index("it-v2") :]
    assert st["ranker"]["reloads"] >= 1 and st["ranker"]["fallbacks"]["error"] == 0
    s_in = st["counters"]["events_in"]

    model.write_bytes(b"not a model")
    produce(run, 100, 12)
    st = worker.wait(lambda s: s["ranker"]["reload_errors"] >= 1, 60, "the bad file noticed")
    assert st["ranker"]["learned_version"] == "it-v2"
    assert "not a loadable ONNX model" in st["ranker"]["error"]
    produce(run, 200, 12)
    st = worker.wait(
        lambda s: s["counters"].get("events_in", 0) >= s_in + 24, 120, "batches after the bad file"
    )
    tail = versions(run, st["counters"]["lists_written"])
    assert tail[-1][1] == "it-v2" and worker.alive
    body = http_get(worker.port, "/metrics")[1]
    assert "nearline_ranker_reload_errors_total 1.0" in body
    assert 'nearline_ranker_fallbacks_total{reason="error"} 0.0' in body


def test_missing_model_ranks_with_the_linear_model_and_counts_it(catalog_run, workers, tmp_path):
    run = catalog_run
    env = {**run.env, "NEARLINE_RANKING__MODEL_PATH": str(tmp_path / "absent.onnx")}
    worker = workers(env)
    worker.wait_ready()
    produce(run, 0, 12)
    st = worker.wait(
        lambda s: (
            s["counters"].get("events_in", 0) >= 12 and s["counters"].get("lists_written", 0) >= 1
        ),
        120,
        "lists",
    )
    assert st["ranker"]["learned_version"] is None and "not found" in st["ranker"]["error"]
    assert st["ranker"]["fallbacks"]["missing"] >= 1
    got = versions(run, st["counters"]["lists_written"])
    assert {v for _, v in got} == {load_model().version}
