"""The commit guard: at-least-once for user-events in one place. Which user-events offsets
the worker has fully processed, per partition: the guard that keeps a committed offset from
ever passing an event whose effects are not written.

Faust acknowledges some records its stream never hands to the agent: a record that reaches
the stream while flow control is suspended, or that was fetched in an earlier consumer
generation, is skipped *and acked* (faust-streaming 0.15, ``Stream._py_aiter``), so the
offset commit moves past it. A worker that restarts or takes over the partition then
resumes after that record and it is lost; in-process, the user's later events are applied
without it. Seen here after a SIGKILL and in a two-worker takeover, both on the first
records of a new assignment.

The frontier holds, per partition, the next offset not yet processed. It starts at the
committed offset when the partition is assigned, and moves only as batches finish. With it:

* ``gaps(records)`` names the offsets a batch jumped over, which the agent reads back from
  Kafka and applies first, in order;
* ``clamp(offsets)`` caps every commit at the frontier, so even a record skipped at the tail
  of a partition (no later record to reveal the gap) is never committed unprocessed; the
  commit Faust wanted is kept as ``owed`` until the tail is filled.

`OffsetFrontier` is the pure bookkeeping; `CommitGuard` wires it to Kafka: the consumer's
hooks (nearline_rec.faust_app calls `on_assigned`, `on_seek`, `clamp_commit`), the batch lock, the
re-read of gaps (a group-less reader) and the commit of tails filled after Faust's ack.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka.errors import KafkaError
from faust.types import TP

from nearline_rec.kafka_clients import RangeReader
from nearline_rec.logs import log_fields
from nearline_rec.processing import RawRecord
from nearline_rec.retry import BatchAbandoned, held
from nearline_rec.settings import KafkaSettings

log = logging.getLogger("nearline.ingest")

Process = Callable[[list[RawRecord]], Awaitable[None]]
"""Applies records and writes their effects; raises BatchAbandoned for a rebalance."""


class _Positioned(Protocol):
    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Gap:
    """Offsets [start, end) of one partition that were not delivered to the agent."""

    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


class OffsetFrontier:
    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._next: dict[int, int] = {}
        self._owed: dict[int, int] = {}

    # -- assignment --------------------------------------------------------------------
    def forget(self, partitions: Iterable[int] | None = None) -> None:
        """A new assignment is coming: no commits for these partitions until reset."""
        if partitions is None:
            self._next.clear()
            self._owed.clear()
            return
        for p in partitions:
            self._next.pop(p, None)
            self._owed.pop(p, None)

    def reset(self, positions: Mapping[int, int]) -> None:
        """The consumer was positioned at these offsets (the committed ones): the next
        record of each partition must carry exactly that offset."""
        for p, offset in positions.items():
            if offset < 0:
                raise ValueError(f"partition {p}: position {offset} is negative")
            self._next[p] = offset
            if self._owed.get(p, -1) <= offset:
                self._owed.pop(p, None)

    def position(self, partition: int) -> int | None:
        return self._next.get(partition)

    def positions(self) -> dict[int, int]:
        return dict(self._next)

    # -- batches -----------------------------------------------------------------------
    def gaps(self, records: Iterable[_Positioned]) -> list[Gap]:
        """Offsets the batch skips, in batch order: per partition, any record beyond the
        next expected offset opens a gap up to it. Records at or below what is already
        processed are redeliveries (the dedupe by offset drops them), not gaps. A
        partition with no known position has no gaps to report."""
        expect = dict(self._next)
        out: list[Gap] = []
        for r in records:
            want = expect.get(r.partition)
            if want is None:
                continue
            if r.offset > want:
                out.append(Gap(r.partition, want, r.offset))
            if r.offset >= want:
                expect[r.partition] = r.offset + 1
        return out

    def advance(self, records: Iterable[_Positioned]) -> None:
        """These records' effects are written: the frontier moves past them. Only known
        partitions move (a batch that finishes during a rebalance cannot re-create a
        partition that was forgotten for the next assignment)."""
        nxt = self._next
        for r in records:
            cur = nxt.get(r.partition)
            if cur is not None and r.offset >= cur:
                nxt[r.partition] = r.offset + 1
        for p in [p for p, want in self._owed.items() if nxt.get(p, -1) >= want]:
            del self._owed[p]

    def filled(self, gap: Gap) -> None:
        """Every record in the gap was read back and processed (offsets with no record,
        such as transaction markers, included): the frontier moves to its end."""
        cur = self._next.get(gap.partition)
        if cur is not None and cur >= gap.start and gap.end > cur:
            self._next[gap.partition] = gap.end
        if self._owed.get(gap.partition, -1) <= self._next.get(gap.partition, -1):
            self._owed.pop(gap.partition, None)

    # -- commits -----------------------------------------------------------------------
    def clamp(self, offsets: Mapping[int, int]) -> dict[int, int]:
        """The commit allowed for each partition: never beyond the frontier, nothing for
        a partition without a known position. What was wanted beyond it is kept as owed."""
        allowed: dict[int, int] = {}
        for p, offset in offsets.items():
            nxt = self._next.get(p)
            if nxt is None:
                continue
            if offset > nxt:
                self._owed[p] = max(offset, self._owed.get(p, 0))
                offset = nxt
            allowed[p] = offset
        return allowed

    def owed(self) -> list[Gap]:
        """Tails acknowledged by Faust but not processed here: [frontier, wanted)."""
        return [
            Gap(p, self._next[p], want)
            for p, want in sorted(self._owed.items())
            if p in self._next and want > self._next[p]
        ]


class CommitGuard:
    """At-least-once for user-events: no commit passes a record whose effects are not
    written, and a record Faust acked without delivering it is read back and applied."""

    def __init__(self, topic: str, kafka: KafkaSettings, rebalancing: Callable[[], bool]) -> None:
        self.frontier = OffsetFrontier(topic)
        self.lock = asyncio.Lock()
        self.batch_started: float | None = None
        """Loop time the batch under the lock started at (None: no batch running)."""
        """One batch at a time: the agents' batches and the tail filler share the frontier."""
        self.source_stale = True
        """The user-events topic id must be asked again before the next batch (an
        assignment came: the topic may have been deleted and made again)."""
        self.rebalancing = rebalancing
        self._kafka = kafka
        self._reader: RangeReader | None = None
        self.assignments = 0
        """Assignments seen so far (what follows the table's partitions counts on it)."""
        self._still: dict[int, tuple[int, float]] = {}
        """Per partition: the frontier last seen behind the client's position, and since when."""
        self._reread: dict[int, tuple[int, int]] = {}
        """Per partition: (frontier, client position) when it was last read again."""

    @property
    def topic(self) -> str:
        return self.frontier.topic

    # -- consumer hooks (nearline_rec.faust_app) ------------------------------------------------
    def on_assigned(self) -> None:
        """A new assignment is coming: no commits until its positions are known."""
        self.assignments += 1
        self.frontier.forget()
        self._still.clear()
        self._reread.clear()
        self.source_stale = True  # the topic may have been made again: ask its id

    async def on_seek(self, consumer: Any) -> None:
        """The consumer sought to the committed offsets: the frontier starts there."""
        tps = [tp for tp in consumer.assignment() if tp.topic == self.topic]
        positions = {}
        fresh = []
        for tp in tps:
            committed = consumer._committed_offset.get(tp)  # Faust keeps 0 as None
            if committed is None:
                fresh.append(tp)
            else:
                positions[tp.partition] = committed
        if fresh:  # nothing committed: the consumer starts at the log start (earliest)
            earliest = await consumer.earliest_offsets(*fresh)
            positions.update({tp.partition: max(earliest.get(tp) or 0, 0) for tp in fresh})
        self.frontier.reset(positions)

    def clamp_commit(self, offsets: Mapping[Any, int]) -> dict[Any, int]:
        """The commit Faust wants, with user-events offsets capped at the frontier."""
        mine = {tp.partition: off for tp, off in offsets.items() if tp.topic == self.topic}
        if not mine:
            return dict(offsets)
        allowed = self.frontier.clamp(mine)
        out = {tp: off for tp, off in offsets.items() if tp.topic != self.topic}
        out.update({TP(self.topic, p): off for p, off in allowed.items()})
        return out

    # -- batches -----------------------------------------------------------------------
    async def run_batch(
        self,
        records: list[RawRecord],
        process: Process,
        counters: Counter[str],
        before: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """One micro-batch from the stream: records Faust jumped over are read back and
        applied first, in offset order, then `process` writes the batch's effects and the
        frontier moves past it, before take_events acks the events."""
        async with self.lock:
            self.batch_started = asyncio.get_running_loop().time()
            if before is not None:
                await before()
            gaps = self.frontier.gaps(records)
            if gaps:
                fills = await self._fill(gaps, "skipped by the stream", counters)
                merged: list[RawRecord] = []
                for r in records:
                    merged.extend(fills.pop((r.partition, r.offset), ()))
                    merged.append(r)
                records = merged
            try:
                await process(records)
            except BatchAbandoned:
                counters["batches_abandoned"] += 1
                log_fields(
                    log, "batch given up for a rebalance, to be redone", records=len(records)
                )
                return  # the frontier stays: these offsets are not committed
            self.frontier.advance(records)
            self.batch_started = None

    def stalled(self, fetched: Mapping[int, int], now: float, after: float) -> dict[int, int]:
        """Partitions to read again: {partition: the frontier, where to read from}.

        Faust drops records it fetched on several paths without acking them (a stream skips
        a record that arrives while flow control is off or from another consumer
        generation; the fetch loop drops records of a partition that is not active when
        they arrive), and counts on a later seek to the committed offset to fetch them
        again. When no such seek comes, the Kafka client's position (`fetched`) stays past
        the frontier and nothing moves: a partition in that state for `after` seconds, with
        no batch running and no rebalance, is read again from its frontier. Once per
        (frontier, position): offsets that hold no record (transaction markers) cannot
        make it loop."""
        if self.lock.locked() or self.rebalancing():
            self._still.clear()
            return {}
        out: dict[int, int] = {}
        for p, pos in fetched.items():
            f = self.frontier.position(p)
            if f is None or pos <= f or self._reread.get(p) == (f, pos):
                self._still.pop(p, None)
                continue
            seen = self._still.get(p)
            if seen is None or seen[0] != f:
                self._still[p] = (f, now)
            elif now - seen[1] >= after:
                out[p] = f
                self._reread[p] = (f, pos)
                del self._still[p]
        return out

    def stuck_for(self) -> float:
        """Seconds the running batch has held the lock (0 without one)."""
        if self.batch_started is None or not self.lock.locked():
            return 0.0
        return asyncio.get_running_loop().time() - self.batch_started

    async def fill_owed_tails(
        self, consumer: Any, process: Process, counters: Counter[str]
    ) -> None:
        """Faust wanted to commit past records the agent never got, with no later record on
        that partition to reveal the gap: read them back and apply them, then commit."""
        frontier = self.frontier
        if not frontier.owed() or self.lock.locked() or self.rebalancing():
            return
        async with self.lock:
            mine = {tp.partition for tp in consumer.assignment() if tp.topic == self.topic}
            owed = [g for g in frontier.owed() if g.partition in mine]
            if not owed:
                return
            fills = await self._fill(owed, "acked but not delivered", counters)
            records = [r for gap in owed for r in fills[(gap.partition, gap.end)]]
            if records:
                try:
                    await process(records)
                except BatchAbandoned:
                    return  # the tails stay owed; the next owner starts before them
            for gap in owed:
                frontier.filled(gap)
            positions = frontier.positions()
            commit = {
                TP(self.topic, g.partition): positions[g.partition]
                for g in owed
                if g.partition in positions
            }
            try:  # Faust already counts these as committed: no later ack would commit them
                await consumer._commit(commit)
            except KafkaError as exc:  # a rebalance: the next owner starts from the older commit
                log.warning("commit after filling a tail failed: %s", exc)

    # -- gap refill --------------------------------------------------------------------
    async def _fill(
        self, gaps: Sequence[Gap], why: str, counters: Counter[str]
    ) -> dict[tuple[int, int], list[RawRecord]]:
        """Read every gap back: {(partition, gap end): its records}."""
        out = {}
        for gap in gaps:
            got = await self.read_gap(gap)
            out[(gap.partition, gap.end)] = got
            counters["offset_gaps"] += 1
            counters["events_refetched"] += len(got)
            log_fields(
                log,
                "offset gap filled",
                why=why,
                partition=gap.partition,
                start=gap.start,
                end=gap.end,
                records=len(got),
            )
        return out

    async def read_gap(self, gap: Gap) -> list[RawRecord]:
        """The records of a gap, read back from Kafka; an unreachable broker pauses the
        batch (like a Redis outage) rather than letting it go on without them."""

        def retried(exc: BaseException) -> None:
            log.warning(
                "re-reading offsets %s-%s of partition %s failed, retrying: %s",
                gap.start,
                gap.end - 1,
                gap.partition,
                exc,
            )

        if self._reader is None:
            self._reader = RangeReader(self._kafka)
        reader = self._reader
        policy = held(
            self.rebalancing,
            lambda exc: isinstance(exc, KafkaError | TimeoutError | OSError),
            retried,
        )
        return await policy(reader.read, self.topic, gap.partition, gap.start, gap.end)

    async def close(self) -> None:
        """The gap filler's consumer is not Faust's: closed with the worker."""
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
