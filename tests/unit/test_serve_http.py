"""`nearline serve`'s HTTP/1.1 server (app/serve_http.py) on a loopback socket, in front of a
stand-in application: answers in order on a pipelined connection (also when one waits),
HEAD, methods, HTTP/1.0, bad and oversized requests, idle connections, a graceful stop."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from nearline_rec import serve_http
from nearline_rec.serve import JSON

pytestmark = pytest.mark.timeout(60)


class StandIn:
    """Answers `/echo/<x>` at once, `/slow/<x>` after an event, anything else 404."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.seen: list[tuple[str, str, str]] = []

    def answer(self, path: str, query: str, auth: str) -> Any:
        self.seen.append((path, query, auth))
        if path.startswith("/slow/"):
            return asyncio.ensure_future(self._slow(path))  # a future, as the reader's
        if path.startswith("/echo/"):
            return 200, JSON, path[len("/echo/") :].encode()
        if path == "/boom":
            raise RuntimeError("boom")
        return 404, JSON, b"{}"

    async def _slow(self, path: str) -> Any:
        await self.release.wait()
        return 200, JSON, path[len("/slow/") :].encode()


async def _server(keepalive: float = 60.0) -> tuple[StandIn, serve_http.Server, Any, int]:
    app = StandIn()
    server = serve_http.Server(app, keepalive)  # type: ignore[arg-type]
    sock = serve_http.listen("127.0.0.1", 0, 64)
    port = sock.getsockname()[1]
    listener = await asyncio.get_running_loop().create_server(
        lambda: serve_http.Connection(server), sock=sock
    )
    return app, server, listener, port


async def _responses(reader: asyncio.StreamReader, n: int) -> list[tuple[bytes, dict, bytes]]:
    """n responses: (status line, headers, body)."""
    out = []
    for _ in range(n):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        status, *lines = head[:-4].split(b"\r\n")
        headers = {k.lower(): v for k, v in (line.split(b": ", 1) for line in lines)}
        length = int(headers[b"content-length"])
        out.append((status, headers, b""))
        if length and not status.endswith(b"HEAD"):
            out[-1] = (status, headers, await asyncio.wait_for(reader.readexactly(length), 5))
    return out


async def test_pipelined_requests_are_answered_in_order_even_when_one_waits() -> None:
    app, server, listener, port = await _server()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /echo/a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\r\n"
        b"GET /slow/b HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /echo/c?k=3 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    first = await _responses(reader, 1)
    assert first[0][2] == b"a"
    await asyncio.sleep(0.05)
    assert [p for p, _, _ in app.seen] == ["/echo/a", "/slow/b"]  # c waits its turn
    app.release.set()
    rest = await _responses(reader, 2)
    assert [body for _, _, body in rest] == [b"b", b"c"]
    assert app.seen[0][2] == "Bearer t" and app.seen[2][1] == "k=3"
    assert all(h[b"content-type"] == b"application/json" and b"date" in h for _, h, _ in rest)
    writer.close()
    listener.close()


async def test_head_method_http10_and_a_failing_answer() -> None:
    _, _, listener, port = await _server()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"HEAD /echo/abc HTTP/1.1\r\nHost: x\r\n\r\nGET /echo/z HTTP/1.1\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 OK") and b"content-length: 3\r\n" in head
    # no body after HEAD's head: the next bytes are the next answer
    ((status, _, body),) = await _responses(reader, 1)
    assert status == b"HTTP/1.1 200 OK" and body == b"z"
    writer.write(b"POST /echo/a HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiGET /boom HTTP/1.1\r\n\r\n")
    (s1, h1, b1), (s2, _, b2) = await _responses(reader, 2)
    assert s1 == b"HTTP/1.1 405 Method Not Allowed" and h1[b"allow"] == b"GET, HEAD"
    assert b"POST" in b1
    assert s2 == b"HTTP/1.1 500 Internal Server Error" and b"internal error" in b2
    writer.close()
    # HTTP/1.0: closed after the answer unless it asks to be kept alive
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /echo/k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    ((_, h, body),) = await _responses(reader, 1)
    assert h[b"connection"] == b"keep-alive" and body == b"k"
    writer.write(b"GET /echo/x HTTP/1.0\r\n\r\n")
    ((_, h, body),) = await _responses(reader, 1)
    assert h[b"connection"] == b"close" and body == b"x"
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed
    listener.close()


@pytest.mark.parametrize(
    ("request_bytes", "status", "says"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", b"400", b"malformed HTTP request"),
        (b"GET /echo/a HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n", b"431", b"16384 bytes"),
        (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n", b"431", b"16384 bytes"),
        (b"GET /echo/%ff HTTP/1.1\r\n\r\n", b"400", b"not UTF-8"),
    ],
)
async def test_a_bad_request_gets_its_status_and_the_connection_closes(
    request_bytes: bytes, status: bytes, says: bytes
) -> None:
    _, _, listener, port = await _server()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_bytes)
    data = await asyncio.wait_for(reader.read(), 5)  # everything until the server closes
    assert data.startswith(b"HTTP/1.1 " + status), data[:80]
    assert b"connection: close" in data and says in data
    listener.close()


async def test_percent_encoded_path_is_decoded() -> None:
    app, _, listener, port = await _server()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /echo/caf%C3%A9%20x HTTP/1.1\r\n\r\n")
    ((_, _, body),) = await _responses(reader, 1)
    assert app.seen[-1][0] == "/echo/café x" and body == "café x".encode()
    writer.close()
    listener.close()


async def test_idle_connections_close_after_the_keepalive_and_busy_ones_stay() -> None:
    app, server, listener, port = await _server(keepalive=0.3)
    idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
    busy_r, busy_w = await asyncio.open_connection("127.0.0.1", port)
    busy_w.write(b"GET /slow/s HTTP/1.1\r\n\r\n")
    assert await asyncio.wait_for(idle_r.read(), 10) == b""  # closed by the idle sweep
    assert len(server.conns) == 1  # the one waiting on its answer is kept
    app.release.set()
    ((_, _, body),) = await _responses(busy_r, 1)
    assert body == b"s"
    busy_w.close()
    listener.close()


async def test_a_stop_lets_the_answer_in_flight_finish_and_closes_everything() -> None:
    app, server, listener, port = await _server()
    idle_r, _ = await asyncio.open_connection("127.0.0.1", port)
    busy_r, busy_w = await asyncio.open_connection("127.0.0.1", port)
    busy_w.write(b"GET /slow/last HTTP/1.1\r\n\r\n")
    while len(app.seen) < 1:
        await asyncio.sleep(0.01)
    listener.close()
    drained = asyncio.create_task(server.drain())
    assert await asyncio.wait_for(idle_r.read(), 5) == b""
    app.release.set()
    data = await asyncio.wait_for(busy_r.read(), 5)  # the answer, then the close
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"last")
    assert b"connection: close" in data
    await asyncio.wait_for(drained, 10)
    assert not server.conns
