"""The real router process in cluster mode (`turnout route --kube`), fed by an API server stub.

No Kubernetes API server runs here, so a small HTTP server on loopback plays one for the
ModelDeployments resource: a list, then a chunked watch stream the test writes events into.
The router reaches it through a kubeconfig, exactly as it would reach a cluster from a laptop.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.servers import fake_upstream, process
from turnout.io.processes import free_port

pytestmark = pytest.mark.slow

MD_PATH = "/apis/turnout.dev/v1alpha1/namespaces/risk/modeldeployments"
CLOSE = object()  # ends the current watch, as the API server does when its timeout expires


class ApiStub:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.events: queue.Queue[Any] = queue.Queue()
        self.watches = 0
        self.rv = 100

    def push(self, kind: str, obj: dict[str, Any]) -> None:
        self.rv += 1
        obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.rv)}}
        self.events.put({"type": kind, "object": obj})

    def handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                if path != MD_PATH:
                    self._send(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                elif "watch=true" in query.lower():
                    stub.watches += 1
                    self._watch()
                else:
                    doc = {"items": stub.items, "metadata": {"resourceVersion": str(stub.rv)}}
                    self._send(200, doc)

            def _send(self, status: int, doc: dict[str, Any]) -> None:
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _watch(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                while True:
                    try:
                        event = stub.events.get(timeout=30)
                    except queue.Empty:
                        event = CLOSE
                    if event is CLOSE:
                        self.wfile.write(b"0\r\n\r\n")
                        self.wfile.flush()
                        return
                    line = json.dumps(event).encode() + b"\n"
                    self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                    self.wfile.flush()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


def deployment(stable: str, candidate: str | None = None, weight: float = 0) -> dict[str, Any]:
    routing: dict[str, Any] = {"stable": {"version": "v1", "url": stable}, "salt": "s1"}
    if candidate is not None:
        routing["candidate"] = {"version": "v2", "url": candidate, "weight": weight}
    return {
        "apiVersion": "turnout.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "fraud", "namespace": "risk", "generation": 1},
        "spec": {"model": "fraud", "stable": {"version": "v1", "image": "r/fraud:v1"}},
        "status": {"phase": "Progressing", "routing": routing},
    }


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[ApiStub, Path]]:
    stub = ApiStub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), stub.handler())
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "stub",
                        "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"},
                    }
                ],
                "users": [{"name": "me", "user": {"token": "t"}}],
                "contexts": [
                    {
                        "name": "stub",
                        "context": {"cluster": "stub", "user": "me", "namespace": "risk"},
                    }
                ],
                "current-context": "stub",
            }
        )
    )
    try:
        yield stub, kubeconfig
    finally:
        stub.events.put(CLOSE)
        server.shutdown()


def until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


def infer(client: httpx.Client) -> httpx.Response:
    body = {"inputs": [{"name": "features", "shape": [1, 2], "datatype": "FP32", "data": [0, 1]}]}
    return client.post("/v2/models/fraud/infer", json=body)


def test_router_follows_model_deployments_in_the_cluster(
    api: tuple[ApiStub, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    stub, kubeconfig = api
    v1_url, v1 = fake_upstream(version="v1")
    v2_url, v2 = fake_upstream(version="v2")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "turnout", "route", "--kube", "--port", str(port)]
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    stub.items = [deployment(v1_url)]
    with (
        v1,
        v2,
        process(args, f"{base}/v2/health/ready", "router-kube.log"),
        httpx.Client(base_url=base, timeout=5) as client,
    ):
        # The initial list routes stable; the namespace comes from the kubeconfig context.
        assert infer(client).headers["x-turnout-model-version"] == "v1"
        assert client.get("/routes").json()["source"] == "kubernetes: namespace risk"

        # A status change arrives on the watch: all traffic to the candidate.
        until(lambda: stub.watches >= 1, "the router watches")
        stub.push("MODIFIED", deployment(v1_url, v2_url, weight=100))
        until(lambda: infer(client).headers["x-turnout-model-version"] == "v2", "v2 serves")

        # A malformed status is rejected with its field named; v2 keeps serving.
        stub.push("MODIFIED", deployment(v1_url, v2_url, weight=150))
        until(lambda: "weight" in (client.get("/routes").json()["lastError"] or ""), "error")
        assert infer(client).headers["x-turnout-model-version"] == "v2"

        # The watch ends (server timeout): the router watches again and keeps following.
        stub.events.put(CLOSE)
        until(lambda: stub.watches >= 2, "the router re-watches")
        stub.push("MODIFIED", deployment(v1_url, v2_url, weight=0))
        until(lambda: infer(client).headers["x-turnout-model-version"] == "v1", "back to v1")

        # The ModelDeployment is deleted: the model is no longer served; the router stays up.
        stub.push("DELETED", deployment(v1_url))
        until(lambda: infer(client).status_code == 404, "fraud is not served")
        assert client.get("/v2/health/ready").status_code == 200
