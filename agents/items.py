"""item-updates follower: every worker reads every partition (no group) into its catalog."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer

from nearline_rec.composition import app, counting_crashes, items_dlq_topic, runtime, settings
from nearline_rec.core.catalog import ItemMeta
from nearline_rec.core.events import InvalidRecord, ItemUpdate
from nearline_rec.heap import freeze_heap
from nearline_rec.kafka_clients import client_kwargs
from nearline_rec.processing import RawRecord, dead_letter
from nearline_rec.records import decode_item_update
from nearline_rec.runtime import log_event
from nearline_rec.storage.redis_client import UNAVAILABLE

log = logging.getLogger("nearline.items")


def item_meta(u: ItemUpdate | ItemMeta) -> dict[str, Any]:
    return {
        "title": u.title,
        "genres": list(u.genres),
        "year": u.year,
        "recommendable": u.recommendable,
        "release_ts": u.release_ts,
    }


async def mirror_catalog(chunk: int = 2000) -> int:
    """Write the whole catalogue to the item mirror (after Redis lost its data: the mirror
    gives readers titles and retirements, and its write interns the item codes again).
    Version 0: an item already mirrored from its update keeps that newer copy."""
    catalog = runtime().recommender.catalog
    live = catalog.live_keys()
    for start in range(0, len(live), chunk):
        keys = live[start : start + chunk]
        vectors = catalog.vectors(keys)
        upserts = []
        for key, vec in zip(keys.tolist(), vectors, strict=True):
            m = catalog.meta(key)
            upserts.append((m.item_id, 0, item_meta(m), vec if catalog.has_vector(key) else None))
        await runtime().store.write_items(upserts)
        await asyncio.sleep(0)  # let batches run between chunks
    return len(live)


async def apply_records(records: list[RawRecord]) -> None:
    """Decode a batch of item-updates records and apply them in offset order. A record the
    catalog raises on is dead-lettered (processing_error) and the rest still apply."""
    catalog = runtime().recommender.catalog
    upserts: list[tuple[ItemUpdate, RawRecord]] = []
    mirror_up: list[tuple[str, int, dict[str, Any], Any]] = []
    mirror_del: list[tuple[str, int]] = []
    letters: list[tuple[str, Any]] = []

    def quarantine(rec: RawRecord, exc: Exception, doing: str) -> None:
        dl = dead_letter(
            rec,
            "processing_error",
            f"{type(exc).__name__} while {doing}: {exc}",
            error=exc,
            max_bytes=settings.worker.dead_letter_max_bytes,
        )
        letters.append(("item_processing_error", dl))
        runtime().counters["processing_errors"] += 1
        log_event(
            "item dead letter",
            reason="processing_error",
            offset=rec.offset,
            error=type(exc).__name__,
            detail=str(exc)[:200],
        )

    def flush_upserts() -> None:
        if not upserts:
            return
        try:
            catalog.upsert_many([u for u, _ in upserts])
        except Exception:  # find the update at fault: one at a time
            for update, rec in upserts:
                try:
                    catalog.upsert_many([update])
                except Exception as exc:
                    quarantine(rec, exc, "adding the item to the catalog")
                    mirror_up[:] = [m for m in mirror_up if m[1] != rec.offset]
        upserts.clear()

    for rec in records:
        try:
            update = decode_item_update(rec.key, rec.value, dim=settings.items.embedding_dim)
        except InvalidRecord as exc:
            dl = dead_letter(
                rec, exc.reason, exc.detail, max_bytes=settings.worker.dead_letter_max_bytes
            )
            letters.append((f"item_{exc.reason}", dl))
            continue
        except Exception as exc:
            quarantine(rec, exc, "decoding the item update")
            continue
        if update.op == "delete":
            flush_upserts()  # keep order: an upsert then a delete of one item must end deleted
            try:
                catalog.remove(update.item_id)
            except Exception as exc:
                quarantine(rec, exc, "removing the item from the catalog")
                continue
            mirror_del.append((update.item_id, rec.offset))
        else:
            upserts.append((update, rec))
            mirror_up.append((update.item_id, rec.offset, item_meta(update), update.embedding))
        runtime().counters["item_updates"] += 1
    flush_upserts()
    if runtime().catalog_ready.is_set():  # live retirements: the lists holding them are redone
        retired = [item for item, _ in mirror_del]
        retired += [item for item, _, meta, _ in mirror_up if not meta["recommendable"]]
        runtime().retired.update(retired)
    for counter, dl in letters:
        runtime().dead_letters[counter] += 1
        await items_dlq_topic.send(key=dl.key, value=dl.encode())
    try:
        await runtime().store.write_items(mirror_up, mirror_del)
    except UNAVAILABLE as exc:
        # The catalog in memory is what serves; the Redis mirror catches up on the next update.
        runtime().counters["item_mirror_failures"] += 1
        log.warning("item mirror to redis failed: %s", exc)


@app.task
async def follow_items() -> None:
    await counting_crashes("items", _follow_items)


async def _follow_items() -> None:
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
        ready = runtime().catalog_ready
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
            if ready.is_set() and batch:
                runtime().calibration.maybe_start()  # in the background once enough changed
            if not ready.is_set():
                positions = {tp: await consumer.position(tp) for tp in tps}
                if all(positions[tp] >= end[tp] for tp in tps):
                    runtime().recommender.catalog.reindex()
                    # Calibrated on a thread before events are scored (the loop stays free).
                    await runtime().calibration.run("start")
                    ready.set()
                    cat = runtime().recommender.catalog
                    log_event(
                        "catalog ready",
                        items=len(cat),
                        index="lsh" if cat.uses_lsh else "exact",
                        frozen_objects=freeze_heap(),
                    )
    finally:
        await consumer.stop()
