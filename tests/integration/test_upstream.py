"""The router's HTTP client to model servers (services/router/upstream.py), against real servers
on loopback: uvicorn (the server turnout's model servers run) and small asyncio servers that
misbehave on purpose. Each test runs on asyncio's loop and on uvloop (the router's).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import pytest
import uvicorn
import uvloop

from services.router.forward import Client, Reply
from services.router.metrics import RouterMetrics
from services.router.upstream import UpstreamClient
from turnout.core.spec import Upstream
from turnout.io.processes import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, None]], None]:
    if request.param == "uvloop":
        return uvloop.run
    return asyncio.run


# --- servers --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def uvicorn_server(app: Any, **config: Any) -> AsyncIterator[str]:
    """A real uvicorn (httptools) in this loop; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            http="httptools",
            lifespan="off",
            log_level="warning",
            access_log=False,
            **config,
        )
    )
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def raw_server(handle: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """An asyncio server running ``handle`` per connection; yields (base URL, a list holding
    the number of connections accepted)."""
    accepted = [0]

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted[0] += 1
        try:
            await handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", accepted
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's body (the client always sends Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return await reader.readexactly(length)


def response(body: bytes, status: str = "200 OK") -> bytes:
    return f"HTTP/1.1 {status}\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body


async def echo_app(scope: Any, receive: Any, send: Any) -> None:
    """Answers the request body, with the client's port in a header."""
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    headers = [
        (b"content-type", b"application/octet-stream"),
        (b"x-peer-port", b"%d" % scope["client"][1]),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def router_client() -> Client:
    return Client(RouterMetrics())


V = Upstream(version="v1", url="http://127.0.0.1:1")  # only its version names the failures


async def call(client: Client, url: str, body: bytes = b"{}", timeout_ms: float = 2000) -> Reply:
    return await client.call(V, url, "POST", body, {"content-type": "application/json"}, timeout_ms)


# --- keep-alive, bodies ---------------------------------------------------------------------


def test_requests_reuse_one_keep_alive_connection(run) -> None:
    async def main() -> None:
        async with uvicorn_server(echo_app) as base:
            client = router_client()
            await client.start()
            replies = [await call(client, base + "/echo", b"row %d" % i) for i in range(20)]
            await client.stop()
        assert [r.body for r in replies] == [b"row %d" % i for i in range(20)]
        assert all(r.ok and r.status == 200 for r in replies)
        assert len({r.headers["x-peer-port"] for r in replies}) == 1

    run(main())


def test_chunked_replies_are_read_whole_and_the_connection_kept(run) -> None:
    async def chunked(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        headers = [(b"x-peer-port", b"%d" % scope["client"][1])]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i in range(5):  # no content-length: uvicorn sends chunks
            await send({"type": "http.response.body", "body": b"part%d;" % i, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})

    async def main() -> None:
        async with uvicorn_server(chunked) as base:
            client = router_client()
            await client.start()
            first = await call(client, base + "/stream")
            second = await call(client, base + "/stream")
            await client.stop()
        assert first.headers.get("transfer-encoding") == "chunked"
        assert first.body == second.body == b"part0;part1;part2;part3;part4;"
        assert first.headers["x-peer-port"] == second.headers["x-peer-port"]

    run(main())


def test_large_bodies_both_ways(run) -> None:
    body = bytes(range(256)) * (8 * 4096)  # 8 MiB

    async def main() -> None:
        async with uvicorn_server(echo_app) as base:
            client = router_client()
            await client.start()
            replies = await asyncio.gather(*(call(client, base + "/echo", body) for _ in range(3)))
            await client.stop()
        assert all(r.ok and r.body == body for r in replies)

    run(main())


# --- stale connections ----------------------------------------------------------------------


def test_a_connection_the_server_closed_while_idle_is_not_an_error(run) -> None:
    async def main() -> None:
        async with uvicorn_server(echo_app, timeout_keep_alive=0.2) as base:
            client = router_client()
            await client.start()
            first = await call(client, base + "/echo", b"a")
            await asyncio.sleep(0.6)  # uvicorn closes the idle connection after 0.2 s
            second = await call(client, base + "/echo", b"b")
            await client.stop()
        assert (first.ok, first.body, second.ok, second.body) == (True, b"a", True, b"b")
        assert first.headers["x-peer-port"] != second.headers["x-peer-port"]

    run(main())


def test_a_request_written_to_a_connection_closing_under_it_is_retried_once(run) -> None:
    """The race the idle check cannot see: the server closes a kept-alive connection just as
    the next request is written. Nothing came back, so it is sent again on a new connection."""

    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(response(await read_request(reader)))
        await writer.drain()
        await read_request(reader)  # the second request on this connection: close, no answer

    async def main() -> None:
        async with raw_server(answer_once) as (base, accepted):
            client = router_client()
            await client.start()
            replies = [await call(client, base + "/x", b"%d" % i) for i in range(3)]
            await client.stop()
        assert [(r.ok, r.body) for r in replies] == [(True, b"0"), (True, b"1"), (True, b"2")]
        assert accepted[0] == 3

    run(main())


def test_a_new_connection_closed_without_an_answer_is_not_retried(run) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async def main() -> None:
        async with raw_server(hang_up) as (base, accepted):
            client = router_client()
            await client.start()
            reply = await call(client, base + "/x")
            await client.stop()
        assert (reply.ok, reply.status) == (False, 502)
        assert reply.reason.startswith("v1 unreachable")
        assert accepted[0] == 1

    run(main())


def test_a_reply_cut_off_midway_fails_without_a_retry(run) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(b"ok"))
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()

    async def main() -> None:
        async with raw_server(cut) as (base, accepted):
            client = router_client()
            await client.start()
            first = await call(client, base + "/x")
            second = await call(client, base + "/x")
            await client.stop()
        assert first.ok and not second.ok and second.status == 502
        assert accepted[0] == 1  # bytes had come back: the request may have run, not re-sent

    run(main())


# --- limits and failures --------------------------------------------------------------------


def test_the_pool_limit_holds_and_waiting_callers_are_served_in_turn(run) -> None:
    open_now, most = [0], [0]

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        open_now[0] += 1
        most[0] = max(most[0], open_now[0])
        try:
            while True:
                body = await read_request(reader)
                await asyncio.sleep(0.02)
                writer.write(response(body))
                await writer.drain()
        finally:
            open_now[0] -= 1

    async def main() -> None:
        async with raw_server(slow) as (base, accepted):
            client = UpstreamClient(limit=3)
            results = await asyncio.gather(
                *(client.request(base + "/x", "POST", b"%d" % i, {}, 5.0) for i in range(30))
            )
            await client.close()
            assert [body for _, _, body in results] == [b"%d" % i for i in range(30)]
            assert accepted[0] == 3 and most[0] == 3

    run(main())


def test_a_slow_version_times_out_and_its_late_reply_reaches_nobody(run) -> None:
    async def first_slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = await read_request(reader)
        await asyncio.sleep(0.3)
        writer.write(response(b"late " + body))
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    async def main() -> None:
        async with raw_server(first_slow) as (base, _):
            client = router_client()
            await client.start()
            slow = await call(client, base + "/x", b"1", timeout_ms=100)
            after = await call(client, base + "/x", b"2", timeout_ms=1000)
            await client.stop()
        assert (slow.ok, slow.status, slow.reason) == (False, 504, "v1 timed out")
        assert (after.ok, after.body) == (True, b"late 2")

    run(main())


def test_waiting_for_a_free_connection_counts_against_the_timeout(run) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(0.5)
        writer.write(response(b"ok"))
        await writer.drain()

    async def main() -> None:
        async with raw_server(slow) as (base, _):
            client = UpstreamClient(limit=1)
            loop = asyncio.get_running_loop()
            first = asyncio.create_task(client.request(base + "/x", "POST", b"", {}, 2.0))
            await asyncio.sleep(0.05)
            started = loop.time()
            with pytest.raises(TimeoutError):
                await client.request(base + "/x", "POST", b"", {}, 0.1)
            assert loop.time() - started < 0.3
            assert (await first)[2] == b"ok"
            await client.close()

    run(main())


def test_connection_refused_is_a_failed_reply(run) -> None:
    async def main() -> None:
        client = router_client()
        await client.start()
        reply = await call(client, f"http://127.0.0.1:{free_port()}/x")
        await client.stop()
        assert (reply.ok, reply.status) == (False, 502)
        assert reply.reason == "v1 unreachable: ConnectionRefusedError"

    run(main())


@pytest.mark.parametrize(
    "garbage",
    [
        b"this is not http\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: nope\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n",
    ],
    ids=["not-http", "bad-length", "bad-chunk"],
)
def test_a_malformed_reply_is_a_failed_reply_not_an_exception(run, garbage: bytes) -> None:
    async def bad(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(garbage)
        await writer.drain()
        await asyncio.sleep(1)

    async def main() -> None:
        async with raw_server(bad) as (base, _):
            client = router_client()
            await client.start()
            reply = await call(client, base + "/x")
            await client.stop()
        assert (reply.ok, reply.status, reply.reason) == (
            False,
            502,
            "v1 sent a malformed response",
        )

    run(main())


def test_a_5xx_is_a_failed_reply_that_keeps_the_body(run) -> None:
    async def fail(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(b'{"error":"boom"}', "503 Service Unavailable"))
        await writer.drain()

    async def main() -> None:
        async with raw_server(fail) as (base, _):
            client = router_client()
            await client.start()
            reply = await call(client, base + "/x")
            await client.stop()
        assert (reply.ok, reply.status, reply.body, reply.reason) == (
            False,
            503,
            b'{"error":"boom"}',
            "v1 503",
        )

    run(main())


def test_stop_closes_every_pooled_connection(run) -> None:
    async def main() -> None:
        gone = asyncio.Event()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(response(await read_request(reader)))
            await writer.drain()
            await reader.read()  # until the client closes
            gone.set()

        async with raw_server(serve) as (base, _):
            client = router_client()
            await client.start()
            assert (await call(client, base + "/x")).ok
            await client.stop()
            await asyncio.wait_for(gone.wait(), 2)

    run(main())


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody",
        b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nbody",  # the end of the connection ends it
    ],
    ids=["early-hints-first", "no-length"],
)
def test_replies_framed_unusually_are_read_whole(run, reply: bytes) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(reply)
        await writer.drain()

    async def main() -> None:
        async with raw_server(serve) as (base, _):
            client = router_client()
            await client.start()
            first = await call(client, base + "/x")
            second = await call(client, base + "/x")
            await client.stop()
        assert (first.ok, first.status, first.body) == (True, 200, b"body")
        assert (second.ok, second.body) == (True, b"body")

    run(main())
