"""Builds the faust.App from settings; topics, tables and agents live in their own modules."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.services import WaitResults

from nearline_rec.commit_guard import CommitGuard
from nearline_rec.core.user_state import newest_states
from nearline_rec.kafka_clients import ssl_context
from nearline_rec.settings import KafkaSettings, Settings, WorkerSettings

# The Kafka clients' debug logs print every request, the SASL login with its password
# included, and kafka-python's clients their whole configuration (the password with it):
# those loggers stay at INFO even when the worker runs at debug.
for _name in ("aiokafka.conn", "kafka"):
    logging.getLogger(_name).setLevel(logging.INFO)

log = logging.getLogger("nearline.ingest")

_FAUST_WEB_FLAGS = ("WEB_TABLES_ENABLED", "WEB_ROUTER_ENABLED")


def broker_credentials(cfg: KafkaSettings) -> Any:
    ctx = ssl_context(cfg)
    if cfg.security_protocol.startswith("SASL"):
        assert cfg.sasl_username and cfg.sasl_password
        return faust.SASLCredentials(
            username=cfg.sasl_username,
            password=cfg.sasl_password.get_secret_value(),
            mechanism=cfg.sasl_mechanism,
            ssl_context=ctx,
        )
    if ctx is not None:
        return faust.SSLCredentials(ctx)
    return None


def broker_url(cfg: KafkaSettings) -> str:
    return ";".join(
        f"kafka://{hp.strip()}" for hp in cfg.bootstrap_servers.split(",") if hp.strip()
    )


class QuietWorker(faust.Worker):
    """Faust's worker without its terminal spinner. With the spinner, a worker logging at
    WARN or above sets the root logger to DEBUG, so every debug record of Faust and aiokafka
    (several per published message) is built and then dropped: ~3% of a busy worker's CPU."""

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None
        super().on_setup_root_logger(logger, level)


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Faust fixes fetch_max_wait_ms at 1500. The fetcher leaves a partition out of the
        # next fetch while its records wait in the stream buffer, so under steady load the
        # request often names only idle partitions (Faust's leader topic) and the broker
        # holds it the full 1.5 s while new events queue unfetched: measured p50 ~1.3 s
        # event-to-list at half the sustained rate, against ~0.2 s with a short wait.
        consumer._fetch_max_wait_ms = int(self.app.fetch_max_wait * 1000)
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    """Faust's consumer with the worker's commit guard (nearline_rec.commit_guard): positions are
    learned when the consumer seeks to the committed offsets, and no commit of a
    user-events partition goes past what the agent has processed."""

    def _new_consumer_thread(self) -> Any:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def wait_first(self, *coros: Any, timeout: Any = None) -> Any:
        """Faust's fetch loop hands each message to the streams with
        `wait_first(callback(message), suspend_flow.wait())`: four tasks, an asyncio.wait and
        three cancellations a message, ~40 us, a fifth of the worker's time. The callback
        almost always finishes in its first step (the stream's queue has room): run it as
        one task, and race it against the flow being suspended, as Faust does, only when it
        has not finished after that step."""
        if timeout is None and len(coros) == 2 and _is_flow_wait(coros[1], self):
            first = asyncio.ensure_future(coros[0])
            await asyncio.sleep(0)
            if first.done():
                coros[1].close()  # never started
                if self._stopped.is_set() or self._crashed.is_set():
                    return WaitResults([], [], True)
                return WaitResults([coros[0]], [first.result()], False)
            return await super().wait_first(first, coros[1])
        return await super().wait_first(*coros, timeout=timeout)

    async def on_partitions_assigned(self, assigned: Any, generation_id: int = 0) -> None:
        guard = self.app.guard
        if guard is not None:
            guard.on_assigned()
        await super().on_partitions_assigned(assigned, generation_id)

    async def perform_seek(self) -> None:
        await super().perform_seek()
        guard = self.app.guard
        if guard is not None:
            await guard.on_seek(self)
            log.info(
                "sought to committed offsets: read offsets %s, committed %s, frontier %s",
                {tp.partition: o for tp, o in self._read_offset.items() if tp.topic == guard.topic},
                {
                    tp.partition: o
                    for tp, o in self._committed_offset.items()
                    if tp.topic == guard.topic
                },
                guard.frontier.positions(),
            )

    async def _commit(self, offsets: Any) -> bool:
        guard = self.app.guard
        if guard is not None:
            offsets = guard.clamp_commit(offsets)
            if not offsets:
                return False
        return bool(await super()._commit(offsets))


def _is_flow_wait(coro: Any, consumer: Any) -> bool:
    """`coro` is `consumer.suspend_flow.wait()`, not yet started."""
    flow = getattr(consumer, "suspend_flow", None)
    code = getattr(getattr(type(flow), "wait", None), "__code__", None)
    return (
        asyncio.iscoroutine(coro)
        and getattr(coro, "cr_code", None) is code
        and getattr(coro, "cr_frame", None) is not None
        and coro.cr_frame.f_locals.get("self") is flow
    )


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class UserStateTable(faust.Table):
    """The user-state table: when recovery finds a user's state on two changelog partitions
    (its events moved to another partition when the topic grew), the newer copy wins."""

    def apply_changelog_batch(self, batch: Any) -> None:
        events = list(batch)
        keep = newest_states([(e.message.key, e.message.value) for e in events], self.get_state)
        super().apply_changelog_batch([e for i, e in enumerate(events) if i in keep])

    # Faust's RocksDB store picks the partition database of a read or a write from the
    # event being processed, and the worker's batches hold many partitions' users: these
    # name the partition (or search every database) instead. The memory store has one dict.
    def get_state(self, key: bytes) -> bytes | None:
        store = self.data
        if hasattr(store, "_get_bucket_for_key"):
            found = store._get_bucket_for_key(key)
            return None if found is None else found.value
        return store.get(key)

    def put_state(self, key: bytes, value: bytes, partition: int) -> None:
        store = self.data
        if hasattr(store, "_db_for_partition"):
            store._key_index[key] = partition
            store._db_for_partition(partition).put(key, value)
        else:
            store[key] = value


def rocksdb_options(w: WorkerSettings) -> dict[str, Any] | None:
    """Options of the user table's store: with rocksdb://, the read cache and write buffers
    of each partition's database bounded by the settings (None: the memory store)."""
    if not w.store.startswith("rocksdb:"):
        return None
    mb = 1024 * 1024
    return {
        "block_cache_size": w.rocksdb_block_cache_mb * mb,
        "write_buffer_size": w.rocksdb_write_buffer_mb * mb,
    }


class NearlineApp(faust.App):
    """faust.App whose consumer does not let the broker hold fetches for 1.5 s and never
    commits a user-events offset the agent has not processed (`guard`)."""

    fetch_max_wait: float = 1.5
    guard: CommitGuard | None = None

    def _new_transport(self) -> Any:
        url = self.conf.broker_consumer[0]
        if url.scheme not in ("kafka", "aiokafka"):
            return super()._new_transport()
        return _Transport(self.conf.broker_consumer, self)


def create_app(settings: Settings) -> faust.App:
    w = settings.worker
    # Faust creates only the last level of its data folder
    Path(w.data_dir).mkdir(parents=True, exist_ok=True)
    # Faust's APP_WEB_TABLES_ENABLED / APP_WEB_ROUTER_ENABLED would override the arguments
    # below: only NEARLINE_WORKER__FAUST_WEB_ENDPOINTS turns those endpoints on.
    faust_env = {k: v for k, v in os.environ.items() if not k.endswith(_FAUST_WEB_FLAGS)}
    app = NearlineApp(
        w.app_id,
        env=faust_env,
        broker=broker_url(settings.kafka),
        broker_credentials=broker_credentials(settings.kafka),
        store=w.store,
        topic_partitions=settings.topics.partitions,
        topic_replication_factor=settings.topics.replication_factor,
        # Lists, lag and state are ours to report; keep Faust's own output quiet.
        web_host=w.web_host,
        # web_host only names the server in URLs; Faust binds web_bind (default 0.0.0.0)
        web_bind=w.web_host,
        web_port=w.web_port,
        web_in_thread=False,
        # Faust serves its tables' contents at /table/ and the workers' URLs at /router/,
        # with no token check; on by default in Faust, off here unless asked for.
        web_tables_enabled=w.faust_web_endpoints,
        web_router_enabled=w.faust_web_endpoints,
        Worker=QuietWorker,
        processing_guarantee="at_least_once",
        # One agent instance per partition set keeps per-user order (faust #606: no concurrency).
        stream_buffer_maxsize=max(4 * w.batch_size, 1000),
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        # A killed worker holds its partitions until its session expires (Faust: 60 s);
        # heartbeats come from the consumer thread, so a busy batch does not miss them.
        broker_session_timeout=w.session_timeout,
        broker_heartbeat_interval=min(3.0, w.session_timeout / 3),
        consumer_auto_offset_reset="earliest",
        # how soon partitions added to user-events are seen and assigned (Faust: 5 minutes)
        consumer_metadata_max_age_ms=int(w.metadata_max_age * 1000),
        producer_metadata_max_age_ms=int(w.metadata_max_age * 1000),
        table_standby_replicas=0,
        autodiscover=False,
        # not the working directory: a checkout should not fill with <app-id>-data folders
        datadir=f"{w.data_dir}/{w.app_id}",
    )
    app.fetch_max_wait = w.fetch_max_wait
    app.guard = CommitGuard(
        settings.topics.user_events, settings.kafka, rebalancing=lambda: bool(app.rebalancing)
    )
    return app
