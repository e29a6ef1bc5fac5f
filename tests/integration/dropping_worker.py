"""`nearline worker` whose fetch path drops every user-events record that arrives in the first
few seconds after the first one, without delivering or acking it: what Faust does on its
silent paths (a stream skipping a record while flow control is off or from another consumer
generation, a fetched record of a partition not active at that moment) when no seek back
follows. With no later record to reveal the gap and no ack to leave a tail owed, only the
worker's re-read of a partition fetched past its frontier brings these records back. Each
offset is dropped at most once. Run as `python dropping_worker.py worker ...`;
NEARLINE_TEST_DROP_SECONDS sets the window (default 4)."""

from __future__ import annotations

import os
import time
from typing import Any

from faust.transport.conductor import Conductor

from nearline_rec.tools.cli import main

_WINDOW_S = float(os.environ.get("NEARLINE_TEST_DROP_SECONDS", "4"))
_build = Conductor._build_handler
_first: list[float] = []
_dropped: set[tuple[Any, int]] = set()


def _dropping(self: Conductor, tp: Any, channels: Any) -> Any:
    handler = _build(self, tp, channels)
    if not tp.topic.endswith("-user-events"):
        return handler

    async def on_message(message: Any) -> None:
        now = time.monotonic()
        if not _first:
            _first.append(now)
        key = (message.tp, message.offset)
        if now - _first[0] < _WINDOW_S and key not in _dropped:
            _dropped.add(key)
            return None
        return await handler(message)

    return on_message


Conductor._build_handler = _dropping  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
