"""GetBatcher's batching (app/storage/batch_get.py) against a stand-in client whose MGET
answers when the test says: reads of one loop turn share an MGET, reads that come while
`max_inflight` batches are out wait and go together, and the budget holds for every read,
also one that waited behind a batch that never answers. (On the real Redis:
tests/integration/test_serve.py.)"""

from __future__ import annotations

import asyncio

import pytest

from nearline_rec.storage.batch_get import GetBatcher

pytestmark = pytest.mark.timeout(30)


class StandIn:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.gates: list[asyncio.Event] = []

    async def mget(self, keys: list[str]) -> list[bytes]:
        self.calls.append(list(keys))
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        return [k.encode() for k in keys]


async def _turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_reads_that_come_while_a_batch_is_out_go_together_when_it_is_back() -> None:
    client = StandIn()
    batcher = GetBatcher(client, max_inflight=1)
    first = [batcher.get(k) for k in ("a", "b")]
    await _turns()
    later = [batcher.get("c")]
    await _turns()
    later.append(batcher.get("d"))
    await _turns()
    assert client.calls == [["a", "b"]]  # c and d wait for the batch out
    client.gates[0].set()
    assert await asyncio.gather(*first) == [b"a", b"b"]
    await _turns()
    assert client.calls == [["a", "b"], ["c", "d"]]
    client.gates[1].set()
    assert await asyncio.gather(*later) == [b"c", b"d"]
    assert (batcher.batches, batcher.keys, batcher.inflight) == (2, 4, 0)


async def test_get_then_calls_back_with_the_value_or_the_error() -> None:
    client = StandIn()
    batcher = GetBatcher(client, max_inflight=2)
    got: list[tuple[object, object]] = []
    batcher.get_then("x", lambda v, e: got.append((v, e)))
    batcher.get_then("y", lambda v, e: 1 / 0)  # a failing callback leaves the others be
    batcher.get_then("z", lambda v, e: got.append((v, e)))
    await _turns()
    client.gates[0].set()
    await _turns()
    assert got == [(b"x", None), (b"z", None)]


async def test_the_budget_holds_for_reads_queued_behind_a_batch_that_never_answers() -> None:
    client = StandIn()
    batcher = GetBatcher(client, max_inflight=1, budget=0.2)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    stuck = batcher.get("a")
    await _turns()
    queued = batcher.get("b")  # waits for the slot the stuck batch holds
    results = await asyncio.gather(stuck, queued, return_exceptions=True)
    waited = loop.time() - t0
    assert all(isinstance(r, TimeoutError) for r in results), results
    assert 0.2 <= waited < 0.35, waited  # one budget, not two
    # the slot is free again: a new read goes out at once (and answers)
    fresh = batcher.get("c")
    await _turns()
    assert client.calls[-1] == ["c"]
    client.gates[-1].set()
    assert await fresh == b"c"
