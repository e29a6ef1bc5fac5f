"""Plain Kafka clients from settings: kafka-python for admin/CLI, aiokafka for the follower."""

from __future__ import annotations

import logging
import ssl
from typing import Any

from nearline_rec.errors import NearlineError
from nearline_rec.settings import KafkaSettings, Settings


def ssl_context(cfg: KafkaSettings) -> ssl.SSLContext | None:
    if cfg.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    ctx = ssl.create_default_context(cafile=cfg.ssl_cafile)
    if cfg.ssl_certfile:
        ctx.load_cert_chain(cfg.ssl_certfile, cfg.ssl_keyfile)
    return ctx


log = logging.getLogger(__name__)


def client_kwargs(cfg: KafkaSettings) -> dict[str, Any]:
    """Connection settings understood by both kafka-python and aiokafka."""
    kw: dict[str, Any] = {
        "bootstrap_servers": [hp.strip() for hp in cfg.bootstrap_servers.split(",") if hp.strip()],
        "security_protocol": cfg.security_protocol,
    }
    ctx = ssl_context(cfg)
    if ctx is not None:
        kw["ssl_context"] = ctx
    if cfg.security_protocol.startswith("SASL"):
        assert cfg.sasl_password is not None
        kw["sasl_mechanism"] = cfg.sasl_mechanism
        kw["sasl_plain_username"] = cfg.sasl_username
        kw["sasl_plain_password"] = cfg.sasl_password.get_secret_value()
    return kw


def changelog_topic(settings: Settings) -> str:
    return f"{settings.worker.app_id}-user-state-changelog"


def topic_specs(settings: Settings) -> list[tuple[str, int, dict[str, str]]]:
    """(name, partitions, configs) of every topic the worker reads or writes."""
    t = settings.topics
    n = t.partitions
    base = (
        {} if t.min_insync_replicas is None else {"min.insync.replicas": str(t.min_insync_replicas)}
    )
    compacted = {**base, "cleanup.policy": "compact"}
    return [
        (t.user_events, n, base),
        (t.recommendations, n, base),
        (t.user_events_dlq, n, base),
        (t.item_updates, 1, compacted),
        (t.item_updates_dlq, 1, base),
        (changelog_topic(settings), n, compacted),
        (t.user_relations, n, compacted),
        (t.friend_activity, n, {}),
    ]


class TopicError(NearlineError, RuntimeError):
    """A topic exists with a layout the worker cannot use."""


def check_broker(cfg: KafkaSettings, timeout_s: float = 10.0) -> None:
    """Connect once to the first bootstrap server that answers, TLS handshake and SASL
    login included, and raise SettingsError with one clear line when the broker refuses
    the credentials or the certificate. (The clients themselves only report "unable to
    bootstrap" after their timeout.) An unreachable broker is left to the clients."""
    import asyncio

    try:
        asyncio.get_running_loop()
        return  # inside a running loop (not the CLI): the clients report for themselves
    except RuntimeError:
        pass
    quiet = logging.getLogger("aiokafka.conn")  # its "password in the clear" warning: once
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        for hostport in client_kwargs(cfg)["bootstrap_servers"]:
            if _probe(cfg, hostport, timeout_s):
                return
    finally:
        quiet.setLevel(level)


def _probe(cfg: KafkaSettings, hostport: str, timeout_s: float) -> bool:
    """True when the broker took the connection, False when it does not answer;
    SettingsError when it refused the credentials or the certificate."""
    import asyncio
    import ssl

    from aiokafka.conn import create_conn
    from aiokafka.errors import KafkaError as AIOKafkaError

    from nearline_rec.settings import SettingsError

    kw = client_kwargs(cfg)
    del kw["bootstrap_servers"]
    host, port = hostport.rsplit(":", 1)

    async def connect() -> None:
        conn = await asyncio.wait_for(
            create_conn(host, int(port), request_timeout_ms=int(timeout_s * 1000), **kw),
            timeout_s,
        )
        conn.close()

    try:
        asyncio.run(connect())
        return True
    except ssl.SSLError as exc:
        reason = getattr(exc, "reason", None) or exc.__class__.__name__
        detail = getattr(exc, "verify_message", None) or str(exc)
        raise SettingsError(
            f"TLS handshake with Kafka at {hostport} failed ({reason}: {detail}); check "
            "NEARLINE_KAFKA__SSL_CAFILE and NEARLINE_KAFKA__SECURITY_PROTOCOL"
        ) from None
    except AIOKafkaError as exc:
        if "Sasl" in type(exc).__name__ or "Authentication" in str(exc):
            raise SettingsError(
                f"Kafka at {hostport} refused SASL user {cfg.sasl_username!r} "
                f"({cfg.sasl_mechanism}): {exc}; check NEARLINE_KAFKA__SASL_USERNAME and "
                "NEARLINE_KAFKA__SASL_PASSWORD"
            ) from None
        return False
    except (OSError, TimeoutError):
        return False  # this server does not answer; try the next one


def topic_id(settings: Settings, name: str, timeout_s: float = 15.0) -> str:
    """The broker's id of topic `name` (a new one each time the topic is made), "" when the
    topic does not exist or the broker does not say (Kafka before 2.8)."""
    return describe_topic(settings, name, timeout_s)[0]


def _admin(settings: Settings, timeout_s: float) -> Any:
    from kafka.admin import KafkaAdminClient

    return KafkaAdminClient(
        client_id=f"{settings.worker.app_id}-admin",
        request_timeout_ms=int(timeout_s * 1000),
        **client_kwargs(settings.kafka),
    )


def _topic_id(described: list[dict[str, Any]], name: str) -> tuple[str, int]:
    for d in described:
        if d.get("name", d.get("topic")) == name and not d.get("error_code"):
            return str(d.get("topic_id") or ""), len(d.get("partitions") or ())
    return "", 0


def describe_topic(settings: Settings, name: str, timeout_s: float = 15.0) -> tuple[str, int]:
    """(topic id, partition count) of topic `name`; ("", 0) when it does not exist."""
    admin = _admin(settings, timeout_s)
    try:
        return _topic_id(admin.describe_topics([name]), name)
    finally:
        admin.close()


class TopicDescriber:
    """`describe_topic` with one admin client kept between calls (the worker asks after
    every assignment); a call that fails drops the client, the next makes a new one.
    Blocking: called on a thread, one call at a time."""

    def __init__(self, settings: Settings, timeout_s: float = 15.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._client: Any = None

    def describe(self, name: str) -> tuple[str, int]:
        if self._client is None:
            self._client = _admin(self.settings, self.timeout_s)
        try:
            return _topic_id(self._client.describe_topics([name]), name)
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            client.close()

    def abandon(self) -> None:
        """Forget the client without closing it (a call on it has not returned)."""
        self._client = None


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """Create missing topics with the configured partitions; return the names created."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    check_broker(settings.kafka)  # wrong credentials or certificate: one clear line, at once
    admin = KafkaAdminClient(
        client_id=f"{settings.worker.app_id}-admin",
        request_timeout_ms=int(timeout_s * 1000),
        **client_kwargs(settings.kafka),
    )
    try:
        existing = set(admin.list_topics())
        created = []
        new = []
        for name, partitions, configs in topic_specs(settings):
            if name in existing:
                continue
            new.append(
                NewTopic(
                    name, partitions, settings.topics.replication_factor, topic_configs=configs
                )
            )
        if new:
            try:
                admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
            except TopicAlreadyExistsError:
                pass  # another worker won the race
            created = [t.name for t in new]
        # friend-activity reaches the owner of a user only with the same partition count
        together = [changelog_topic(settings), settings.topics.friend_activity]
        described = admin.describe_topics([settings.topics.user_events, *together])
        counts = {d.get("name", d.get("topic")): len(d["partitions"]) for d in described}
        a = counts.get(settings.topics.user_events)
        for name in together:
            b = counts.get(name)
            if a is not None and b is not None and a != b:
                raise TopicError(
                    f"{settings.topics.user_events} has {a} partitions but {name} has {b};"
                    f" they must match: `nearline grow-partitions {max(a, b)}` grows both"
                )
        return created
    finally:
        admin.close()


def grow_partitions(settings: Settings, total: int, timeout_s: float = 30.0) -> dict[str, int]:
    """Grow user-events, the user-state changelog and the friend topics together to `total`
    partitions (they must match: a user's state lives in the changelog partition of its
    events, and its friend activity comes on the same partition). Returns the partition
    counts before. Kafka cannot shrink a topic: `total` must be larger."""
    from kafka.admin import KafkaAdminClient, NewPartitions

    t = settings.topics
    names = [t.user_events, changelog_topic(settings), t.friend_activity, t.user_relations]
    admin = KafkaAdminClient(
        client_id=f"{settings.worker.app_id}-admin",
        request_timeout_ms=int(timeout_s * 1000),
        **client_kwargs(settings.kafka),
    )
    try:
        missing = [n for n in names if n not in set(admin.list_topics())]
        if missing:
            raise TopicError(f"{', '.join(missing)} not found: run `nearline init-topics` first")
        described = admin.describe_topics(names)
        before = {d.get("name", d.get("topic")): len(d["partitions"]) for d in described}
        if total <= max(before.values()) and len(set(before.values())) == 1:
            raise TopicError(
                f"{names[0]} already has {before[names[0]]} partitions; Kafka can only add"
                " partitions (give a larger number)"
            )
        if total < max(before.values()):
            raise TopicError(f"partitions now {before}; give at least {max(before.values())}")
        grow = {n: NewPartitions(total_count=total) for n in names if before[n] < total}
        admin.create_partitions(grow, timeout_ms=int(timeout_s * 1000))
        return before
    finally:
        admin.close()


class RangeReader:
    """Reads a range of offsets of one partition with a group-less aiokafka consumer (the
    worker's gap filler, nearline_rec.commit_guard); one connection, reused."""

    def __init__(self, cfg: KafkaSettings, timeout_s: float = 15.0) -> None:
        self.cfg = cfg
        self.timeout_s = timeout_s
        self._consumer: Any = None

    async def _client(self) -> Any:
        if self._consumer is None:
            from aiokafka import AIOKafkaConsumer

            consumer = AIOKafkaConsumer(
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                **client_kwargs(self.cfg),
            )
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def read(self, topic: str, partition: int, start: int, end: int) -> list[Any]:
        """Records with start <= offset < end, in order, as nearline_rec.processing.RawRecord.
        Offsets without a record (transaction markers) are simply absent; TimeoutError
        when the range cannot be read within timeout_s."""
        import asyncio

        from aiokafka import TopicPartition

        from nearline_rec.processing import RawRecord

        if end <= start:
            return []
        consumer = await self._client()
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, start)
        out: list[RawRecord] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while True:
            batch = await consumer.getmany(tp, timeout_ms=200, max_records=min(end - start, 5000))
            for m in batch.get(tp, ()):
                if m.offset >= end:
                    return out
                if m.offset >= start:
                    out.append(
                        RawRecord(
                            topic=m.topic,
                            partition=m.partition,
                            offset=m.offset,
                            key=m.key,
                            value=m.value,
                            timestamp=m.timestamp / 1000.0 if m.timestamp is not None else None,
                        )
                    )
            if await consumer.position(tp) >= end:
                return out
            if loop.time() > deadline:
                raise TimeoutError(
                    f"{topic}[{partition}]: offsets {start}-{end - 1} not readable within "
                    f"{self.timeout_s:g}s (read {len(out)})"
                )

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


async def send_in_batches(
    producer: Any, records: list[tuple[str, int | None, bytes, bytes]]
) -> list[tuple[str, int, int, Any]]:
    """Publish (topic, partition or None for the key's, key, value) records with one
    producer batch per partition (aiokafka `create_batch`/`send_batch`) instead of a
    `send` per record; returns (topic, partition, records, delivery future) per batch.

    Keyed records go where `send` would put them (the producer's key partitioner over all
    of the topic's partitions); each partition's records keep their order."""
    by_tp: dict[tuple[str, int], list[tuple[bytes, bytes]]] = {}
    partitions: dict[str, list[int]] = {}
    for topic, partition, key, value in records:
        if partition is None:
            if topic not in partitions:
                partitions[topic] = sorted(await producer.partitions_for(topic))
            every = partitions[topic]
            partition = producer._partitioner(key, every, every)
        by_tp.setdefault((topic, partition), []).append((key, value))
    out: list[tuple[str, int, int, Any]] = []
    for (topic, partition), items in by_tp.items():
        batch, n = producer.create_batch(), 0
        for key, value in items:
            if batch.append(key=key, value=value, timestamp=None) is not None:
                n += 1
                continue
            if n:  # full: send it, go on in a new one
                out.append(
                    (
                        topic,
                        partition,
                        n,
                        await producer.send_batch(batch, topic, partition=partition),
                    )
                )
                batch, n = producer.create_batch(), 0
                if batch.append(key=key, value=value, timestamp=None) is not None:
                    n = 1
                    continue
            # larger than a batch: on its own, as `send` does (it enforces max_request_size)
            fut = await producer.send(topic, value, key=key, partition=partition)
            out.append((topic, partition, 1, fut))
        if n:
            out.append(
                (topic, partition, n, await producer.send_batch(batch, topic, partition=partition))
            )
    return out
