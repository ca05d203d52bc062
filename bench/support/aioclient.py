"""A lean closed-loop HTTP/1.1 load client (and a trivial server to measure its ceiling).

Client: ``python bench/aioclient.py client --url http://127.0.0.1:P/path --body-file F
--connections C --duration S [--warmup W]`` opens C keep-alive connections; each sends one POST,
reads the whole response, and sends the next. Every request's latency is taken with
``perf_counter_ns`` around write..last body byte. Prints one JSON line: requests, rps, p50/p90/
p99/p999/max in ms, errors, non-2xx, and the client's own CPU seconds (to show it is not the
bottleneck). Raw asyncio protocol on uvloop: no HTTP library in the timed path.

Server: ``python bench/aioclient.py server --port P`` answers every request with a fixed small
JSON body (no application work): the ceiling of the client, and of wrk, on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import sys
import time
from urllib.parse import urlsplit

try:
    import uvloop
except ImportError:  # pragma: no cover - the venv has it
    uvloop = None  # type: ignore[assignment]


# --- client ---------------------------------------------------------------------------------


class _Conn(asyncio.Protocol):
    """One keep-alive connection; ``roundtrip`` sends the request and resolves on the response."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.need = -1  # total bytes of the current response once its header is parsed
        self.status = 0
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionError("connection closed")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.lost)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            self.status = int(head[9:12])
            i = head.find(b"\r\ncontent-length:")
            if i < 0:
                self._fail(ValueError("response without content-length (chunked?)"))
                return
            j = head.find(b"\r\n", i + 2)
            length = int(head[i + 17 : j if j >= 0 else len(head)])
            self.need = end + 4 + length
        if len(self.buf) >= self.need:
            if len(self.buf) > self.need:
                self._fail(ValueError("unexpected bytes after the response"))
                return
            self.buf.clear()
            self.need = -1
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(self.status)

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def roundtrip(self, request: bytes) -> asyncio.Future[int]:
        if self.lost is not None:
            raise self.lost
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.waiter


def _percentile(sorted_ns: list[int], q: float) -> float:
    if not sorted_ns:
        return float("nan")
    k = min(len(sorted_ns) - 1, max(0, round(q / 100 * len(sorted_ns) + 0.5) - 1))
    return sorted_ns[k] / 1e6


async def run_client(
    url: str, body: bytes, connections: int, duration: float, warmup: float, content_type: str
) -> dict[str, object]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path or "/"
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(connections):
        _, proto = await loop.create_connection(_Conn, host, port)
        conns.append(proto)

    latencies: list[int] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []
    t_start = time.perf_counter_ns()
    measure_from = t_start + int(warmup * 1e9)
    stop_at = measure_from + int(duration * 1e9)
    cpu0: list[float] = []
    stall_ns = 100_000_000  # requests slower than 100 ms are listed by start time
    stalls: list[tuple[int, int]] = []

    async def worker(conn: _Conn) -> None:
        clock = time.perf_counter_ns
        append = latencies.append
        while True:
            t0 = clock()
            if t0 >= stop_at:
                return
            try:
                status = await conn.roundtrip(request)
            except Exception as exc:  # connection errors end this connection's loop
                errors.append(repr(exc))
                return
            t1 = clock()
            if t0 >= measure_from:
                append(t1 - t0)
                if t1 - t0 > stall_ns:
                    stalls.append((t0 - measure_from, t1 - t0))
                statuses[status] = statuses.get(status, 0) + 1
            elif not cpu0 and t1 >= measure_from:
                ru = resource.getrusage(resource.RUSAGE_SELF)
                cpu0.append(ru.ru_utime + ru.ru_stime)

    await asyncio.gather(*(worker(c) for c in conns))
    t_end = time.perf_counter_ns()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = ru.ru_utime + ru.ru_stime - (cpu0[0] if cpu0 else 0.0)
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    # Requests that started inside the window; the last responses land just after stop_at.
    span_s = max(1e-9, (t_end - measure_from) / 1e9)
    latencies.sort()
    ok = sum(n for s, n in statuses.items() if 200 <= s < 300)
    return {
        "client": "aioclient",
        "url": url,
        "connections": connections,
        "duration_s": round(span_s, 3),
        "requests": len(latencies),
        "ok": ok,
        "non_2xx": len(latencies) - ok,
        "errors": len(errors),
        "error_sample": errors[:3],
        "rps": round(len(latencies) / span_s, 1),
        "mean_ms": round(sum(latencies) / len(latencies) / 1e6, 3) if latencies else None,
        "p50_ms": round(_percentile(latencies, 50), 3),
        "p90_ms": round(_percentile(latencies, 90), 3),
        "p99_ms": round(_percentile(latencies, 99), 3),
        "p999_ms": round(_percentile(latencies, 99.9), 3),
        "max_ms": round(latencies[-1] / 1e6, 3) if latencies else None,
        "over_100ms": len(stalls),
        # start offset (s) and latency (ms) of the first slow requests: periodic stalls show here
        "over_100ms_sample": [[round(a / 1e9, 3), round(b / 1e6, 1)] for a, b in stalls[:5000]],
        "client_cpu_s": round(cpu_s, 3),
        "client_cpu_util": round(cpu_s / span_s, 3),
    }


# --- trivial server -------------------------------------------------------------------------

_REPLY_BODY = b'{"outputs":[{"name":"probability","datatype":"FP32","shape":[1],"data":[0.5]}]}'
_REPLY = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(_REPLY_BODY)).encode()
    + b"\r\n\r\n"
    + _REPLY_BODY
)


class _Trivial(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            i = head.find(b"\r\ncontent-length:")
            length = 0
            if i >= 0:
                j = head.find(b"\r\n", i + 2)
                length = int(head[i + 17 : j if j >= 0 else len(head)])
            if len(self.buf) < end + 4 + length:
                return
            del self.buf[: end + 4 + length]
            self.transport.write(_REPLY)  # type: ignore[attr-defined]


async def run_server(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Trivial, host, port, backlog=2048)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("client")
    c.add_argument("--url", required=True)
    c.add_argument("--body-file", required=True)
    c.add_argument("--content-type", default="application/json")
    c.add_argument("--connections", type=int, default=1)
    c.add_argument("--duration", type=float, default=5.0)
    c.add_argument("--warmup", type=float, default=1.0)
    s = sub.add_parser("server")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    if uvloop is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if args.cmd == "server":
        asyncio.run(run_server(args.host, args.port))
        return
    with open(args.body_file, "rb") as f:
        body = f.read()
    result = asyncio.run(
        run_client(args.url, body, args.connections, args.duration, args.warmup, args.content_type)
    )
    result["loop"] = "uvloop" if uvloop is not None else "asyncio"
    result["pid"] = os.getpid()
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
