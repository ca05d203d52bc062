"""A real API server read from a test: lists, watches and its own request counters.

The cluster tests watch what turnout's processes do through the API server itself, as an
admin, over plain HTTP: no kubectl process per read, so a test can poll every 100 ms. Reads
are lists, not gets, so that they do not mix with a controller's own GETs in
``apiserver_request_total``.
"""

from __future__ import annotations

import contextlib
import json
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import yaml

from tests.k8s.cluster import Cluster
from turnout.core import isvc
from turnout.core.crd import GROUP, PLURAL, VERSION

MDEPS = f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/{PLURAL}"
ISVCS = f"/apis/{isvc.API_VERSION}/namespaces/{{ns}}/inferenceservices"


def wait_until(
    what: str, probe: Callable[[], Any], *, timeout_s: float = 60.0, every_s: float = 0.1
) -> Any:
    """``probe()``'s first true value, tried every ``every_s``; AssertionError at the end."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := probe():
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")


class Api:
    """The API server as an admin."""

    def __init__(self, cluster: Cluster) -> None:
        config = yaml.safe_load(cluster.kubeconfig.read_text())
        token = config["users"][0]["user"]["token"]
        self.client = httpx.Client(
            base_url=cluster.server,
            verify=ssl.create_default_context(cafile=cluster.ca),
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )

    def get(self, path: str, **params: str) -> Any:
        for _ in range(50):
            resp = self.client.get(path, params=params)
            if resp.status_code != 429:  # a new CRD's storage is still initialising
                break
            time.sleep(0.2)
        resp.raise_for_status()
        return resp.json()

    def items(self, path: str, ns: str) -> dict[str, dict[str, Any]]:
        return {o["metadata"]["name"]: o for o in self.get(path.format(ns=ns))["items"]}

    def deployment(self, ns: str, name: str) -> dict[str, Any] | None:
        return self.items(MDEPS, ns).get(name)

    def inference_services(self, ns: str, deployment: str) -> dict[str, dict[str, Any]]:
        return {
            name: o
            for name, o in self.items(ISVCS, ns).items()
            if o["metadata"].get("labels", {}).get(isvc.DEPLOYMENT_LABEL) == deployment
        }

    def requests(self, verb: str, resource: str, subresource: str = "") -> int:
        """The API server's own count of successful requests (apiserver_request_total)."""
        resp = self.client.get("/metrics")
        resp.raise_for_status()
        total = 0.0
        for line in resp.text.splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.partition("}")[0]))
            if (labels["verb"], labels["resource"], labels["subresource"]) == (
                verb,
                resource,
                subresource,
            ) and labels["code"].startswith("2"):
                total += float(line.rsplit(" ", 1)[1])
        return int(total)


class Watch:
    """Every state of one ModelDeployment the API server reports, from a real watch."""

    def __init__(self, api: Api, ns: str, name: str) -> None:
        listed = api.get(MDEPS.format(ns=ns), fieldSelector=f"metadata.name={name}")
        #: The status before the watch began ({} if the object did not exist).
        self.before = next(((o.get("status") or {}) for o in listed["items"]), {})
        self.objects: list[dict[str, Any]] = []
        self._api, self._path = api, MDEPS.format(ns=ns)
        self._params = {
            "watch": "1",
            "fieldSelector": f"metadata.name={name}",
            "resourceVersion": listed["metadata"]["resourceVersion"],
        }
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # Reads time out after a quiet second so that close() is noticed (an open watch holds
        # the API server's shutdown for 15 s); the next watch goes on from the last
        # resourceVersion seen.
        timeout = httpx.Timeout(10, read=1.0)
        while not self._closed:
            with (
                contextlib.suppress(httpx.HTTPError, httpx.StreamError),
                self._api.client.stream(
                    "GET", self._path, params=self._params, timeout=timeout
                ) as resp,
            ):
                # 429/504: the watch cache has not reached the list's resourceVersion yet.
                if resp.status_code == 200:
                    for line in resp.iter_lines():
                        event = json.loads(line)
                        if event["type"] in ("ADDED", "MODIFIED"):
                            self.objects.append(event["object"])
                            meta = event["object"]["metadata"]
                            self._params["resourceVersion"] = meta["resourceVersion"]
            if not self._closed:
                time.sleep(0.1)

    def statuses(self, upto: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Each status the object went through after the watch began; with ``upto`` (the
        object as a GET returned it), once the watch has delivered that state too (a watch
        can trail a GET by a moment)."""
        if upto is not None:
            version = upto["metadata"]["resourceVersion"]
            deadline = time.monotonic() + 30
            while all(o["metadata"]["resourceVersion"] != version for o in self.objects):
                assert time.monotonic() < deadline, f"the watch never delivered {version}"
                time.sleep(0.05)
        seen = [self.before]
        for obj in self.objects:
            status = obj.get("status") or {}
            if status and status != seen[-1]:
                seen.append(status)
        return seen[1:]

    def close(self) -> None:
        self._closed = True
        self._thread.join(timeout=5)


@contextlib.contextmanager
def watching(api: Api, ns: str, name: str) -> Iterator[Watch]:
    watch = Watch(api, ns, name)
    try:
        yield watch
    finally:
        watch.close()
