"""The gap filler's range reads (nearline_rec.kafka_clients.RangeReader) on the real broker."""

from __future__ import annotations

import asyncio

import pytest

from nearline_rec.kafka_clients import RangeReader
from nearline_rec.settings import KafkaSettings
from tests.integration.conftest import KAFKA

pytestmark = pytest.mark.integration


@pytest.fixture
def topic(run_id: str):
    """Two partitions: 30 records (keyed k0..k29) on partition 1, none on partition 0."""
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    name = f"{run_id}-ranges"
    admin = KafkaAdminClient(bootstrap_servers=KAFKA)
    admin.create_topics([NewTopic(name, num_partitions=2, replication_factor=1)])
    producer = KafkaProducer(bootstrap_servers=KAFKA, acks="all")
    for i in range(30):
        producer.send(name, key=f"k{i}".encode(), value=f"v{i}".encode(), partition=1)
    producer.flush(timeout=30)
    producer.close()
    try:
        yield name
    finally:
        admin.delete_topics([name])
        admin.close()


def _read(reader: RangeReader, *args: object) -> list:
    async def go() -> list:
        try:
            return await reader.read(*args)
        finally:
            await reader.close()

    return asyncio.run(go())


def test_reads_exactly_the_range_in_order_with_keys_values_and_times(topic: str):
    got = _read(RangeReader(KafkaSettings(bootstrap_servers=KAFKA)), topic, 1, 7, 19)
    assert [r.offset for r in got] == list(range(7, 19))
    assert [r.key for r in got] == [f"k{i}".encode() for i in range(7, 19)]
    assert [r.value for r in got] == [f"v{i}".encode() for i in range(7, 19)]
    assert all(r.topic == topic and r.partition == 1 for r in got)
    assert all(r.timestamp is not None and r.timestamp > 1e9 for r in got)  # seconds


def test_a_range_ending_at_the_last_record_and_an_empty_range(topic: str):
    reader = RangeReader(KafkaSettings(bootstrap_servers=KAFKA))
    assert [r.offset for r in _read(reader, topic, 1, 25, 30)] == [25, 26, 27, 28, 29]
    assert _read(reader, topic, 1, 5, 5) == []


def test_a_range_past_the_end_of_the_log_times_out_instead_of_hanging(topic: str):
    reader = RangeReader(KafkaSettings(bootstrap_servers=KAFKA), timeout_s=1.5)
    with pytest.raises(TimeoutError, match=r"offsets 0-2 not readable within 1.5s"):
        _read(reader, topic, 0, 0, 3)  # partition 0 has no records
