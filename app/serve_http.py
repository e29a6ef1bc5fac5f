"""`nearline serve`'s HTTP/1.1 server: pre-forked processes, each an asyncio protocol on
uvloop with httptools' request parser (llhttp), all listening on one port (SO_REUSEPORT:
the kernel spreads connections over them).

Chosen by measurement (`nearline bench serve`, "stacks"): a read is a few microseconds of
application code, so the server's own cost per request decides the throughput and the tail.
This one parses in C, answers a cached read in the callback that parsed it (no task, no
ASGI/RSGI messages) and a read from Redis in the callback of its MGET; granian's RSGI,
uvicorn and aiohttp cost 2.5-4x as much CPU per request on the same answer.

What it speaks: GET and HEAD (others: 405), keep-alive and pipelining (answers in order),
HTTP/1.0 and `Connection: close`; a malformed request gets 400, an oversized head 431, and
the connection is closed. An idle connection is closed after NEARLINE_SERVE__KEEPALIVE_SECONDS.
SIGTERM/SIGINT stop accepting, finish the requests in flight (up to 5 s) and exit.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import time
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote_to_bytes

import httptools

from nearline_rec.serve import JSON, Response, ServeApp, _error
from nearline_rec.settings import Settings

log = logging.getLogger("nearline.serve")

MAX_HEAD = 16 * 1024
"""Most bytes of request line and headers a request may have (past it: 431)."""
MAX_QUEUED = 32
"""Pipelined requests held per connection before it is no longer read."""
STOP_GRACE = 5.0
"""Seconds a stopping process lets its requests in flight finish."""
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 404: b"Not Found"}
REASONS |= {405: b"Method Not Allowed", 431: b"Request Header Fields Too Large"}
REASONS |= {500: b"Internal Server Error", 503: b"Service Unavailable"}


class Server:
    """One process's listening side: its connections, the date it stamps, the idle sweep."""

    def __init__(self, app: ServeApp, keepalive: float) -> None:
        self.app = app
        self.keepalive = keepalive
        self.loop = asyncio.get_running_loop()
        self.conns: set[Connection] = set()
        self.date = b""
        self.stopping = False
        self._tick()

    def _tick(self) -> None:
        """Once a second: the Date header, and close connections idle past the keep-alive."""
        self.date = formatdate(usegmt=True).encode()
        now = self.loop.time()
        for conn in [c for c in self.conns if c.idle_since and now - c.idle_since > self.keepalive]:
            conn.transport.close()
        self.loop.call_later(1.0, self._tick)

    async def drain(self) -> None:
        """Stop: idle connections close now, the others after their answers (or the grace)."""
        self.stopping = True
        for conn in list(self.conns):
            if conn.idle_since:
                conn.transport.close()
        deadline = self.loop.time() + STOP_GRACE
        while self.conns and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.conns):
            conn.transport.abort()


class Connection(asyncio.Protocol):
    """One client connection: parse requests, answer them in order."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.app = server.app
        self.transport: Any = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: collections.deque[tuple[bytes, bytes, str, bool, bool]] = collections.deque()
        self.busy = False
        """A read waits on Redis: answers to later requests wait for it (in order)."""
        self.waiting = (True, False, False)
        """(keep-alive, HEAD, HTTP/1.0) of the request whose read waits."""
        self.idle_since = 0.0
        """When the connection last had nothing to do (0: a request is being read or answered)."""
        self.url = b""
        self.auth = ""
        self.head = 0
        self.reading = True
        self.writable = True

    # ------------------------------------------------------------ transport events

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.idle_since = self.server.loop.time()
        self.server.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.conns.discard(self)
        self.queue.clear()

    def pause_writing(self) -> None:
        self.writable = False  # the client does not read its answers: stop reading requests
        self._reading()

    def resume_writing(self) -> None:
        self.writable = True
        self._reading()

    def data_received(self, data: bytes) -> None:
        self.idle_since = 0.0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not served")
        except httptools.HttpParserError as exc:
            if self.head > MAX_HEAD:
                self._fail(431, f"request line and headers over {MAX_HEAD} bytes")
            else:
                self._fail(400, f"malformed HTTP request: {exc}")
        else:
            if not self.busy and not self.queue:
                self.idle_since = self.server.loop.time()

    # ------------------------------------------------------------- parser events

    def on_message_begin(self) -> None:
        self.url, self.auth, self.head = b"", "", 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        if len(name) == 13 and name.lower() == b"authorization":
            self.auth = value.decode("latin-1")

    def _count(self, n: int) -> None:
        self.head += n
        if self.head > MAX_HEAD:
            raise httptools.HttpParserError("request line and headers too large")

    def on_message_complete(self) -> None:
        p = self.parser
        keep = p.should_keep_alive()
        http10 = p.get_http_version() == "1.0"
        self.queue.append((p.get_method(), self.url, self.auth, keep, http10))
        if len(self.queue) > MAX_QUEUED:
            self._reading()
        if not self.busy:
            self._next()

    # ------------------------------------------------------------------ answers

    def _next(self) -> None:
        """Answer queued requests in order, until one waits on Redis."""
        while self.queue and not self.busy:
            method, url, auth, keep, http10 = self.queue.popleft()
            head_only = method == b"HEAD"
            if method != b"GET" and not head_only:
                message = f"method {method.decode('latin-1')[:20]} not allowed (GET, HEAD)"
                response: Any = (405, JSON + [("allow", "GET, HEAD")], _json_error(405, message))
            else:
                try:
                    path, query = _split(url)
                except ValueError as exc:
                    self._write((400, JSON, _json_error(400, str(exc))), False, False, http10)
                    return
                try:
                    response = self.app.answer(path, query, auth)
                except Exception:
                    log.exception("answer to %r failed", url[:200])
                    response = (500, JSON, _json_error(500, "internal error"))
            if not isinstance(response, tuple):  # a future: the read waits on Redis
                self.busy = True
                self.waiting = (keep, head_only, http10)
                response.add_done_callback(self._done)
                return
            self._write(response, keep, head_only, http10)
        if not self.queue:
            self._reading()
            if not self.busy and self.transport is not None and not self.transport.is_closing():
                self.idle_since = self.server.loop.time()

    def _done(self, answer: asyncio.Future[Response]) -> None:
        self.busy = False
        keep, head_only, http10 = self.waiting
        if self.transport.is_closing():
            return
        if answer.cancelled():  # the process is stopping
            self.transport.close()
            return
        try:
            response = answer.result()
        except Exception:
            log.exception("a read failed")
            response = (500, JSON, _json_error(500, "internal error"))
        self._write(response, keep, head_only, http10)
        self._next()

    def _write(self, response: Response, keep: bool, head_only: bool, http10: bool) -> None:
        status, headers, body = response
        if self.transport.is_closing():
            return
        keep = keep and not self.server.stopping
        if headers is JSON:
            start = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n" % (
                status,
                REASONS.get(status, b""),
            )
        else:
            start = b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"")) + b"".join(
                b"%s: %s\r\n" % (n.encode("latin-1"), v.encode("latin-1")) for n, v in headers
            )
        if not keep:
            connection = b"connection: close\r\n"
        elif http10:
            connection = b"connection: keep-alive\r\n"
        else:
            connection = b""
        start += b"date: %s\r\n%scontent-length: %d\r\n\r\n" % (
            self.server.date,
            connection,
            len(body),
        )
        self.transport.write(start if head_only else start + body)
        if not keep:
            self.queue.clear()
            self.transport.close()

    def _fail(self, status: int, message: str) -> None:
        self.queue.clear()
        if not self.busy:
            self._write((status, JSON, _json_error(status, message)), False, False, False)
        else:
            self.transport.close()

    def _reading(self) -> None:
        want = self.writable and len(self.queue) <= MAX_QUEUED
        if want != self.reading and not self.transport.is_closing():
            self.reading = want
            (self.transport.resume_reading if want else self.transport.pause_reading)()


def _split(url: bytes) -> tuple[str, str]:
    """(decoded path, raw query string) of a request target."""
    try:
        parsed = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError:
        raise ValueError(f"not a request target: {url[:100]!r}") from None
    path = parsed.path or b"/"
    if b"%" in path:
        path = unquote_to_bytes(path)
    try:
        return path.decode(), (parsed.query or b"").decode("latin-1")
    except UnicodeDecodeError:
        raise ValueError("the path is not UTF-8") from None


def _json_error(status: int, message: str) -> bytes:
    return _error(status, message)[2]


# ------------------------------------------------------------------- processes


def listen(host: str, port: int, backlog: int) -> socket.socket:
    """A listening socket on (host, port) that other processes may share (SO_REUSEPORT)."""
    family, kind, proto, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _answers(host: str, port: int) -> bool:
    """Whether something accepts connections at (host, port) already."""
    target = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        socket.create_connection((target, port), timeout=1.0).close()
    except OSError:
        return False
    return True


async def _serve(sock: socket.socket, keepalive: float, backlog: int) -> None:
    loop = asyncio.get_running_loop()
    app = ServeApp()
    await app.start()
    server = Server(app, keepalive)
    # the loop listens again on the socket it is given: with the backlog asked for
    listener = await loop.create_server(lambda: Connection(server), sock=sock, backlog=backlog)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    listener.close()
    await server.drain()
    try:  # Redis connections closed politely, if that does not take long
        async with asyncio.timeout(STOP_GRACE):
            await app.stop()
    except TimeoutError:
        log.warning("serve process %d: reader did not stop within %.0f s", os.getpid(), STOP_GRACE)


def _child(sock: socket.socket, keepalive: float, backlog: int) -> int:
    import uvloop

    try:
        uvloop.run(_serve(sock, keepalive, backlog))
    except Exception:
        log.exception("serve process %d failed", os.getpid())
        return 1
    return 0


def run(settings: Settings, *, host: str, port: int, processes: int, loglevel: str) -> None:
    """Serve until SIGINT/SIGTERM: `processes` pre-forked processes on one port; one that
    exits is started again (a process that cannot start stops them all, with its error)."""
    logging.basicConfig(
        level=loglevel.upper(),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
    )
    if settings.serve.log_json:
        from nearline_rec.logs import use_json_logs

        use_json_logs()
    try:
        # a taken port: one line, now (a server of the same user with SO_REUSEPORT would
        # let the bind through and share the port: whoever accepts there is asked first)
        if _answers(host, port):
            raise OSError(errno.EADDRINUSE, "a server already listens there")
        listen(host, port, settings.serve.backlog).close()
    except OSError as exc:
        raise SystemExit(
            f"nearline serve: cannot listen on {host}:{port}: {exc.strerror}"
        ) from None
    keepalive = settings.serve.keepalive_seconds
    children: dict[int, float] = {}
    stopping = False

    def spawn() -> None:
        sock = listen(host, port, settings.serve.backlog)
        # a signal between fork and the child's own handlers must not run the parent's
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for sig in STOP_SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
                code = _child(sock, keepalive, settings.serve.backlog)
            finally:
                logging.shutdown()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        sock.close()
        children[pid] = time.monotonic()

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        if not stopping:  # whatever they are stuck on, processes left then are killed
            signal.signal(signal.SIGALRM, lambda *_: signal_all(signal.SIGKILL))
            signal.alarm(int(3 * STOP_GRACE))
        stopping = True
        signal_all(signal.SIGTERM)

    def signal_all(sig: int) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(processes):
        spawn()
    early_exits = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        started = children.pop(pid, None)
        if started is None or stopping:
            continue
        code = os.waitstatus_to_exitcode(status)
        early_exits = early_exits + 1 if time.monotonic() - started < 5 else 0
        if early_exits >= 3:
            log.error("serve processes exit at start (last: %d, code %s): stopping", pid, code)
            stop(signal.SIGTERM, None)
            continue
        log.warning("serve process %d exited (code %s): starting another", pid, code)
        spawn()
    if early_exits >= 3:
        sys.exit(1)
