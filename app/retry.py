"""The one retry policy of a held batch: its effects (Redis writes, publishes), the
re-read of a gap and the hold of a batch no record of which can be written are all
retried by it, with backoff 0.5 s doubling to 5 s, until they pass or a rebalance comes.

Faust revokes partitions only after every in-flight batch is acked (`wait_empty`), so a
batch held through an outage would stall the whole group (a dead peer's partitions never
taken over). The batch is abandoned instead (`BatchAbandoned`), unacknowledged in effect:
the commit guard keeps its offsets uncommitted, and whoever owns each partition next
applies its records again (idempotently)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential

from nearline_rec.errors import NearlineError


class BatchAbandoned(NearlineError):
    """A batch held for Redis or the broker gives way to a rebalance."""


def held(
    rebalancing: Callable[[], bool],
    retry_on: Callable[[BaseException], bool],
    on_retry: Callable[[BaseException], None],
) -> AsyncRetrying:
    """Retry while `retry_on(error)`, calling `on_retry(error)` before each wait; never
    give up, but raise BatchAbandoned from a wait when `rebalancing()`."""

    async def sleep(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            if rebalancing():
                raise BatchAbandoned()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.2))

    def before_sleep(state: RetryCallState) -> None:
        assert state.outcome is not None
        exc = state.outcome.exception()
        assert exc is not None
        on_retry(exc)

    return AsyncRetrying(
        sleep=sleep,
        wait=wait_exponential(multiplier=0.5, max=5.0),
        retry=retry_if_exception(retry_on),
        before_sleep=before_sleep,
        reraise=True,
    )


def always(_exc: BaseException) -> bool:
    return True


def ignore(_exc: BaseException) -> Any:
    return None
