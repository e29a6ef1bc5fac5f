"""The sink: every effect of one batch of user events or friend activity, written before the
batch is acknowledged (commit after effects). The users' state into the table and its
changelog, the lists into the store, the recommendations, dead letters and friend
activity onto the broker; each retried with the one policy of nearline_rec.retry until it is done
(or a rebalance takes the batch), and a failure kept to the records that cause it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from faust.types import TP

from nearline_rec.core import fastjson
from nearline_rec.errors import NearlineError
from nearline_rec.kafka_clients import send_in_batches
from nearline_rec.processing import BatchResult, DeadLetter, RawRecord, dead_letter
from nearline_rec.retry import BatchAbandoned, held
from nearline_rec.runtime import Runtime, log_event
from nearline_rec.storage.redis_client import RETRYABLE, RedisRefused

log = logging.getLogger("nearline.ingest")

Out = tuple[str, int | None, bytes | None, bytes]
"""A record to publish: (topic, partition or None for the key's, key, value)."""


def transient(exc: BaseException) -> bool:
    """An error of the broker or the network that a later try of the same batch can pass."""
    if isinstance(exc, KafkaError):
        return bool(getattr(exc, "retriable", False)) or isinstance(
            exc, KafkaTimeoutError | KafkaConnectionError
        )
    return isinstance(exc, TimeoutError | OSError | ConnectionError) or isinstance(exc, RETRYABLE)


class _NothingPassed(NearlineError):
    """No record of a batch can be written: the worker's fault, the batch is held."""

    def __init__(self, failed: Exception) -> None:
        super().__init__(str(failed))
        self.failed = failed


Publish = Callable[[list[Out]], Awaitable[None]]
"""Sends records and returns when the broker has every one."""


def broker_publisher(producer: Callable[[], Any], table: Any) -> Publish:
    """Publishing through the worker's producer (`producer()`: the started aiokafka
    producer), one producer batch per partition; the changelog offsets the table's store
    records as persisted (what Table._on_changelog_sent does, for rocksdb:// stores)."""

    async def publish(records: list[Out]) -> None:
        if not records:
            return
        sent = await send_in_batches(producer(), records)
        changelog = table.changelog_topic.get_topic_name()
        for topic, partition, n, fut in sent:
            meta = await fut
            if topic == changelog:
                table.data.set_persisted_offset(TP(topic, partition), meta.offset + n - 1)

    return publish


class Sink:
    """Writes a batch's effects. `table` is the user-state table (put_state and its
    changelog topic), `publish` sends records to the broker, `recommendations`,
    `dead_letters` and `activity` are the names of the topics the batch writes to."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        table: Any,
        publish: Publish,
        recommendations: str,
        dead_letters: str,
        activity: str,
        rebalancing: Callable[[], bool],
    ) -> None:
        self.rt = runtime
        self.table = table
        self.publish = publish
        self.recommendations = recommendations
        self.dead_letters = dead_letters
        self.activity = activity
        self.rebalancing = rebalancing

    # -- the broker --------------------------------------------------------------------
    def state_record(self, user_id: str, value: bytes, partition: int) -> Out:
        """The user's state into the table's store; its changelog record, for the
        partition of the user's own events, returned to be sent with the batch."""
        key = user_id.encode()
        self.table.put_state(key, value, partition)
        return (self.table.changelog_topic.get_topic_name(), partition, key, value)

    async def publish_until_done(self, records: list[Out]) -> None:
        """Publish with backoff while the broker is away; nothing is acked until it is
        done. An error no retry can pass (a record the broker will never take) is raised."""

        def retried(exc: BaseException) -> None:
            self.rt.counters["publish_retries"] += 1
            log.warning("publishing %d records failed, retrying: %r", len(records), exc)

        await held(self.rebalancing, transient, retried)(self.publish, records)

    # -- the store ---------------------------------------------------------------------
    async def write_lists_until_done(self, writes: list[Any], **marks: Any) -> None:
        """Retry (tenacity inside the store) and then keep trying: the batch is not acked
        until Redis has it, so an outage pauses this partition set instead of losing a
        list. A write Redis refuses (OOM, READONLY, NOPERM, WRONGTYPE, MISCONF) is held the
        same way, with one log line saying what the operator must do, until accepted."""
        rt = self.rt

        def retried(exc: BaseException) -> None:
            if isinstance(exc, RedisRefused):
                if rt.redis_refusal != exc.code:
                    log.error(
                        "redis refuses writes (%s), holding the batch and retrying: %s. %s",
                        exc.code,
                        exc.reply,
                        exc.advice,
                    )
                rt.redis_refusal = exc.code
                rt.counters[f"redis_refused_{exc.code}"] += 1
            elif rt.redis_ok:
                log.warning("redis unavailable, pausing batch: %s", exc)
            rt.redis_ok = False
            rt.counters["redis_batch_retries"] += 1

        async def write() -> None:
            await rt.store.write_lists(
                writes,
                now=time.time(),
                # positions are in this incarnation of the topic (counted again when new)
                count_topic=f"{rt.settings.topics.user_events}@{rt.processor.source_id}",
                half_life=rt.settings.recall.popularity_half_life_seconds,
                **marks,
            )

        retry_on = (*RETRYABLE, RedisRefused)
        await held(self.rebalancing, lambda e: isinstance(e, retry_on), retried)(write)
        if not rt.redis_ok:
            log_event("redis back", pending=len(writes), refused=rt.redis_refusal)
        rt.redis_ok = True
        rt.redis_refusal = None

    # -- dead letters ------------------------------------------------------------------
    def count_dead_letter(self, dl: DeadLetter) -> None:
        reason = dl.value["reason"]
        self.rt.dead_letters[reason] += 1
        src = dl.value["source"]
        fields: dict[str, Any] = {}
        if "error" in dl.value:
            err = dl.value["error"]
            fields = {"error": err["type"], "where": err["where"], "detail": err["message"][:200]}
        log_event(
            "dead letter",
            reason=reason,
            partition=src["partition"],
            offset=src["offset"],
            mode=self.rt.policy.mode,
            **fields,
        )

    def dead_letter_record(self, dl: DeadLetter) -> Out:
        return (self.dead_letters, None, dl.key, dl.encode())

    async def quarantine(self, record: RawRecord, exc: Exception) -> None:
        """A record whose effects cannot be written while others' can: dead-lettered."""
        dl = dead_letter(
            record,
            "processing_error",
            f"{type(exc).__name__} while writing its effects: {exc}",
            error=exc,
            max_bytes=self.rt.settings.worker.dead_letter_max_bytes,
        )
        self.count_dead_letter(dl)
        await self.publish_until_done([self.dead_letter_record(dl)])
        counters = self.rt.counters
        counters["events_done"] += 1
        counters["dead_letters"] += 1
        counters["processing_errors"] += 1

    # -- a batch -----------------------------------------------------------------------
    async def write_batch(
        self, records: list[RawRecord], result: BatchResult, started: float, waited: float | None
    ) -> None:
        """Every effect of a processed batch: table (changelog awaited), store lists,
        recommendations, dead letters and friend activity on the broker; then the
        counters and metrics that say the batch is done."""
        rt = self.rt
        counters = rt.counters
        counters["events_in"] += len(records)
        counters["events_applied"] += result.applied
        counters["events_duplicate"] += result.duplicates
        counters["lists_reemitted"] += result.reemitted
        counters["events_other_partitioner"] += result.other_partitioner
        for dl in result.dead_letters:
            self.count_dead_letter(dl)
        counters["processing_errors"] += len(result.errors)
        for user_id, record, exc in result.list_errors:
            counters["list_errors"] += 1
            log_event(
                "list failed, serving the degraded list",
                user_id=user_id,
                partition=record.partition,
                offset=record.offset,
                error=type(exc).__name__,
                detail=str(exc)[:200],
            )

        # The user's state: into the table's store, and its changelog record sent to the
        # partition of the user's own events, explicitly. Table.__setitem__ would send it
        # with send_soon and forget it; Faust flushes its producer before committing
        # offsets, but a record being handed from its buffer to the Kafka client at that
        # moment is in neither, so a commit could land before the state it covers (a
        # SIGKILL then lost the batch's events: the restarted worker resumed after them
        # from an older state). The records go out with the recommendations, a producer
        # batch per partition (a Faust send per record cost ~0.1 ms of the event loop
        # each), while Redis is written, and all are on the broker before the batch is
        # acknowledged (commit after effects).
        out: list[Out] = [
            self.state_record(user_id, state.to_bytes(), result.last_record[user_id].partition)
            for user_id, state in result.states.items()
        ]
        topic = self.recommendations
        out.extend(
            (topic, None, write.user_id.encode(), fastjson.dumps(doc))
            for _, write, doc in result.lists
        )
        out.extend(self.dead_letter_record(dl) for dl in result.dead_letters)
        # a like to the user's followers, a backfill to a new follower: keyed by the receiver
        activity = self.activity
        out.extend((activity, None, a.user.encode(), a.encode()) for a in result.forwards)
        counters["friend_activity_sent"] += len(result.forwards)
        published = asyncio.ensure_future(self.publish_until_done(out))
        dirty = set(result.dirty)
        clean = [uid for uid in result.states if uid not in dirty]
        try:
            await self.write_lists_until_done(
                [w for _, w, _ in result.lists],
                dirty=result.dirty,
                clean=[uid for uid in clean if uid in rt.dirty],
                counted=result.counted if rt.settings.degrade.shared_stats else (),
            )
        except BaseException:
            published.cancel()
            raise
        now = time.time()
        for uid in result.dirty:
            rt.dirty.setdefault(uid, now)
        for uid in clean:
            rt.dirty.pop(uid, None)
        await published
        counters["lists_written"] += len(result.lists)
        # only now are the batch's effects (table, Redis, topic) all done: waiters key on this
        counters["events_done"] += len(records)
        counters["lists_degraded"] += len(result.dirty)
        counters["dead_letters"] += len(result.dead_letters)
        rt.last_batch_at = time.time()
        stamps = [r.timestamp for r in records if r.timestamp]
        rt.metrics.observe_batch(
            len(records),
            time.perf_counter() - started,
            [rt.last_batch_at - r.timestamp for r in result.last_record.values() if r.timestamp],
            waited,
        )
        if stamps:
            rt.last_message_time = max(rt.last_message_time, max(stamps))
        for state in result.states.values():
            rt.last_event_time = max(rt.last_event_time, state.last_event_time)

    async def contained(
        self, apply: Callable[[list[RawRecord]], Awaitable[None]], records: list[RawRecord]
    ) -> None:
        """`apply` (process and write a batch), with a failure kept to the records that
        cause it: the core already quarantines a record it cannot use, so what reaches here
        is an effect that failed (a publish the broker refuses, an unexpected error while
        writing). The batch is then done again one record at a time; when some records
        pass, each record that still fails is dead-lettered with reason processing_error and
        the stream goes on. When none passes, the fault is the worker's, not the records' (a
        store misconfigured, a bug in writing the effects): nothing is dead-lettered, the
        batch is held and retried with backoff, as through a Redis outage, with the error on
        /health, /status/ and in the log, until it passes or a rebalance takes it. Nothing
        reaches Faust's agent supervisor (which would restart the agent on the same
        records); transient trouble is retried inside."""
        rt = self.rt
        # The common case first, with nothing of the retry machinery on the stack: the
        # records are decoded below here, and a JSON document nested near the recursion
        # limit must get the same verdict as it did with the agent doing this itself.
        try:
            await apply(records)
            rt.effects_error = None
            return
        except BatchAbandoned:
            raise
        except Exception as exc:
            failures = [exc]

        async def attempt() -> None:
            if failures:
                failed = failures.pop()
            else:
                try:
                    await apply(records)
                    return
                except BatchAbandoned:
                    raise
                except Exception as exc:
                    failed = exc
            rt.counters["batch_errors"] += 1
            log_event(
                "batch failed, retrying its records one at a time",
                records=len(records),
                error=type(failed).__name__,
                detail=str(failed)[:200],
            )
            passed, still = 0, []
            for record in records:
                try:
                    await apply([record])
                    passed += 1
                except BatchAbandoned:
                    raise
                except Exception as exc:
                    still.append((record, exc))
            if not passed and still:
                raise _NothingPassed(failed)
            for record, exc in still:
                await self.quarantine(record, exc)

        def holding(exc: BaseException) -> None:
            assert isinstance(exc, _NothingPassed)
            failed = exc.failed
            if rt.effects_error is None:
                log.error(
                    "no record of a batch of %d can be written (%s: %s): holding it and"
                    " retrying; this is the worker's fault, not the records' (see the"
                    " traceback above)",
                    len(records),
                    type(failed).__name__,
                    str(failed)[:200],
                    exc_info=failed,
                )
            rt.effects_error = f"{type(failed).__name__}: {str(failed)[:200]}"
            rt.counters["batch_holds"] += 1

        await held(self.rebalancing, lambda e: isinstance(e, _NothingPassed), holding)(attempt)
        rt.effects_error = None
