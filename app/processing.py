"""One micro-batch of raw user events -> state updates, lists, dead letters (no Faust here)."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kafka.partitioner.default import murmur2

from nearline_rec.core.events import InvalidRecord, UserEvent
from nearline_rec.core.experiments import OnlineMetric, Variant, assign
from nearline_rec.core.pipeline import RecList, Recommender
from nearline_rec.core.popularity import CountedEvent
from nearline_rec.core.social import Activity, split_relation
from nearline_rec.core.user_state import UserState
from nearline_rec.records import decode_activity, decode_event, decode_relation
from nearline_rec.storage.store import ListWrite


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


DEAD_LETTER_MAX_BYTES = 256 * 1024
"""Default for the original bytes kept in a letter: base64 makes them 4/3 as long, and the
letter must stay under the producer's and the broker's message size (1 MiB by default)."""
DEAD_LETTER_MAX_KEY_BYTES = 1024
"""A dead letter's Kafka key is the original key, cut to this length."""


def _kept(raw: bytes | None, limit: int, name: str) -> dict[str, Any]:
    """`<name>_b64` of at most `limit` original bytes; when cut, the full length and the
    sha256 of the whole value, so the original can still be found and checked."""
    if raw is None:
        return {f"{name}_b64": None}
    out: dict[str, Any] = {f"{name}_b64": base64.b64encode(raw[:limit]).decode()}
    if len(raw) > limit:
        out[f"{name}_truncated"] = True
        out[f"{name}_bytes"] = len(raw)
        out[f"{name}_sha256"] = hashlib.sha256(raw).hexdigest()
    return out


def describe_error(exc: BaseException) -> dict[str, str]:
    """The exception of a processing_error letter: type, message and where it was raised
    (the innermost frame), short enough for a log line or a letter."""
    where = ""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None:
        code = tb.tb_frame.f_code
        where = f"{code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno} in {code.co_name}"
    return {"type": type(exc).__name__, "message": str(exc)[:500], "where": where}


def dead_letter(
    record: RawRecord,
    reason: str,
    detail: str,
    now: float | None = None,
    *,
    error: BaseException | None = None,
    max_bytes: int = DEAD_LETTER_MAX_BYTES,
) -> DeadLetter:
    """schemas/dead-letter.schema.json: reason, source position, original bytes (base64),
    cut to `max_bytes` with the full length and a sha256 when longer (a letter that does
    not fit on the broker would stop the worker it was meant to protect)."""
    value: dict[str, Any] = {
        "reason": reason,
        "detail": detail[:2000],
        "source": {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "timestamp": record.timestamp,
        },
        **_kept(record.key, DEAD_LETTER_MAX_KEY_BYTES, "key"),
        **_kept(record.value, max_bytes, "payload"),
        "failed_at": time.time() if now is None else now,
    }
    if error is not None:
        value["error"] = describe_error(error)
    key = None if record.key is None else record.key[:DEAD_LETTER_MAX_KEY_BYTES]
    return DeadLetter(key=key, value=value)


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
    other_partitioner: int = 0
    """Events found on another partition than the one Kafka's default partitioner (murmur2
    of the key) picks: applied all the same (idempotence is per partition), and counted."""
    counted: list[CountedEvent] = field(default_factory=list)
    """Applied events the item statistics count, in source order per partition."""
    duplicates: int = 0
    valid: int = 0
    errors: list[tuple[RawRecord, Exception]] = field(default_factory=list)
    """Records quarantined as processing_error dead letters, with what they raised."""
    list_errors: list[tuple[str, RawRecord, Exception]] = field(default_factory=list)
    """Users whose list could not be made (served the degraded list instead)."""
    forwards: list[Activity] = field(default_factory=list)
    """friend-activity records to send (a like to the user's followers, a backfill)."""


class BatchProcessor:
    """Decodes, groups by user, applies events in order, recomputes each touched user once."""

    def __init__(
        self,
        recommender: Recommender,
        *,
        max_event_bytes: int,
        source_topic: str,
        dead_letter_max_bytes: int = DEAD_LETTER_MAX_BYTES,
        variants: dict[str, Recommender] | None = None,
        experiment: str = "default",
        activity_topic: str = "friend-activity",
    ) -> None:
        self.rec = recommender
        self.activity_topic = activity_topic
        self.max_event_bytes = max_event_bytes
        self.dead_letter_max_bytes = dead_letter_max_bytes
        self.source_topic = source_topic
        # A/B: per-variant views over the shared core; one variant = no experiment at all
        self.variants = variants or {recommender.variant: recommender}
        self.experiment = experiment
        self._variant_list = [Variant(name, 0.0) for name in self.variants]
        self.metric = OnlineMetric()
        self.partition_count = 0
        """Partitions of the source topic (0: unknown), to tell events another partitioner
        placed."""
        self.source_id = ""
        """Topic id of the source topic's current incarnation (set by the worker; "" when
        unknown): offsets are positions in it."""

    def set_shares(self, shares: dict[str, float]) -> None:
        self._variant_list = [Variant(name, shares[name]) for name in self.variants]

    def recommender_for(self, user_id: str) -> Recommender:
        if len(self.variants) == 1:
            return self.rec
        return self.variants[assign(user_id, self.experiment, self._variant_list)]

    def _letter(self, record: RawRecord, reason: str, detail: str) -> DeadLetter:
        return dead_letter(record, reason, detail, max_bytes=self.dead_letter_max_bytes)

    def decode(self, record: RawRecord) -> UserEvent | Activity | DeadLetter:
        if record.topic == self.activity_topic:
            try:
                return decode_activity(record.key, record.value, max_bytes=self.max_event_bytes)
            except InvalidRecord as exc:
                return self._letter(record, exc.reason, exc.detail)
        try:
            event = decode_event(record.value, max_bytes=self.max_event_bytes)
        except InvalidRecord as exc:
            return self._letter(record, exc.reason, exc.detail)
        if record.key is None:
            return self._letter(record, "bad_key", "record has no key; key must be the user_id")
        if record.key != event.user_id.encode():
            # The key decides the partition and so which worker owns the user's state.
            return self._letter(
                record,
                "bad_key",
                f"key {record.key[:64]!r} does not match user_id {event.user_id!r}",
            )
        return event

    def relations(self, records: Sequence[RawRecord]) -> tuple[list[Activity], list[DeadLetter]]:
        """user-relations records -> the friend-activity records they become (one for the
        follower, one for the followee, each keyed by its user), and dead letters for the
        records that are not relations (same validation and reasons as user events)."""
        forwards: list[Activity] = []
        letters: list[DeadLetter] = []
        for record in records:
            try:
                rel = decode_relation(record.key, record.value, max_bytes=self.max_event_bytes)
            except InvalidRecord as exc:
                letters.append(self._letter(record, exc.reason, exc.detail))
                continue
            except Exception as exc:  # a decoder bug: quarantine the record, go on
                letters.append(
                    dead_letter(
                        record,
                        "processing_error",
                        f"{type(exc).__name__} while decoding the record: {exc}",
                        error=exc,
                        max_bytes=self.dead_letter_max_bytes,
                    )
                )
                continue
            forwards.extend(split_relation(rel))
        return forwards, letters

    def process(
        self,
        records: Sequence[RawRecord],
        load_state: Callable[[str], UserState | None],
        now: float | None = None,
        *,
        degraded: list[tuple[int, float, str]] | None = None,
    ) -> BatchResult:
        """Apply a batch; with `degraded` (precomputed popular rows) skip recall and ranking
        and serve each touched user that list, marking the user dirty.

        An exception from the core is contained to what raised it: a record whose decoding
        or application fails becomes a `processing_error` dead letter (the user's other
        events still apply); a list that cannot be made is replaced by the degraded list and
        the user marked dirty, to be recomputed later. The batch always completes."""
        out = BatchResult()
        per_user: OrderedDict[str, list[tuple[UserEvent | Activity, RawRecord]]] = OrderedDict()
        for record in records:
            try:
                decoded = self.decode(record)
            except Exception as exc:  # a decoder bug: quarantine the record, go on
                decoded = self._quarantine(out, record, exc, "decoding the record")
            if isinstance(decoded, DeadLetter):
                out.dead_letters.append(decoded)
                continue
            out.valid += 1
            owner = decoded.user if isinstance(decoded, Activity) else decoded.user_id
            per_user.setdefault(owner, []).append((decoded, record))
        generated = time.time() if now is None else now
        # Apply every user's events first, then make the lists: the stream statistics stay
        # fixed while the batch's lists are made, so what derives from them is computed once.
        touched: list[tuple[UserState, Recommender, RawRecord, Exception | None, bool]] = []
        for user_id, both in per_user.items():
            items = [(e, r) for e, r in both if isinstance(e, UserEvent)]
            acts = [(a, r) for a, r in both if isinstance(a, Activity)]
            try:
                state = load_state(user_id) or UserState(user_id=user_id)
            except Exception as exc:  # the stored state cannot be read: keep the events
                for _, record in both:
                    out.dead_letters.append(
                        self._quarantine(out, record, exc, "loading the user's stored state")
                    )
                continue
            changed = False
            if self.partition_count and items and items[0][1].key:
                home = (murmur2(items[0][1].key) & 0x7FFFFFFF) % self.partition_count
                out.other_partitioner += sum(1 for _, r in items if r.partition != home)
            # An offset at or below the last applied one is Kafka redelivering after a crash
            # or rebalance: the table changelog got ahead of the committed offset, so the
            # list write or publish may not have happened. Emit the list again; the Redis
            # write is versioned, so doing it twice is harmless.
            redelivered = (
                bool(items)
                and state.source in ("", self.source_id)
                and items[0][1].offset <= state.offsets.get(items[0][1].partition, -1)
            )
            rec = self.recommender_for(user_id)
            current = set(state.last_list)
            good: list[tuple[UserEvent, RawRecord]] = []
            for event, record in items:
                try:
                    applied = self.rec.apply(
                        state, event, record.offset, record.partition, self.source_id
                    )
                except Exception as exc:
                    out.dead_letters.append(
                        self._quarantine(out, record, exc, "applying the event")
                    )
                    # the failed event may have changed the state half way: start again from
                    # the stored state with the events that applied (statistics are counted)
                    state = load_state(user_id) or UserState(user_id=user_id)
                    for ev, rc in good:
                        self.rec.reapply(state, ev, rc.offset, rc.partition, self.source_id)
                    continue
                good.append((event, record))
                # a redelivered like is forwarded again: its forwards may not have gone out
                # before the crash, and the followers' states take a like once
                out.forwards.extend(self.rec.like_forwards(state, event))
                if applied:
                    out.applied += 1
                    changed = True
                    if self.rec.counts(event):
                        out.counted.append(
                            CountedEvent(
                                record.partition,
                                record.offset,
                                event.item_id,
                                self.rec.count_weight(event),
                                event.timestamp,
                                event.rating,
                            )
                        )
                    self.metric.observe(
                        rec.variant, event.item_id, self.rec.policy.is_like(event), current
                    )
                else:
                    out.duplicates += 1
            social = self._apply_social(out, state, acts)
            event_list = bool(good) and (changed or (redelivered and state.n_events > 0))
            if not event_list and social is None:
                continue  # duplicate event ids only: state, list and output stay as they are
            if event_list and not changed:
                out.reemitted += 1
            last = good[-1][1] if good else acts[-1][1]
            state.partition = last.partition
            out.states[user_id] = state
            out.last_record[user_id] = last
            failed: Exception | None = None
            if degraded is None and good:
                try:
                    self.rec.touch(state)
                except Exception as exc:
                    failed = exc
            touched.append((state, rec, last, failed, event_list or bool(social)))
        # one call of a learned model for all the batch's lists of each recommender
        made: dict[int, RecList | Exception] = {}
        if degraded is None:
            groups: dict[int, list[int]] = {}
            for n, (_, rec, _, failed, make_list) in enumerate(touched):
                if failed is None and make_list:
                    groups.setdefault(id(rec), []).append(n)
            for members in groups.values():
                rec = touched[members[0]][1]
                try:
                    lists = rec.recommend_many([touched[n][0] for n in members])
                except Exception as exc:  # contained like a single list's failure
                    lists = [exc] * len(members)
                made.update(zip(members, lists, strict=True))
        for n, (state, rec, last, failed, make_list) in enumerate(touched):
            if not make_list:
                continue  # a follower came or went: the user's own list is the same
            try:
                if failed is not None:
                    raise failed
                if degraded is None:
                    got = made[n]
                    if isinstance(got, Exception):
                        raise got
                    rec_list = got
                else:
                    rec_list = rec.degraded_list(state, degraded)
                    out.dirty.append(state.user_id)
            except Exception as exc:
                rec_list = self._fallback_list(out, state, rec, last, exc)
            state.last_list = [i.item_id for i in rec_list.items]
            self.metric.list_written(rec.variant)
            write, result = self.output(state, rec_list, last.topic, last.partition, generated)
            out.lists.append((rec_list, write, result))
        return out

    def _apply_social(
        self, out: BatchResult, state: UserState, acts: list[tuple[Activity, RawRecord]]
    ) -> bool | None:
        """Apply the user's friend-activity records: None when nothing changed and no list
        is owed, else whether the user's list must be made again. A like or a follow seen
        before still makes the list (its first list may not have been written)."""
        if not acts:
            return None
        # A like makes the list again only if it changes what the friends channel gives the
        # merge (its quota, in order: the ranking reads the place within a channel, not the
        # score); checked once per user and batch, not per record.
        before = self.rec.friends_top(state) if any(a.kind == "like" for a, _ in acts) else None
        changed = make_list = liked = False
        for act, record in acts:
            try:
                change = self.rec.apply_social(state, act)
            except Exception as exc:
                out.dead_letters.append(self._quarantine(out, record, exc, "applying the record"))
                continue
            if change.changed:
                out.applied += 1
                changed = True
            else:
                out.duplicates += 1
            out.forwards.extend(change.forwards)
            if act.kind == "like" and change.list_changed:
                liked = True
                continue
            make_list = (
                make_list
                or change.list_changed
                or (
                    not change.changed
                    and act.kind in ("like", "follow")
                    and bool(state.friends)
                    and state.last_offset >= 0  # a list was made before: make it again
                )
            )
        if liked and not make_list:
            make_list = before is None or self.rec.friends_top(state) != before
        return make_list if (changed or make_list) else None

    def _quarantine(
        self, out: BatchResult, record: RawRecord, exc: Exception, doing: str
    ) -> DeadLetter:
        out.errors.append((record, exc))
        return dead_letter(
            record,
            "processing_error",
            f"{type(exc).__name__} while {doing}: {exc}",
            error=exc,
            max_bytes=self.dead_letter_max_bytes,
        )

    def _fallback_list(
        self, out: BatchResult, state: UserState, rec: Recommender, last: RawRecord, exc: Exception
    ) -> RecList:
        """The user's events are applied and kept; only the list failed. Serve the degraded
        list and mark the user dirty, so a later recompute tries again."""
        out.list_errors.append((state.user_id, last, exc))
        if state.user_id not in out.dirty:
            out.dirty.append(state.user_id)
        try:
            return rec.degraded_list(state, rec.popular_rows(2 * rec.config.top_n))
        except Exception:  # the popular rows failed too: an empty list flagged degraded
            return rec.degraded_list(state, [])

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
        # the offset reached in that partition (not the version's position, which can be ahead
        # of it after the user's events moved to a partition of lower offsets)
        offset = state.offsets.get(partition, state.last_offset)
        result["source"] = {"topic": topic, "partition": partition, "offset": offset}
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
