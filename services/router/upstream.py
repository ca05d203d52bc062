"""A lean keep-alive HTTP/1.1 client for the router's calls to model servers.

py-spy put 41-47 % of the router's CPU in aiohttp's client, most of it in machinery the router
never uses (cookies, redirects, URL objects, multidicts, tracing, decompression). The router
needs little: one request at a time per connection, bodies in memory, base URLs from the route
table. So this is ``asyncio.Protocol`` plus httptools' response parser (llhttp, the parser
uvicorn already runs for the router's own requests): Content-Length and chunked bodies, a pool
of keep-alive connections per upstream with a limit and a queue of waiters, one total deadline
per call (connecting and waiting for a connection included), and one retry when a pooled
connection turns out to have been closed by the server while it sat idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Mapping
from typing import cast
from urllib.parse import urlsplit

import httptools

#: Connections per upstream (scheme, host, port); more callers wait for one to come free.
MAX_CONNECTIONS = 256
#: A pooled connection idle longer than this is closed by us (servers close theirs sooner).
KEEPALIVE_S = 30.0
#: Bodies up to this size are copied into the request head's buffer: one write, one segment.
_COALESCE = 16384

#: (status, lower-cased headers, body) of a complete response.
Response = tuple[int, dict[str, str], bytes]


class UpstreamError(Exception):
    """A call that got no usable response; ``str()`` is short and safe for a metric label."""


class Unreachable(UpstreamError):
    """Could not connect, or the connection broke before the response was complete."""


class BadResponse(UpstreamError):
    """The server's bytes are not an HTTP/1.1 response."""


class _Stale(Unreachable):
    """A reused connection failed before any byte of the response: the server had closed it
    while idle (its keep-alive timeout), so the request never reached it."""


class Connection(asyncio.Protocol):
    """One keep-alive connection: a request at a time, its response parsed as it arrives."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._received = False
        self._headers_done = False
        #: Served a request before: a failure with nothing received means it went stale.
        self.reused = False
        self.closed = False
        self.idle_since = 0.0

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: the stream cannot be trusted
            self.abort()
            return
        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._finish(exc=BadResponse(f"malformed response ({type(exc).__name__})"))
            self.abort()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None:
            h = self._headers
            if (
                exc is None
                and self._headers_done
                and not ("content-length" in h or "transfer-encoding" in h)
            ):
                # a body delimited by the end of the connection (no length, not chunked)
                status = self._parser.get_status_code()
                self._finish(result=(status, self._headers, b"".join(self._body)))
            elif not self._received and self.reused:
                self._finish(exc=_Stale("connection closed by the server"))
            else:
                name = type(exc).__name__ if exc is not None else "connection closed"
                self._finish(exc=Unreachable(name))
        self._pool.lost(self)

    # --- httptools callbacks ------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # informational (103 Early Hints): the answer is still to come
            self._headers, self._body, self._headers_done = {}, [], False
            return
        keep = self._parser.should_keep_alive()
        self._finish(result=(status, self._headers, b"".join(self._body)))
        if keep and not self.closed:
            self._pool.release(self)
        else:
            self.close()

    # --- the caller's side --------------------------------------------------------------

    def request(self, data: bytes, body: bytes, deadline: float) -> asyncio.Future[Response]:
        """Send one request; the future holds the response, or fails by ``deadline``."""
        assert self._transport is not None and self._waiter is None
        if self.closed:  # closed between leaving the pool and now
            raise _Stale("connection closed") if self.reused else Unreachable("connection closed")
        self._waiter = waiter = self._loop.create_future()
        self._headers, self._body = {}, []
        self._received = self._headers_done = False
        self._timer = self._loop.call_at(deadline, self._expire)
        if len(body) <= _COALESCE:
            self._transport.write(data + body)
        else:
            self._transport.write(data)
            self._transport.write(body)
        return waiter

    def _expire(self) -> None:
        self._timer = None
        self._finish(exc=TimeoutError())
        self.abort()

    def _finish(self, *, result: Response | None = None, exc: BaseException | None = None) -> None:
        waiter, self._waiter = self._waiter, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if waiter is None or waiter.done():
            return
        if exc is not None:
            waiter.set_exception(exc)
        else:
            assert result is not None
            waiter.set_result(result)

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection at once: it is mid-response and cannot serve another."""
        self.closed = True
        if self._transport is not None:
            self._transport.abort()


class Pool:
    """The keep-alive connections to one upstream, at most ``limit`` open at once."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        limit: int,
    ) -> None:
        self.loop = loop
        self.host, self.port, self.tls, self.limit = host, port, tls, limit
        #: Idle connections, oldest first; the newest is reused (warm, least likely stale).
        self.idle: deque[Connection] = deque()
        #: Connections open or opening.
        self.size = 0
        #: Callers waiting for a connection: handed one on release, or None when a slot frees.
        self.waiters: deque[asyncio.Future[Connection | None]] = deque()
        #: Closed with the client: connections still out are closed when they come back.
        self.closed = False

    def take(self) -> Connection | None:
        """An idle connection, without waiting."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def acquire(self, deadline: float, *, fresh: bool = False) -> Connection:
        """A connection: an idle one (unless ``fresh``), a new one, or the next one freed."""
        if not fresh:
            conn = self.take()
            if conn is not None:
                return conn
        while True:
            if self.size < self.limit:
                return await self._open(deadline)
            waiter: asyncio.Future[Connection | None] = self.loop.create_future()
            self.waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    handed = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    # handed something just as the deadline hit: pass it on
                    got = waiter.result()
                    if got is not None:
                        self.release(got)
                    else:
                        self._wake()
                raise
            if handed is not None and not handed.closed:
                return handed

    async def _open(self, deadline: float) -> Connection:
        self.size += 1
        try:
            async with asyncio.timeout_at(deadline):
                _, conn = await self.loop.create_connection(
                    lambda: Connection(self), self.host, self.port, ssl=self.tls
                )
        except BaseException:
            self.size -= 1
            self._wake()
            raise
        return conn

    def release(self, conn: Connection) -> None:
        """A connection done with its response: to the first waiter, else into the pool."""
        conn.reused = True
        if self.closed:
            conn.close()
            return
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        now = self.loop.time()
        conn.idle_since = now
        idle = self.idle
        idle.append(conn)
        if now - idle[0].idle_since > KEEPALIVE_S:
            idle.popleft().close()

    def lost(self, conn: Connection) -> None:
        """A connection closed (by either side): its slot goes to the next waiter."""
        self.size -= 1
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)
        self._wake()

    def _wake(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        self.closed = True
        for conn in list(self.idle):
            conn.close()
        self.idle.clear()
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_exception(Unreachable("client closed"))
        self.waiters.clear()


class Target:
    """A URL resolved once: its pool and the start of the request line."""

    __slots__ = ("host", "path", "pool")

    def __init__(self, pool: Pool, path: str, host: str) -> None:
        self.pool, self.path, self.host = pool, path, host


class UpstreamClient:
    """Pools per upstream, and a call that answers with a Response or raises UpstreamError or
    TimeoutError."""

    def __init__(self, *, limit: int = MAX_CONNECTIONS) -> None:
        self.limit = limit
        self._pools: dict[tuple[str, str, int], Pool] = {}
        self._targets: dict[str, Target] = {}
        self._tls: ssl.SSLContext | None = None

    def target(self, url: str) -> Target:
        found = self._targets.get(url)
        if found is not None:
            return found
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        key = (parts.scheme, parts.hostname, port)
        pool = self._pools.get(key)
        if pool is None:
            if https and self._tls is None:
                self._tls = ssl.create_default_context()
            pool = self._pools[key] = Pool(
                asyncio.get_running_loop(),
                host=parts.hostname,
                port=port,
                tls=self._tls if https else None,
                limit=self.limit,
            )
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        if len(self._targets) > 4096:  # URLs come from route tables: bounded, unless reloaded a lot
            self._targets.clear()
        found = self._targets[url] = Target(pool, path, parts.netloc)
        return found

    async def request(
        self,
        url: str,
        method: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout_s: float,
    ) -> Response:
        target = self.target(url)
        pool = target.pool
        deadline = pool.loop.time() + timeout_s
        head = f"{method} {target.path} HTTP/1.1\r\nhost: {target.host}\r\n"
        if body or method == "POST":
            head += f"content-length: {len(body)}\r\n"
        for name, value in headers.items():
            head += f"{name}: {value}\r\n"
        data = (head + "\r\n").encode("latin-1")
        conn = pool.take() or await pool.acquire(deadline)
        try:
            return await self._send(conn, data, body, deadline)
        except _Stale:
            conn = await pool.acquire(deadline, fresh=True)
            return await self._send(conn, data, body, deadline)

    @staticmethod
    async def _send(conn: Connection, data: bytes, body: bytes, deadline: float) -> Response:
        try:
            return await conn.request(data, body, deadline)
        except asyncio.CancelledError:
            conn.abort()  # the caller gave up mid-response: the connection cannot be reused
            raise

    async def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        self._targets.clear()
        await asyncio.sleep(0)  # let the transports run connection_lost
