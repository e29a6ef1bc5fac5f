"""The serve app behind granian (RSGI, uvloop) instead of `nearline serve`'s own server, for
the stack comparison of `nearline bench serve`: same reader, same answers.

    python -m nearline_rec.tools.bench.serve_granian PORT
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from nearline_rec.serve import ServeApp


class RsgiApp:
    """The RSGI application granian runs in its worker process."""

    def __init__(self) -> None:
        self.app = ServeApp()

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.app.start())

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.app.stop())

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":
            return
        status, headers, body = await self.app.handle(
            scope.path, scope.query_string, scope.headers.get("authorization", "")
        )
        proto.response_bytes(status, headers, body)


app = RsgiApp()


if __name__ == "__main__":
    from granian import Granian
    from granian.constants import Interfaces, Loops

    Granian(
        "nearline_rec.tools.bench.serve_granian:app",
        address="127.0.0.1",
        port=int(sys.argv[1]),
        interface=Interfaces.RSGI,
        workers=1,
        loop=Loops.uvloop,
        log_level="warning",  # type: ignore[arg-type]
    ).serve()
