"""The topic-id lookup before a batch is bounded: a lookup that never returns (a stuck admin
client) is given up after its timeout, counted, and the batch goes on; the next batch asks
again with a new client."""

from __future__ import annotations

import threading
import time

import nearline_rec.agents.ingest as ingest
from nearline_rec.composition import guard


async def test_a_stuck_topic_id_lookup_does_not_hold_the_batch(worker, monkeypatch):
    release = threading.Event()
    calls: list[int] = []

    def stuck(name: str) -> tuple[str, int]:
        calls.append(1)
        release.wait(30)  # bounded here too: the test never leaves a thread behind for long
        return "id", 3

    monkeypatch.setattr(ingest._describer, "timeout_s", -4.8)  # wait_for bound: 0.2 s
    monkeypatch.setattr(ingest._describer, "describe", stuck)
    abandoned: list[int] = []
    monkeypatch.setattr(ingest._describer, "abandon", lambda: abandoned.append(1))
    guard.source_stale = True
    try:
        t0 = time.monotonic()
        await ingest.learn_source_id()
        waited = time.monotonic() - t0
    finally:
        release.set()
    assert waited < 5.0
    assert calls == [1] and abandoned == [1]
    assert worker.rt.counters["topic_id_timeouts"] == 1
    assert guard.source_stale  # asked again before the next batch


async def test_the_topic_id_is_learned_when_the_lookup_answers(worker, monkeypatch):
    monkeypatch.setattr(ingest._describer, "describe", lambda name: ("topic-id-1", 3))
    guard.source_stale = True
    await ingest.learn_source_id()
    assert not guard.source_stale
    assert worker.rt.processor.source_id == "topic-id-1"
    assert worker.rt.processor.partition_count == 3
