"""turnout/io/kube.py through the real kubernetes client, against a stub API server on loopback.

The operator, router and plugin tests fake this module; these tests check the module itself:
the URLs, verbs and content types it sends, and how it turns API errors into KubeError.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest
from kubernetes import client

from turnout.io.kube import Conflict, Gone, Kube, KubeError, NotFound

MD = "/apis/turnout.dev/v1alpha1/namespaces/risk/modeldeployments"
ISVC = "/apis/serving.kserve.io/v1beta1/namespaces/risk/inferenceservices"


class Stub:
    """Answers each (method, path) with a scripted (status, body); records every request."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], tuple[int, Any]] = {}
        self.requests: list[dict[str, Any]] = []

    def handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                path, _, query = self.path.partition("?")
                stub.requests.append(
                    {
                        "method": self.command,
                        "path": path,
                        "query": query,
                        "content_type": self.headers.get("content-type"),
                        "body": json.loads(body) if body else None,
                    }
                )
                status, doc = stub.answers.get((self.command, path), (404, _status(404)))
                data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


def _status(code: int, message: str = "not found") -> dict[str, Any]:
    reason = {404: "NotFound", 409: "Conflict", 410: "Expired", 403: "Forbidden"}[code]
    return {
        "reason": reason,
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "message": message,
    }


@pytest.fixture
def stub() -> Iterator[tuple[Stub, Kube]]:
    s = Stub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), s.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    config = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    try:
        yield s, Kube(client.ApiClient(config), namespace="risk")
    finally:
        server.shutdown()


def test_get_and_not_found(stub: tuple[Stub, Kube]):
    s, kube = stub
    s.answers[("GET", f"{MD}/fraud")] = (200, {"metadata": {"name": "fraud"}})
    assert kube.get_deployment("risk", "fraud") == {"metadata": {"name": "fraud"}}
    s.answers[("GET", f"{MD}/gone")] = (404, _status(404, 'modeldeployments "gone" not found'))
    with pytest.raises(NotFound, match='modeldeployments "gone" not found'):
        kube.get_deployment("risk", "gone")


def test_spec_and_status_are_merge_patches_on_their_own_endpoints(stub: tuple[Stub, Kube]):
    s, kube = stub
    s.answers[("PATCH", f"{MD}/fraud")] = (200, {})
    s.answers[("PATCH", f"{MD}/fraud/status")] = (200, {})
    kube.patch_deployment("risk", "fraud", {"spec": {"candidate": None}})
    kube.patch_deployment_status("risk", "fraud", {"phase": "Idle"})
    spec, status = s.requests
    assert spec["content_type"] == status["content_type"] == "application/merge-patch+json"
    assert spec["body"] == {"spec": {"candidate": None}}, "null must reach the server"
    assert status["body"] == {"status": {"phase": "Idle"}}


def test_a_stale_resource_version_is_a_conflict(stub: tuple[Stub, Kube]):
    s, kube = stub
    s.answers[("PATCH", f"{MD}/fraud")] = (409, _status(409, "the object has been modified"))
    with pytest.raises(Conflict, match="has been modified"):
        kube.patch_deployment("risk", "fraud", {"metadata": {"resourceVersion": "1"}})


def test_a_status_patch_can_carry_the_resource_version_it_follows(stub: tuple[Stub, Kube]):
    s, kube = stub
    s.answers[("PATCH", f"{MD}/fraud/status")] = (409, _status(409, "the object has been modified"))
    with pytest.raises(Conflict, match="has been modified"):
        kube.patch_deployment_status("risk", "fraud", {"phase": "Idle"}, resource_version="7")
    (sent,) = s.requests
    assert sent["body"] == {"status": {"phase": "Idle"}, "metadata": {"resourceVersion": "7"}}


def test_inference_services_by_label_create_and_delete(stub: tuple[Stub, Kube]):
    s, kube = stub
    s.answers[("GET", ISVC)] = (200, {"items": [{"metadata": {"name": "fraud-v1"}}]})
    s.answers[("POST", ISVC)] = (201, {"metadata": {"name": "fraud-v2"}})
    items = kube.list_inference_services("risk", "turnout.dev/deployment=fraud")
    assert [i["metadata"]["name"] for i in items] == ["fraud-v1"]
    assert parse_qs(s.requests[0]["query"])["labelSelector"] == ["turnout.dev/deployment=fraud"]
    kube.create_inference_service({"metadata": {"name": "fraud-v2", "namespace": "risk"}})
    assert s.requests[1]["body"]["metadata"]["name"] == "fraud-v2"
    kube.delete_inference_service("risk", "fraud-v0")  # already gone: not an error
    assert (s.requests[2]["method"], s.requests[2]["path"]) == ("DELETE", f"{ISVC}/fraud-v0")


def test_events_name_the_object_and_a_failure_to_post_is_not_raised(
    stub: tuple[Stub, Kube], caplog: pytest.LogCaptureFixture
):
    s, kube = stub
    s.answers[("POST", "/api/v1/namespaces/risk/events")] = (201, {})
    obj = {
        "apiVersion": "turnout.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "fraud", "namespace": "risk", "uid": "u1"},
    }
    kube.emit_event(obj, type="Warning", reason="RolledBack", message="errorRate 0.2 > 0.01")
    body = s.requests[0]["body"]
    assert body["involvedObject"]["uid"] == "u1"
    assert (body["type"], body["reason"], body["message"]) == (
        "Warning",
        "RolledBack",
        "errorRate 0.2 > 0.01",
    )
    s.answers[("POST", "/api/v1/namespaces/risk/events")] = (403, _status(403, "forbidden"))
    kube.emit_event(obj, type="Normal", reason="Started", message="x")  # logged, not raised
    assert "could not post event Started on fraud: forbidden" in caplog.text


def test_watch_yields_events_and_a_410_is_gone(stub: tuple[Stub, Kube]):
    s, kube = stub
    lines = [
        {"type": "ADDED", "object": {"metadata": {"name": "fraud", "resourceVersion": "5"}}},
        {"type": "ERROR", "object": _status(410, "too old resource version")},
    ]
    s.answers[("GET", MD)] = (200, "\n".join(json.dumps(x) for x in lines).encode() + b"\n")
    events = kube.watch_deployments("risk", "4", timeout_s=5)
    first = next(events)
    assert (first.type, first.object["metadata"]["name"]) == ("ADDED", "fraud")
    with pytest.raises(Gone):
        next(events)
    query = parse_qs(s.requests[0]["query"])
    assert (query["watch"], query["resourceVersion"]) == (["true"], ["4"])


def test_an_unreachable_server_is_a_kube_error():
    config = client.Configuration(host="http://127.0.0.1:9")
    config.retries = 0
    kube = Kube(client.ApiClient(config), namespace="risk")
    with pytest.raises(KubeError) as info:
        kube.list_deployments(None)
    assert info.value.status == 0
