"""A `WorkerStore` in memory: the same versioned, idempotent writes as the Redis store, kept
in dicts (unit tests and the agent test tier: no Redis). Lists are kept as written."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from nearline_rec.core.popularity import CountedEvent, ItemCount
from nearline_rec.storage import keys
from nearline_rec.storage.store import ItemUpsert, ListWrite, TitleSource


class MemoryStore:
    """The worker's store in this process (nearline_rec.storage.store.WorkerStore)."""

    def __init__(self, key_prefix: str = "nearline") -> None:
        self.prefix = key_prefix
        self.errors = 0
        self.retries = 0
        self.records: dict[str, ListWrite] = {}
        """The newest write of each user's record."""
        self.shared: dict[str, dict[str, Any]] = {}
        """Shared lists by their Redis key (popular, cold start, per genre)."""
        self.items: dict[str, tuple[int, dict[str, Any], np.ndarray | None]] = {}
        self.dirty: dict[str, float] = {}
        self.counts: dict[str, ItemCount] = {}
        self.counted: dict[str, int] = {}
        """Per source topic and partition, the last offset counted (each event once)."""
        self.changed: dict[str, int] = {}
        self.sequence = 0
        self.experiments: dict[str, Counter[str]] = {}
        self.override: str | None = None
        self.rebuild: str | None = None
        self.epoch: str | None = "memory"

    async def write_lists(
        self,
        writes: Sequence[ListWrite],
        *,
        dirty: Sequence[str] = (),
        clean: Sequence[str] = (),
        now: float = 0.0,
        rewrite: bool = False,
        counted: Sequence[CountedEvent] = (),
        count_topic: str = "",
        half_life: float = 0.0,
    ) -> list[bool]:
        if counted:
            self._count(counted, count_topic, half_life)
        for user_id in dirty:
            self.dirty.setdefault(user_id, now)
        for user_id in clean:
            self.dirty.pop(user_id, None)
        out = []
        for w in writes:
            cur = self.records.get(w.user_id)
            newer = cur is None or w.version > cur.version or (rewrite and w.version == cur.version)
            if newer:
                self.records[w.user_id] = w
            out.append(newer)
        return out

    def _count(self, counted: Sequence[CountedEvent], topic: str, half_life: float) -> None:
        self.sequence += 1
        for c in sorted(counted, key=lambda c: (c.partition, c.offset)):
            field = f"{topic}|{c.partition}"
            if c.offset <= self.counted.get(field, -1):
                continue  # counted by an earlier try of the same batch
            self.counted[field] = c.offset
            cur = self.counts.get(c.item_id, ItemCount(0.0, c.ts))
            self.counts[c.item_id] = cur.plus(c.weight, c.ts, c.rating, half_life)
            self.changed[c.item_id] = self.sequence

    async def read_list(self, user_id: str, *, titles: TitleSource = None) -> dict[str, Any] | None:
        w = self.records.get(user_id)
        if w is None:
            return None
        value = copy.deepcopy(w.value)
        for item in value.get("items", ()):
            title = None
            if callable(titles):
                title = titles(item["item_id"])
            elif titles == "mirror" and item["item_id"] in self.items:
                title = self.items[item["item_id"]][1].get("title")
            if title is not None:
                item["title"] = title
        return value

    async def read_shared_lists(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        return (
            self.shared.get(keys.popular_list(self.prefix)),
            self.shared.get(keys.cold_start_list(self.prefix)),
        )

    async def write_shared_lists(self, lists: dict[str, dict[str, Any]]) -> None:
        self.shared.update(copy.deepcopy(lists))

    async def write_items(
        self, upserts: Sequence[ItemUpsert], deletes: Sequence[tuple[str, int]] = ()
    ) -> None:
        for item_id, version, meta, vec in upserts:
            if version > self.items.get(item_id, (-1, {}, None))[0] or version == 0:
                self.items[item_id] = (version, dict(meta), vec)
        for item_id, version in deletes:
            if version > self.items.get(item_id, (-1, {}, None))[0]:
                self.items[item_id] = (version, {"recommendable": False, "deleted": True}, None)

    async def read_control(self) -> tuple[str | None, str | None, str | None]:
        return self.override, self.epoch, self.rebuild

    def registry_lost(self, epoch: str | None) -> bool:
        return False  # nothing of this store is lost while the process lives

    def forget_codes(self) -> None:
        return None  # ids are kept as they are: no codes to forget

    async def read_counts(self, after: int) -> tuple[int, dict[str, ItemCount]]:
        return self.sequence, {i: self.counts[i] for i, s in self.changed.items() if s > after}

    async def dirty_users(self, limit: int = 100_000) -> list[str]:
        return sorted(self.dirty, key=self.dirty.__getitem__)[:limit]

    async def add_experiment_counts(self, experiment: str, delta: dict[str, int]) -> None:
        self.experiments.setdefault(experiment, Counter()).update(delta)

    async def close(self) -> None:
        return None
