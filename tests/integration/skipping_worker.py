"""`nearline worker` whose stream skips the last record of every batch, after take_events
buffered (and so acked) it: what Faust's stream does to the records it skips while flow
control is suspended. The reliability test runs it to show the commit guard reads each one
back, in order, and never commits past it. Run as `python skipping_worker.py worker ...`."""

from __future__ import annotations

from typing import Any

import nearline_rec.agents.ingest
from nearline_rec.tools.cli import main

_handle_batch = nearline_rec.agents.ingest.handle_batch


async def _skipping(events: list[Any]) -> None:
    await _handle_batch(events[:-1])


nearline_rec.agents.ingest.handle_batch = _skipping

if __name__ == "__main__":
    main()
