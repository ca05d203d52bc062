"""Steady traffic that keeps a record of every request: when it was sent, when its reply
arrived, which version answered it and whether the router retried it on stable after the
candidate failed.

``turnout.cli.traffic.Traffic`` only counts replies; a benchmark that asks "when did the last
request reach the candidate?" needs each request's own times. Each thread keeps one keep-alive
connection (``http.client``: a few hundred microseconds of CPU per request, so the client does
not crowd the servers on a small machine) and sends on its own fixed timetable; a thread that
falls behind skips ahead instead of bursting, and the other threads keep sending meanwhile.
Times are ``time.monotonic()`` seconds.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from typing import NamedTuple
from urllib.parse import urlsplit


class Reply(NamedTuple):
    sent: float  # just before the request was written
    received: float  # once the whole reply was read (or the request failed)
    status: int  # 0: no reply (connection error or timeout)
    variant: str  # x-turnout-variant
    version: str  # x-turnout-model-version
    retried: bool  # x-turnout-retried: a failed candidate call, answered by stable


class RecordedTraffic:
    """``rate`` requests per second from ``threads`` threads, each with a random sticky key out
    of ``users``, until ``stop()``; every request is appended to ``replies`` when it ends."""

    def __init__(
        self,
        base_url: str,
        model: str,
        body: bytes,
        *,
        rate: float = 200.0,
        threads: int = 8,
        users: int = 10_000,
        sticky_header: str = "x-user-id",
        timeout: float = 5.0,
        seed: int = 0,
    ) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = f"/v2/models/{model}/infer"
        self.body = body
        self.rate = rate
        self.threads = threads
        self.users = users
        self.sticky_header = sticky_header
        self.timeout = timeout
        self.seed = seed
        self.replies: list[Reply] = []  # list.append is atomic: threads append, readers slice
        self._in_flight: dict[int, float | None] = {}  # thread -> send time of its request
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def start(self) -> RecordedTraffic:
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), daemon=True, name=f"traffic-{i}")
            t.start()
            self._workers.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(timeout=self.timeout + 1)

    def oldest_in_flight(self) -> float | None:
        """Send time of the oldest request still waiting for its reply, if any."""
        times = [t for t in self._in_flight.values() if t is not None]
        return min(times, default=None)

    def _run(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        period = self.threads / self.rate
        # spread the threads' timetables over one period
        next_at = time.monotonic() + period * index / self.threads
        conn: http.client.HTTPConnection | None = None
        try:
            while not self._stop.is_set():
                delay = next_at - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                    continue
                next_at += period
                if next_at < time.monotonic():
                    next_at = time.monotonic() + period  # behind: do not burst to catch up
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                conn = self._one(index, conn, f"user-{rng.randrange(self.users)}")
        finally:
            if conn is not None:
                conn.close()

    def _one(
        self, index: int, conn: http.client.HTTPConnection, user: str
    ) -> http.client.HTTPConnection | None:
        headers = {"content-type": "application/json", self.sticky_header: user}
        sent = time.monotonic()
        self._in_flight[index] = sent
        try:
            conn.request("POST", self.path, body=self.body, headers=headers)
            resp = conn.getresponse()
            resp.read()
        except (OSError, http.client.HTTPException):
            self.replies.append(Reply(sent, time.monotonic(), 0, "", "", False))
            self._in_flight[index] = None
            conn.close()
            return None  # a new connection for the next request
        self.replies.append(
            Reply(
                sent,
                time.monotonic(),
                resp.status,
                resp.getheader("x-turnout-variant", ""),
                resp.getheader("x-turnout-model-version", ""),
                resp.getheader("x-turnout-retried") == "true",
            )
        )
        self._in_flight[index] = None  # after the append: never neither in flight nor recorded
        return conn
