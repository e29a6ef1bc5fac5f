"""Which user-events offsets the worker has fully processed, per partition: the guard that
keeps a committed offset from ever passing an event whose effects are not written.

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

Pure bookkeeping: no Kafka here (app.faust_app and agents.ingest wire it in).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol


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
