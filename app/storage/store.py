"""What the worker needs of its store (`WorkerStore`), implemented by the Redis store
(app/storage/redis_store.py) and the in-memory one (app/storage/memory_store.py, unit and
agent tests); and the write it takes (`ListWrite`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from nearline_rec.core.popularity import CountedEvent, ItemCount

TitleSource = Callable[[str], str | None] | Literal["mirror"] | None


@dataclass(frozen=True, slots=True)
class ListWrite:
    user_id: str
    version: int
    value: dict[str, Any]
    embedding: np.ndarray | None = None
    n_events: int = 0
    event_time: float = 0.0


def encode_vector(vec: np.ndarray) -> bytes:
    return np.asarray(vec, dtype="<f4").tobytes()


def decode_vector(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype="<f4").copy()


ItemUpsert = tuple[str, int, dict[str, Any], np.ndarray | None]
"""(item id, version = item-updates offset, meta, embedding or None)."""


class WorkerStore(Protocol):
    """The worker's store: users' records and lists, the shared lists, the item mirror,
    the recompute set, the shared item statistics, the control keys. Every write is
    idempotent (versioned), so a batch retried or redone writes the same state."""

    errors: int
    """Operations that failed after the store's own retries."""
    retries: int
    """Retries inside the store."""

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
    ) -> list[bool]: ...

    async def read_list(
        self, user_id: str, *, titles: TitleSource = None
    ) -> dict[str, Any] | None: ...

    async def read_shared_lists(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(popular list, cold-start list)."""
        ...

    async def write_shared_lists(self, lists: dict[str, dict[str, Any]]) -> None: ...

    async def write_items(
        self, upserts: Sequence[ItemUpsert], deletes: Sequence[tuple[str, int]] = ()
    ) -> None: ...

    async def read_control(self) -> tuple[str | None, str | None, str | None]:
        """(mode override, code registry epoch, rebuild request token)."""
        ...

    def registry_lost(self, epoch: str | None) -> bool: ...

    def forget_codes(self) -> None:
        """Forget the item and string codes learned (to be interned again)."""
        ...

    async def read_counts(self, after: int) -> tuple[int, dict[str, ItemCount]]: ...

    async def dirty_users(self, limit: int = 100_000) -> list[str]: ...

    async def add_experiment_counts(self, experiment: str, delta: dict[str, int]) -> None: ...

    async def close(self) -> None: ...
