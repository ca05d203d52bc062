"""A lean closed-loop HTTP/1.1 load client (and a trivial server to measure its ceiling).

Client: ``python bench/aioclient.py client --url http://127.0.0.1:P/path --body-file F
--connections C --duration S [--warmup W]`` opens C keep-alive connections; each sends one POST,
reads the whole response, and sends the next. Every request's latency is taken with
``perf_counter_ns`` around write..last body byte. Prints one JSON line: requests, rps, p50/p90/
p99/p999/max in ms, errors, non-2xx, and the client's own CPU seconds (to show it is not the
bottleneck). Raw asyncio protocol on uvloop: no HTTP library in the timed path.

Open loop: ``python bench/aioclient.py openloop --url U --body-file F --rate R --duration S
[--warmup W] [--connections C]`` sends requests on a fixed timetable (request i is due at
start + i/R) whatever the responses do, so a slow reply cannot hold back the next requests and
hide itself (coordinated omission). Each due request takes an idle keep-alive connection from a
pool of C; when all are busy a new one is opened (up to --max-connections; past that, requests
queue and the wait counts). Latency is measured from the request's *scheduled* time to its last
body byte; the timetable is kept by a thread sleeping with nanosleep precision (the event loop's
timers have 1 ms granularity), and how late each write went out is reported (``send_lag``).

Relay: ``python bench/aioclient.py relay --port P --upstream http://H:Q`` copies bytes between
each client connection and an upstream connection of its own, parsing nothing: the latency floor
of one userspace proxy hop on this machine, to compare a real proxy with.

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
import threading
import time
from collections import deque
from collections.abc import Sequence
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
        self.done_ns = 0  # perf_counter_ns when the last response's final byte arrived

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
            self.done_ns = time.perf_counter_ns()
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


def _request(
    url: str, body: bytes, content_type: str, headers: Sequence[str] = ()
) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path or "/"
    extra = "".join(f"{h}\r\n" for h in headers)
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
        f"{extra}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    return host, port, request


async def run_client(
    url: str,
    body: bytes,
    connections: int,
    duration: float,
    warmup: float,
    content_type: str,
    headers: Sequence[str] = (),
) -> dict[str, object]:
    host, port, request = _request(url, body, content_type, headers)
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


# --- open-loop client -----------------------------------------------------------------------


async def run_openloop(
    url: str,
    body: bytes,
    rate: float,
    duration: float,
    warmup: float,
    connections: int,
    max_connections: int,
    content_type: str,
    drain_timeout: float = 10.0,
    headers: Sequence[str] = (),
) -> dict[str, object]:
    """Send ``rate`` requests per second on a fixed timetable; latency from the scheduled time."""
    host, port, request = _request(url, body, content_type, headers)
    loop = asyncio.get_running_loop()
    clock = time.perf_counter_ns
    idle: deque[_Conn] = deque()
    for _ in range(connections):
        _, proto = await loop.create_connection(_Conn, host, port)
        idle.append(proto)
    opened = connections
    opening = 0  # connections being opened right now (they count against max_connections)
    queued: deque[int] = deque()  # scheduled times of due requests waiting for a connection
    interval_ns = 1e9 / rate
    n_total = round((warmup + duration) * rate)
    t_start = clock() + 50_000_000  # first request 50 ms from now: time for the thread to start
    measure_from = t_start + int(warmup * 1e9)
    # one record per measured request: scheduled, written, done (ns); status (0: error)
    sched_l: list[int] = []
    sent_l: list[int] = []
    done_l: list[int] = []
    status_l: list[int] = []
    errors: list[str] = []
    in_flight = 0
    max_in_flight = 0
    finished = loop.create_future()
    tasks: set[asyncio.Task[None]] = set()
    scheduled_all = False

    def complete(conn: _Conn, t_sched: int, t_sent: int, fut: asyncio.Future[int]) -> None:
        nonlocal in_flight
        in_flight -= 1
        exc = fut.exception()
        if exc is None:
            status, t_done = fut.result(), conn.done_ns
        else:
            errors.append(repr(exc))
            status, t_done = 0, clock()
        if t_sched >= measure_from:
            sched_l.append(t_sched)
            sent_l.append(t_sent)
            done_l.append(t_done)
            status_l.append(status)
        if exc is None:
            if queued:
                send(conn, queued.popleft())
            else:
                idle.append(conn)
        elif queued:
            open_and_send(queued.popleft())
        maybe_finished()

    def maybe_finished() -> None:
        if scheduled_all and in_flight == 0 and not queued and not finished.done():
            finished.set_result(None)

    def send(conn: _Conn, t_sched: int) -> None:
        nonlocal in_flight, max_in_flight
        t_sent = clock()
        try:
            fut = conn.roundtrip(request)
        except Exception as exc:  # the connection died while idle: replace it
            errors.append(repr(exc))
            open_and_send(t_sched)
            return
        in_flight += 1
        max_in_flight = max(max_in_flight, in_flight)
        fut.add_done_callback(lambda f: complete(conn, t_sched, t_sent, f))

    def open_and_send(t_sched: int) -> None:
        nonlocal opened, opening, in_flight
        if opened + opening >= max_connections:
            queued.append(t_sched)
            return
        opening += 1
        in_flight += 1  # the request is in flight from now: its connect time counts

        async def connect() -> None:
            nonlocal opened, opening, in_flight
            try:
                _, proto = await loop.create_connection(_Conn, host, port)
            except OSError as exc:
                proto = None
                errors.append(repr(exc))
            opening -= 1
            in_flight -= 1
            if proto is None:
                if t_sched >= measure_from:
                    sched_l.append(t_sched)
                    sent_l.append(clock())
                    done_l.append(clock())
                    status_l.append(0)
                maybe_finished()
                return
            opened += 1
            send(proto, t_sched)

        task = loop.create_task(connect())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def fire(t_sched: int) -> None:
        if idle:
            send(idle.popleft(), t_sched)  # FIFO: every pooled connection stays warm
        else:
            open_and_send(t_sched)

    def all_scheduled() -> None:
        nonlocal scheduled_all
        scheduled_all = True
        maybe_finished()

    def timetable() -> None:
        """Wake at each due time (nanosleep) and hand the request to the event loop."""
        call = loop.call_soon_threadsafe
        for i in range(n_total):
            due = t_start + int(i * interval_ns)
            while True:
                now = clock()
                if now >= due:
                    break
                time.sleep((due - now) / 1e9)
            call(fire, due)
        call(all_scheduled)

    # The scheduler thread needs the GIL promptly when it wakes: a short switch interval bounds
    # how long a busy event loop can keep it waiting (the loop is idle most of the time anyway).
    sys.setswitchinterval(0.0005)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = ru.ru_utime + ru.ru_stime
    thread = threading.Thread(target=timetable, name="timetable", daemon=True)
    thread.start()
    t_end_sched = t_start + int(n_total * interval_ns)
    try:
        await asyncio.wait_for(
            asyncio.shield(finished),
            timeout=(t_end_sched - clock()) / 1e9 + drain_timeout,
        )
        unfinished = 0
    except TimeoutError:
        unfinished = in_flight + len(queued)
    t_end = clock()
    thread.join(timeout=1.0)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = ru.ru_utime + ru.ru_stime - cpu0
    for c in idle:
        if c.transport is not None:
            c.transport.close()

    latency = sorted(d - s for s, d in zip(sched_l, done_l, strict=True))
    # a request that never finished waited at least until now: keep it in the tail
    latency += [t_end - measure_from] * unfinished
    service = sorted(d - t for t, d in zip(sent_l, done_l, strict=True))
    lag = sorted(t - s for s, t in zip(sched_l, sent_l, strict=True))
    ok = sum(1 for st in status_l if 200 <= st < 300)
    n_err = sum(1 for st in status_l if st == 0) + unfinished
    span_s = max(1e-9, (t_end_sched - measure_from) / 1e9)
    cpu_span = max(1e-9, (t_end - t_start) / 1e9)
    return {
        "client": "aioclient-openloop",
        "url": url,
        "rate_rps": rate,
        "duration_s": round(span_s, 3),
        "requests": len(latency),
        "ok": ok,
        "non_2xx": len(status_l) - ok - (n_err - unfinished),
        "errors": n_err,
        "unfinished": unfinished,
        "error_sample": errors[:3],
        "achieved_rps": round(ok / span_s, 1),
        "mean_ms": round(sum(latency) / len(latency) / 1e6, 3) if latency else None,
        "p50_ms": round(_percentile(latency, 50), 3),
        "p90_ms": round(_percentile(latency, 90), 3),
        "p99_ms": round(_percentile(latency, 99), 3),
        "p999_ms": round(_percentile(latency, 99.9), 3),
        "max_ms": round(latency[-1] / 1e6, 3) if latency else None,
        # from the actual write instead of the scheduled time (not corrected for omission)
        "service_p50_ms": round(_percentile(service, 50), 3),
        "service_p99_ms": round(_percentile(service, 99), 3),
        # how late the client wrote each request: the client's own share of the latency
        "send_lag_p50_ms": round(_percentile(lag, 50), 3),
        "send_lag_p99_ms": round(_percentile(lag, 99), 3),
        "send_lag_max_ms": round(lag[-1] / 1e6, 3) if lag else None,
        "connections_opened": opened,
        "max_in_flight": max_in_flight,
        "queued_for_connection": len(queued),
        "client_cpu_s": round(cpu_s, 3),
        "client_cpu_util": round(cpu_s / cpu_span, 3),
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


# --- TCP relay (the floor of a proxy hop) ---------------------------------------------------


class _Upstream(asyncio.Protocol):
    def __init__(self, downstream: _Relay) -> None:
        self.downstream = downstream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.downstream.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.downstream.transport.close()


class _Relay(asyncio.Protocol):
    """Each client connection gets one upstream connection; bytes are copied both ways without
    parsing. What any userspace proxy on this machine pays at least: two more loopback hops and
    two more wake-ups of an event loop."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.upstream: asyncio.Transport | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.task = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            upstream, _ = await loop.create_connection(
                lambda: _Upstream(self), self.host, self.port
            )
        except OSError:
            self.transport.close()
            return
        self.upstream = upstream
        for chunk in self.pending:
            upstream.write(chunk)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.upstream is None:
            self.pending.append(data)
        else:
            self.upstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


async def run_relay(host: str, port: int, upstream: str) -> None:
    parts = urlsplit(upstream)
    up_host, up_port = parts.hostname or "127.0.0.1", parts.port or 80
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Relay(up_host, up_port), host, port, backlog=2048)
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
    c.add_argument("--header", action="append", default=[], help='"Name: value", repeatable')
    o = sub.add_parser("openloop")
    o.add_argument("--url", required=True)
    o.add_argument("--body-file", required=True)
    o.add_argument("--content-type", default="application/json")
    o.add_argument("--rate", type=float, required=True, help="requests per second")
    o.add_argument("--duration", type=float, default=5.0)
    o.add_argument("--warmup", type=float, default=1.0)
    o.add_argument("--connections", type=int, default=8, help="keep-alive connections opened first")
    o.add_argument("--max-connections", type=int, default=256)
    o.add_argument("--header", action="append", default=[], help='"Name: value", repeatable')
    r = sub.add_parser("relay")
    r.add_argument("--host", default="127.0.0.1")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--upstream", required=True, help="http://host:port every connection goes to")
    s = sub.add_parser("server")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    if uvloop is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if args.cmd == "server":
        asyncio.run(run_server(args.host, args.port))
        return
    if args.cmd == "relay":
        asyncio.run(run_relay(args.host, args.port, args.upstream))
        return
    with open(args.body_file, "rb") as f:
        body = f.read()
    if args.cmd == "openloop":
        result = asyncio.run(
            run_openloop(
                args.url,
                body,
                args.rate,
                args.duration,
                args.warmup,
                args.connections,
                args.max_connections,
                args.content_type,
                headers=args.header,
            )
        )
    else:
        result = asyncio.run(
            run_client(
                args.url,
                body,
                args.connections,
                args.duration,
                args.warmup,
                args.content_type,
                args.header,
            )
        )
    result["loop"] = "uvloop" if uvloop is not None else "asyncio"
    result["pid"] = os.getpid()
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
