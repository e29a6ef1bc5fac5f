"""The ingest agent's batch publisher (nearline_rec.kafka_clients.send_in_batches) on the real
broker."""

from __future__ import annotations

import asyncio

import pytest

from nearline_rec.kafka_clients import send_in_batches
from tests.integration.conftest import KAFKA

pytestmark = pytest.mark.integration


@pytest.fixture
def topics(run_id: str):
    from kafka.admin import KafkaAdminClient, NewTopic

    names = (f"{run_id}-batched", f"{run_id}-per-record")
    admin = KafkaAdminClient(bootstrap_servers=KAFKA)
    admin.create_topics([NewTopic(n, num_partitions=4, replication_factor=1) for n in names])
    try:
        yield names
    finally:
        admin.delete_topics(list(names))
        admin.close()


def _read_all(topic: str, expected: int) -> list:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic, bootstrap_servers=KAFKA, auto_offset_reset="earliest", consumer_timeout_ms=5000
    )
    got = []
    for record in consumer:
        got.append(record)
        if len(got) >= expected:
            break
    consumer.close()
    return got


def test_keyed_records_land_where_send_puts_them_in_order_and_large_ones_too(topics):
    batched, per_record = topics
    # 300 records of 40 users (several batches a partition at ~1 KB each), one record larger
    # than a producer batch, and records for an explicit partition.
    records = [
        (batched, None, f"user-{i % 40}".encode(), f"{i:05d}".encode() * 200) for i in range(300)
    ]
    records.insert(150, (batched, None, b"user-7", b"L" * 40_000))
    records += [(batched, 2, f"fixed-{i}".encode(), f"{i}".encode()) for i in range(20)]

    async def go() -> tuple[list, list]:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=KAFKA, max_request_size=1_000_000)
        await producer.start()
        try:
            sent = await send_in_batches(producer, records)
            metas = [await fut for _, _, _, fut in sent]
            # the same keys through send(): the partition the key partitioner picks
            singles = [
                await (await producer.send(per_record, value=b"x", key=key))
                for key in sorted({r[2] for r in records if r[1] is None})
            ]
            return sent, metas + singles
        finally:
            await producer.stop()

    sent, metas = asyncio.run(go())
    assert sum(n for _, _, n, _ in sent) == len(records)
    assert len(sent) > 4  # more than one batch on some partition
    got = _read_all(batched, len(records))
    assert len(got) == len(records)
    assert all(m.offset >= 0 for m in metas)  # every delivery acknowledged
    singles = _read_all(per_record, 40)
    partition_of = {r.key: r.partition for r in singles}
    for r in got:
        if r.key.startswith(b"fixed-"):
            assert r.partition == 2
        else:
            assert r.partition == partition_of[r.key], r.key
    # each partition keeps the order the records were given in
    for p in range(4):
        on_p = [(r.key, r.value) for r in sorted(got, key=lambda r: r.offset) if r.partition == p]
        given = [
            (k, v)
            for t, part, k, v in records
            if (part if part is not None else partition_of[k]) == p
        ]
        assert on_p == given
