"""The serve app behind aiohttp instead of `nearline serve`'s own server, for the stack
comparison of `nearline bench serve`: same reader, same answers, another server and loop.

    python -m nearline_rec.tools.bench.serve_aiohttp asyncio|uvloop PORT
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web

from nearline_rec.serve import ServeApp


async def main(port: int) -> None:
    app = ServeApp()
    app.settings_and_reader()
    assert app.reader is not None
    await app.reader.start()

    async def handler(request: web.BaseRequest) -> web.Response:
        status, headers, body = await app.handle(
            request.path, request.query_string, request.headers.get("Authorization", "")
        )
        return web.Response(status=status, body=body, headers=dict(headers))

    loop = asyncio.get_running_loop()
    await loop.create_server(web.Server(handler), "127.0.0.1", port, backlog=2048)
    await asyncio.Event().wait()


if __name__ == "__main__":
    loop, port = sys.argv[1], int(sys.argv[2])
    if loop == "uvloop":
        import uvloop

        uvloop.run(main(port))
    else:
        asyncio.run(main(port))
