"""An in-memory stand-in for turnout.io.kube.Kube, with the API server's rules that matter here.

- A merge patch follows RFC 7386 (null deletes); ``metadata.resourceVersion`` in a patch is an
  optimistic lock (Conflict when stale), as on a real server.
- ``metadata.generation`` moves when the spec changes, never for status or metadata.
- The status subresource: a status patch changes only status; a main patch never does.
- Deleting an owner deletes the objects whose ownerReferences name its uid (garbage collection).

``no_http`` makes the real client's HTTP layer raise, so a test passes only if every call
went through the wrapper.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from turnout.io.kube import Conflict, KubeError, NotFound, Obj, WatchEvent


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


class FakeKube:
    def __init__(self, namespace: str = "default") -> None:
        self.namespace = namespace
        self.deployments: dict[tuple[str, str], Obj] = {}
        self.isvcs: dict[tuple[str, str], Obj] = {}
        self.events: list[dict[str, str]] = []
        #: Every write, as (verb, kind, name, body), to assert what was sent.
        self.writes: list[tuple[str, str, str, Obj]] = []
        #: Scripted watch streams, consumed one per watch call: lists of WatchEvent or errors.
        self.streams: list[list[WatchEvent | KubeError]] = []
        self._rv = itertools.count(100)
        self._uid = itertools.count(1)

    # --- test setup ----------------------------------------------------------------------

    def add_deployment(self, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", self.namespace)
        meta.setdefault("uid", f"uid-{next(self._uid)}")
        meta.setdefault("generation", 1)
        meta["resourceVersion"] = str(next(self._rv))
        self.deployments[(meta["namespace"], meta["name"])] = obj
        return copy.deepcopy(obj)

    def delete_deployment(self, namespace: str, name: str) -> None:
        obj = self.deployments.pop((namespace, name))
        uid = obj["metadata"]["uid"]
        for key, isvc in list(self.isvcs.items()):
            owners = isvc["metadata"].get("ownerReferences", [])
            if any(o["uid"] == uid for o in owners):
                del self.isvcs[key]

    def set_ready(self, namespace: str, name: str, ready: bool = True, *, url: str = "") -> None:
        """What KServe would write once the predictor's pods pass their readiness probe."""
        isvc = self.isvcs[(namespace, name)]
        isvc["status"] = {
            "observedGeneration": isvc["metadata"]["generation"],
            "url": url or f"http://{name}.{namespace}.example.com",
            "address": {"url": url or f"http://{name}-predictor.{namespace}.svc.cluster.local"},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        }

    # --- KubeApi -------------------------------------------------------------------------

    def default_namespace(self) -> str:
        return self.namespace

    def get_deployment(self, namespace: str, name: str) -> Obj:
        try:
            return copy.deepcopy(self.deployments[(namespace, name)])
        except KeyError:
            raise NotFound(404, f'modeldeployments.turnout.dev "{name}" not found') from None

    def list_deployments(self, namespace: str | None) -> tuple[list[Obj], str]:
        items = [
            copy.deepcopy(o)
            for (ns, _), o in sorted(self.deployments.items())
            if namespace is None or ns == namespace
        ]
        return items, str(next(self._rv))

    def watch_deployments(
        self, namespace: str | None, resource_version: str, *, timeout_s: int
    ) -> Iterator[WatchEvent]:
        script = self.streams.pop(0) if self.streams else []
        for item in script:
            if isinstance(item, KubeError):
                raise item
            yield item

    def patch_deployment(self, namespace: str, name: str, patch: Obj) -> Obj:
        obj = self.get_deployment(namespace, name)
        self.writes.append(("patch", "ModelDeployment", name, copy.deepcopy(patch)))
        wanted = patch.get("metadata", {}).get("resourceVersion")
        if wanted is not None and wanted != obj["metadata"]["resourceVersion"]:
            raise Conflict(409, "the object has been modified; please apply your changes again")
        patch = {k: v for k, v in patch.items() if k != "status"}
        new = merge_patch(obj, patch)
        if new.get("spec") != obj.get("spec"):
            new["metadata"]["generation"] += 1
        new["metadata"]["resourceVersion"] = str(next(self._rv))
        self.deployments[(namespace, name)] = new
        return copy.deepcopy(new)

    def patch_deployment_status(
        self, namespace: str, name: str, status: Obj, *, resource_version: str | None = None
    ) -> Obj:
        obj = self.get_deployment(namespace, name)
        self.writes.append(("patch-status", "ModelDeployment", name, copy.deepcopy(status)))
        if resource_version is not None and resource_version != obj["metadata"]["resourceVersion"]:
            raise Conflict(409, "the object has been modified; please apply your changes again")
        obj["status"] = merge_patch(obj.get("status", {}), status)
        obj["metadata"]["resourceVersion"] = str(next(self._rv))
        self.deployments[(namespace, name)] = obj
        return copy.deepcopy(obj)

    def list_inference_services(self, namespace: str, selector: str) -> list[Obj]:
        return [
            copy.deepcopy(o)
            for (ns, _), o in sorted(self.isvcs.items())
            if ns == namespace and _matches(o["metadata"].get("labels", {}), selector)
        ]

    def get_inference_service(self, namespace: str, name: str) -> Obj:
        try:
            return copy.deepcopy(self.isvcs[(namespace, name)])
        except KeyError:
            raise NotFound(404, f'inferenceservices "{name}" not found') from None

    def create_inference_service(self, body: Obj) -> Obj:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        self.writes.append(("create", "InferenceService", meta["name"], copy.deepcopy(body)))
        if key in self.isvcs:
            raise Conflict(409, f'inferenceservices "{meta["name"]}" already exists')
        obj = copy.deepcopy(body)
        obj["metadata"].update(generation=1, resourceVersion=str(next(self._rv)))
        self.isvcs[key] = obj
        return copy.deepcopy(obj)

    def patch_inference_service(self, namespace: str, name: str, patch: Obj) -> Obj:
        self.writes.append(("patch", "InferenceService", name, copy.deepcopy(patch)))
        try:
            obj = self.isvcs[(namespace, name)]
        except KeyError:
            raise NotFound(404, f'inferenceservices "{name}" not found') from None
        new = merge_patch(obj, patch)
        if new.get("spec") != obj.get("spec"):
            new["metadata"]["generation"] += 1
        self.isvcs[(namespace, name)] = new
        return copy.deepcopy(new)

    def delete_inference_service(self, namespace: str, name: str) -> None:
        self.writes.append(("delete", "InferenceService", name, {}))
        self.isvcs.pop((namespace, name), None)

    def emit_event(self, obj: Obj, *, type: str, reason: str, message: str) -> None:
        self.events.append(
            {"name": obj["metadata"]["name"], "type": type, "reason": reason, "message": message}
        )

    # --- reading back ------------------------------------------------------------------

    def status(self, name: str, namespace: str | None = None) -> Obj:
        return self.get_deployment(namespace or self.namespace, name).get("status", {})

    def spec(self, name: str, namespace: str | None = None) -> Obj:
        return self.get_deployment(namespace or self.namespace, name)["spec"]

    def reasons(self, name: str | None = None) -> list[str]:
        return [e["reason"] for e in self.events if name is None or e["name"] == name]


@pytest.fixture(autouse=True)
def no_http(monkeypatch: pytest.MonkeyPatch) -> None:
    """The HTTP layer under turnout.io.kube must not be reached in these tests."""

    def must_not_be_called(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the Kubernetes HTTP layer must not be called in this test")

    from kubernetes.client import api_client, rest

    monkeypatch.setattr(api_client.ApiClient, "call_api", must_not_be_called)
    monkeypatch.setattr(rest.RESTClientObject, "request", must_not_be_called)
