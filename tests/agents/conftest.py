"""The agent tier: the worker's own Faust agents, run with `agent.test_context()` on the
in-memory store, with a publisher that records what the sink sends. No Kafka, no Redis:
the App is never started, only the agent under test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from nearline_rec.composition import guard, settings, use_runtime, user_table
from nearline_rec.runtime import Runtime
from nearline_rec.storage.memory_store import MemoryStore
from tests.unit.factories import item

Sent = tuple[str, int | None, bytes | None, bytes]


@dataclass
class Worker:
    rt: Runtime
    store: MemoryStore
    sent: list[Sent] = field(default_factory=list)

    def sent_to(self, topic: str) -> list[Sent]:
        return [r for r in self.sent if r[0] == topic]

    async def until(self, cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
        """Wait for a condition (the agent's batches run on this loop), bounded."""
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"timeout ({timeout:.0f}s) waiting for {what}")
            await asyncio.sleep(0.01)


@pytest.fixture
async def worker() -> AsyncIterator[Worker]:
    """A Runtime on the in-memory store, its catalogue holding six items in two genres,
    installed for the agents; the user table emptied before and after."""
    store = MemoryStore(settings.redis.key_prefix)
    w = Worker(Runtime(settings, store=store), store)

    async def publish(records: list[Any]) -> None:
        w.sent.extend(records)

    use_runtime(w.rt, publish)
    dim = settings.items.embedding_dim
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((6, dim)).astype(np.float32)
    w.rt.recommender.catalog.upsert_many(
        item(f"i{n}", v, genres=("Action",) if n < 3 else ("Drama",)) for n, v in enumerate(vecs)
    )
    w.rt.recommender.catalog.reindex()
    w.rt.catalog_ready.set()
    guard.source_stale = False  # no broker to ask the topic id of
    user_table.data.clear()
    try:
        yield w
    finally:
        use_runtime(None)
        user_table.data.clear()
