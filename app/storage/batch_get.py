"""Many GETs as one MGET: what `nearline serve` reads users' records with."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("nearline.serve")


class GetBatcher:
    """Coalesces the GETs that requests issue in one event-loop turn into one MGET: under
    many connections, one Redis command (and one trip through the client library, whose
    per-command cost dominates a read) serves a batch of reads. With a `budget` (seconds),
    a read whose batch has no answer by then fails with TimeoutError: one timer per batch,
    not one per read."""

    def __init__(
        self,
        client: Any,
        *,
        cluster: bool = False,
        max_batch: int = 256,
        max_inflight: int = 2,
        budget: float | None = None,
    ) -> None:
        self.client = client
        self.loop = asyncio.get_running_loop()
        self.budget = budget
        # a cluster's keys live in many slots: one MGET per slot, run side by side
        self.mget = client.mget_nonatomic if cluster else client.mget
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self.tasks: set[asyncio.Future[Any]] = set()
        self.pending: list[tuple[str, asyncio.Future[Any]]] = []
        self.pending_since = 0.0
        """Loop time of the oldest pending read: its budget runs from then."""
        self.inflight = 0
        """Batches sent and neither answered nor past their budget."""
        self.flush_soon = False
        self.batches = 0
        self.keys = 0

    def get(self, key: str) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self.loop.create_future()
        self._add(key, fut)
        return fut

    def get_then(self, key: str, then: Callable[[Any, BaseException | None], None]) -> None:
        """`get` without a future: `then(value, None)` or `then(None, exc)` is called as the
        batch's answer (or its budget) comes, with no further turn of the loop."""
        self._add(key, Then(then))  # type: ignore[arg-type]

    def _add(self, key: str, fut: asyncio.Future[Any]) -> None:
        if not self.pending:
            self.pending_since = self.loop.time()
        self.pending.append((key, fut))
        if not self.flush_soon:
            self.flush_soon = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Send what is pending, unless `max_inflight` batches are out: then it goes when
        one comes back (or passes its budget). Under load a batch gathers the reads of a
        round trip, not only of one turn of the loop: fewer, larger MGETs."""
        self.flush_soon = False
        if not self.pending or self.inflight >= self.max_inflight:
            return
        batch, self.pending = self.pending, []
        deadline = None if self.budget is None else self.pending_since + self.budget
        for i in range(0, len(batch), self.max_batch):
            chunk = batch[i : i + self.max_batch]
            self.inflight += 1
            slot = [True]  # held until the batch's answer or its budget, whichever first
            task = self.loop.create_task(self._mget(chunk))
            self.tasks.add(task)  # held until done (the loop keeps only weak references)
            task.add_done_callback(self.tasks.discard)
            timer = None
            if deadline is not None:
                timer = self.loop.call_at(deadline, self._expire, chunk, slot)
            task.add_done_callback(lambda _t, s=slot, h=timer: self._back(s, h))

    def _back(self, slot: list[bool], timer: asyncio.TimerHandle | None) -> None:
        if timer is not None:
            timer.cancel()
        if slot[0]:
            slot[0] = False
            self.inflight -= 1
            if self.pending and not self.flush_soon:
                self._flush()

    def _expire(self, batch: list[tuple[str, asyncio.Future[Any]]], slot: list[bool]) -> None:
        """The batch is past its budget: its reads fail now, and the next batch may go
        (whatever this one's MGET still waits for)."""
        for _, f in batch:
            if not f.done():
                f.set_exception(TimeoutError("no answer from Redis within the read budget"))
        self._back(slot, None)

    async def _mget(self, batch: list[tuple[str, asyncio.Future[Any]]]) -> None:
        live = [(k, f) for k, f in batch if not f.done()]  # a request past its budget left
        if not live:
            return
        self.batches += 1
        self.keys += len(live)
        try:
            values = await self.mget([k for k, _ in live])
        except BaseException as exc:  # every waiting read sees the failure
            for _, f in live:
                if not f.done():
                    f.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for (_, f), v in zip(live, values, strict=True):
            if not f.done():
                f.set_result(v)


class Then:
    """What `_mget` and `_expire` settle in place of a future: a callback, called once."""

    __slots__ = ("fn", "settled")

    def __init__(self, fn: Callable[[Any, BaseException | None], None]) -> None:
        self.fn = fn
        self.settled = False

    def done(self) -> bool:
        return self.settled

    def set_result(self, value: Any) -> None:
        self.settled = True
        self._call(value, None)

    def set_exception(self, exc: BaseException) -> None:
        self.settled = True
        self._call(None, exc)

    def _call(self, value: Any, exc: BaseException | None) -> None:
        try:
            self.fn(value, exc)
        except Exception:  # one read's failure is not its batch's
            log.exception("a batched read's callback failed")
