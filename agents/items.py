"""item-updates follower: every worker reads every partition (no group) into its catalog."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer

from app.core.events import InvalidRecord, ItemUpdate, decode_item_update
from app.kafka_clients import client_kwargs
from app.processing import RawRecord, dead_letter
from app.runtime import app, items_dlq_topic, log_event, runtime, settings
from app.storage.redis_store import RETRYABLE

log = logging.getLogger("nearline.items")


def item_meta(u: ItemUpdate) -> dict[str, Any]:
    return {
        "title": u.title,
        "genres": list(u.genres),
        "year": u.year,
        "recommendable": u.recommendable,
        "release_ts": u.release_ts,
    }


async def apply_records(records: list[RawRecord]) -> None:
    """Decode a batch of item-updates records and apply them in offset order."""
    catalog = runtime.recommender.catalog
    upserts: list[ItemUpdate] = []
    mirror_up: list[tuple[str, int, dict[str, Any], Any]] = []
    mirror_del: list[tuple[str, int]] = []

    def flush_upserts() -> None:
        if upserts:
            catalog.upsert_many(upserts)
            upserts.clear()

    for rec in records:
        try:
            update = decode_item_update(rec.key, rec.value, dim=settings.items.embedding_dim)
        except InvalidRecord as exc:
            dl = dead_letter(rec, exc.reason, exc.detail)
            runtime.dead_letters[f"item_{exc.reason}"] += 1
            await items_dlq_topic.send(key=dl.key, value=dl.encode())
            continue
        if update.op == "delete":
            flush_upserts()  # keep order: an upsert then a delete of one item must end deleted
            catalog.remove(update.item_id)
            mirror_del.append((update.item_id, rec.offset))
        else:
            upserts.append(update)
            mirror_up.append((update.item_id, rec.offset, item_meta(update), update.embedding))
        runtime.counters["item_updates"] += 1
    flush_upserts()
    try:
        await runtime.store.write_items(mirror_up, mirror_del)
    except RETRYABLE as exc:
        # The catalog in memory is what serves; the Redis mirror catches up on the next update.
        runtime.counters["item_mirror_failures"] += 1
        log.warning("item mirror to redis failed: %s", exc)


@app.task
async def follow_items() -> None:
    topic = settings.topics.item_updates
    # No group id: every worker is assigned every partition and reads from the start.
    consumer = AIOKafkaConsumer(
        topic,
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="earliest",
        **client_kwargs(settings.kafka),
    )
    await consumer.start()
    try:
        tps = sorted(consumer.assignment())
        while not tps:
            log_event("waiting for topic", topic=topic)
            await asyncio.sleep(1.0)
            tps = sorted(consumer.assignment())
        end = await consumer.end_offsets(tps)
        log_event("catalog recovery", topic=topic, records=sum(end.values()))
        ready = runtime.catalog_ready
        while True:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for tp, msgs in batch.items():
                await apply_records(
                    [
                        RawRecord(
                            tp.topic,
                            tp.partition,
                            m.offset,
                            m.key,
                            m.value,
                            m.timestamp / 1000 if m.timestamp else None,
                        )
                        for m in msgs
                    ]
                )
            if not ready.is_set():
                positions = {tp: await consumer.position(tp) for tp in tps}
                if all(positions[tp] >= end[tp] for tp in tps):
                    runtime.recommender.catalog.reindex()
                    ready.set()
                    cat = runtime.recommender.catalog
                    log_event(
                        "catalog ready", items=len(cat), index="lsh" if cat.uses_lsh else "exact"
                    )
    finally:
        await consumer.stop()
