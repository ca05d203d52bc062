"""A stand-in for Prometheus's query API, answering the operator's PromQL with set numbers.

The operator judges each canary step from Prometheus (services/controller/prometheus.py),
and `turnout operator` has no other metrics source. The operator tests are about what it does
with the API server, not about measuring traffic (the cluster stories run a real Prometheus),
so this answers the queries of services/controller/queries.py with numbers the test chooses:
a healthy candidate by default, no requests to hold a step, and a ``hold`` that keeps the
operator inside an analysis while the test edits the ModelDeployment.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from services.controller import queries

#: The provider times a query out after 5 s: a hold must end before that.
HOLD_MAX_S = 4.0


@dataclass
class StubPrometheus:
    #: Requests in the window, per version (absent: ``requests``).
    requests: float = 200.0
    error_rate: float = 0.0
    p99_ms: float = 10.0
    #: Analyses a candidate version is judged on data; later ones read no requests, so its
    #: step waits (InsufficientData). Absent: no limit.
    analyses_allowed: dict[str, int] = field(default_factory=dict)
    #: Every query asked, in order.
    asked: list[str] = field(default_factory=list)
    url: str = ""
    #: Cleared: a query about the candidate waits (at most HOLD_MAX_S) until it is set again.
    released: threading.Event = field(default_factory=threading.Event)
    #: Set when a query is waiting on ``released``.
    holding: threading.Event = field(default_factory=threading.Event)

    _judged: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.released.set()

    def answer(self, expr: str) -> float | None:
        self.asked.append(expr)
        variant = _label(expr, "variant")
        if variant == "candidate" and not self.released.is_set():
            self.holding.set()
            self.released.wait(HOLD_MAX_S)
        version = _label(expr, "version") or ""
        if expr.startswith(f"sum(increase({queries.CALLS}"):
            if variant == "candidate":
                self._judged[version] = self._judged.get(version, 0) + 1
                if self._judged[version] > self.analyses_allowed.get(version, sys.maxsize):
                    return 0.0
            return self.requests
        if expr.startswith(f"(sum(rate({queries.CALLS}"):
            return self.error_rate
        if expr.startswith("histogram_quantile"):
            return self.p99_ms
        return None  # drift, shadow and A/B series: none recorded

    def reset(self) -> None:
        """Healthy again: plenty of requests for every version, no errors, fast, no hold."""
        self.requests, self.error_rate, self.p99_ms = 200.0, 0.0, 10.0
        self.analyses_allowed.clear()
        self._judged.clear()
        self.released.set()
        self.holding.clear()

    def allow(self, version: str, analyses: int | None) -> None:
        """Judge ``version`` on data for this many more analyses (None: from now on)."""
        self._judged[version] = 0
        if analyses is None:
            self.analyses_allowed.pop(version, None)
        else:
            self.analyses_allowed[version] = analyses


def _label(expr: str, name: str) -> str | None:
    match = re.search(rf'{name}="([^"]*)"', expr)
    return match.group(1) if match else None


@contextmanager
def serve(stub: StubPrometheus) -> Iterator[StubPrometheus]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path != "/api/v1/query":
                self.send_error(404)
                return
            expr = parse_qs(url.query).get("query", [""])[0]
            value = stub.answer(expr)
            result = [] if value is None else [{"metric": {}, "value": [0, str(value)]}]
            body = json.dumps(
                {"status": "success", "data": {"resultType": "vector", "result": result}}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    stub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        stub.released.set()
        server.shutdown()
        server.server_close()
