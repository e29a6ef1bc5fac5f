"""One micro-batch of raw user events -> state updates, lists, dead letters (no Faust here)."""

from __future__ import annotations

import base64
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.core.events import InvalidRecord, UserEvent, decode_event
from app.core.experiments import OnlineMetric, Variant, assign
from app.core.pipeline import RecList, Recommender
from app.core.user_state import UserState
from app.storage.redis_store import ListWrite


@dataclass(frozen=True, slots=True)
class RawRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    key: bytes | None
    value: dict[str, Any]

    def encode(self) -> bytes:
        return json.dumps(self.value, separators=(",", ":")).encode()


def dead_letter(
    record: RawRecord, reason: str, detail: str, now: float | None = None
) -> DeadLetter:
    """schemas/dead-letter.schema.json: reason, source position, original bytes (base64)."""

    def b64(raw: bytes | None) -> str | None:
        return None if raw is None else base64.b64encode(raw).decode()

    return DeadLetter(
        key=record.key,
        value={
            "reason": reason,
            "detail": detail[:2000],
            "source": {
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "timestamp": record.timestamp,
            },
            "key_b64": b64(record.key),
            "payload_b64": b64(record.value),
            "failed_at": time.time() if now is None else now,
        },
    )


def list_version(offset: int, mode: str) -> int:
    """Monotonic per user: a personal list outranks a degraded one made from the same offset."""
    return 2 * offset + (0 if mode == "degraded" else 1)


@dataclass
class BatchResult:
    dead_letters: list[DeadLetter] = field(default_factory=list)
    lists: list[tuple[RecList, ListWrite, dict[str, Any]]] = field(default_factory=list)
    states: dict[str, UserState] = field(default_factory=dict)
    last_record: dict[str, RawRecord] = field(default_factory=dict)
    """A record of each changed user from this batch (same partition as the user's state)."""
    dirty: list[str] = field(default_factory=list)
    """Users served the degraded list in this batch: recompute them after recovery."""
    reemitted: int = 0
    """Users whose list was emitted again for a redelivered batch (no state change)."""
    applied: int = 0
    duplicates: int = 0
    valid: int = 0


class BatchProcessor:
    """Decodes, groups by user, applies events in order, recomputes each touched user once."""

    def __init__(
        self,
        recommender: Recommender,
        *,
        max_event_bytes: int,
        source_topic: str,
        variants: dict[str, Recommender] | None = None,
        experiment: str = "default",
    ) -> None:
        self.rec = recommender
        self.max_event_bytes = max_event_bytes
        self.source_topic = source_topic
        # A/B: per-variant views over the shared core; one variant = no experiment at all
        self.variants = variants or {recommender.variant: recommender}
        self.experiment = experiment
        self._variant_list = [Variant(name, 0.0) for name in self.variants]
        self.metric = OnlineMetric()

    def set_shares(self, shares: dict[str, float]) -> None:
        self._variant_list = [Variant(name, shares[name]) for name in self.variants]

    def recommender_for(self, user_id: str) -> Recommender:
        if len(self.variants) == 1:
            return self.rec
        return self.variants[assign(user_id, self.experiment, self._variant_list)]

    def decode(self, record: RawRecord) -> UserEvent | DeadLetter:
        try:
            event = decode_event(record.value, max_bytes=self.max_event_bytes)
        except InvalidRecord as exc:
            return dead_letter(record, exc.reason, exc.detail)
        if record.key is None:
            return dead_letter(record, "bad_key", "record has no key; key must be the user_id")
        if record.key != event.user_id.encode():
            # The key decides the partition and so which worker owns the user's state.
            return dead_letter(
                record,
                "bad_key",
                f"key {record.key[:64]!r} does not match user_id {event.user_id!r}",
            )
        return event

    def process(
        self,
        records: Sequence[RawRecord],
        load_state: Callable[[str], UserState | None],
        now: float | None = None,
        *,
        degraded: list[tuple[int, float, str]] | None = None,
    ) -> BatchResult:
        """Apply a batch; with `degraded` (precomputed popular rows) skip recall and ranking
        and serve each touched user that list, marking the user dirty."""
        out = BatchResult()
        per_user: OrderedDict[str, list[tuple[UserEvent, RawRecord]]] = OrderedDict()
        for record in records:
            decoded = self.decode(record)
            if isinstance(decoded, DeadLetter):
                out.dead_letters.append(decoded)
                continue
            out.valid += 1
            per_user.setdefault(decoded.user_id, []).append((decoded, record))
        generated = time.time() if now is None else now
        # Apply every user's events first, then make the lists: the stream statistics stay
        # fixed while the batch's lists are made, so what derives from them is computed once.
        touched: list[tuple[UserState, Recommender, list[tuple[UserEvent, RawRecord]]]] = []
        for user_id, items in per_user.items():
            state = load_state(user_id) or UserState(user_id=user_id)
            changed = False
            # An offset at or below the last applied one is Kafka redelivering after a crash
            # or rebalance: the table changelog got ahead of the committed offset, so the
            # list write or publish may not have happened. Emit the list again; the Redis
            # write is versioned, so doing it twice is harmless.
            redelivered = items[0][1].offset <= state.last_offset
            rec = self.recommender_for(user_id)
            current = set(state.last_list)
            for event, record in items:
                if self.rec.apply(state, event, record.offset):
                    out.applied += 1
                    changed = True
                    self.metric.observe(
                        rec.variant, event.item_id, self.rec.policy.is_like(event), current
                    )
                else:
                    out.duplicates += 1
            if not changed and not (redelivered and state.n_events):
                continue  # duplicate event ids only: state, list and output stay as they are
            if not changed:
                out.reemitted += 1
            state.partition = items[-1][1].partition
            out.states[user_id] = state
            out.last_record[user_id] = items[-1][1]
            if degraded is None:
                self.rec.touch(state)
            touched.append((state, rec, items))
        for state, rec, items in touched:
            if degraded is not None:
                rec_list = rec.degraded_list(state, degraded)
                out.dirty.append(state.user_id)
            else:
                rec_list = rec.recommend(state)
            state.last_list = [i.item_id for i in rec_list.items]
            self.metric.list_written(rec.variant)
            last = items[-1][1]
            write, result = self.output(state, rec_list, last.topic, last.partition, generated)
            out.lists.append((rec_list, write, result))
        return out

    def output(
        self, state: UserState, rec_list: RecList, topic: str, partition: int, generated: float
    ) -> tuple[ListWrite, dict[str, Any]]:
        """The Redis write and the recommendations record of one list."""
        version = list_version(state.last_offset, rec_list.mode)
        value = rec_list.to_json(version=version, generated_at=generated)
        write = ListWrite(
            user_id=state.user_id,
            version=version,
            value=value,
            embedding=state.embedding,
            n_events=state.n_events,
            event_time=state.last_event_time,
        )
        result = dict(value)
        result["source"] = {"topic": topic, "partition": partition, "offset": state.last_offset}
        return write, result

    def recompute(self, state: UserState) -> tuple[RecList, ListWrite, dict[str, Any]]:
        """A normal list for a user served degraded lists while the worker was behind."""
        self.rec.touch(state)
        rec_list = self.recommender_for(state.user_id).recommend(state)
        # kept in memory only: the table is written by the agent's next event for the user
        state.last_list = [i.item_id for i in rec_list.items]
        write, result = self.output(
            state, rec_list, self.source_topic, max(state.partition, 0), time.time()
        )
        return rec_list, write, result
