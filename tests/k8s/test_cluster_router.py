"""The router's cluster route source against a real API server and a real model server.

`turnout route --kube`, started with the command line the chart's router Deployment runs and a
token the API server issued to the chart's router ServiceAccount (with the chart's Role), lists
and watches ModelDeployments. The test plays the operator: it writes ``status.routing``
through the status subresource with turnout's own client, pointing stable at ``turnout serve``
of a version it trained with ``turnout train`` into its own store, and the candidate at a stub
model server (tests/fake_upstream.py), and checks what callers of the router get.

A watch that expires: any change to a CRD's spec (here a description, as applying a newer CRD
does) makes the API server drop that resource's storage and watch cache and build them again
from a fresh list. Open watches end; one resumed from a resourceVersion older than that list
is answered 410 Gone ("too old resource version"), and the router must list again. The 410 is
reliable: the CRD's own update is newer than anything the router has seen. Restarting the API
server or compacting the storage would also do it, but not on demand: the control plane is
shared by the session, and compacting kine takes an etcd client.

API keys: the chart's router Secret is created in the API server as rendered, and the router
reads it where the Deployment mounts it. There is no kubelet, so the test plays its part
(SecretVolume): it reads the Secret from the API server and writes the items the Deployment's
volume names the way the kubelet's atomic writer does, a new directory swapped in under
``..data`` by symlink, again whenever the test changes the Secret.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.test_router_kube import until
from tests.k8s.cluster import Cluster
from tests.k8s.conftest import CHART, ROOT
from tests.k8s.test_cluster_kubectl import Shell, ok
from tests.servers import readme_recipe, stop, wait_ready
from turnout.io.kube import Kube, KubeError
from turnout.io.processes import free_port

pytestmark = pytest.mark.cluster

#: Where the ModelDeployment lives; the router watches only this namespace.
NS = "routing"
RELEASE, RELEASE_NS = "rt", "rt-system"
ROUTER_ACCOUNT = f"{RELEASE}-turnout-router"
CRD = "modeldeployments.turnout.dev"
DESCRIPTION = "/spec/versions/0/schema/openAPIV3Schema/description"


class SecretVolume:
    """The router's Secret volume as the kubelet keeps it: the Deployment's items, written to
    a fresh directory that ``..data`` is swapped to, each item a symlink through ``..data``."""

    def __init__(self, root: Path, volume: dict[str, Any]) -> None:
        self.root = root
        self.name = volume["secret"]["secretName"]
        self.items = volume["secret"]["items"]
        root.mkdir(parents=True, exist_ok=True)

    def sync(self, cluster: Cluster) -> dict[str, str]:
        """Copy the Secret from the API server into the volume; its data, decoded."""
        data = cluster.get("secret", self.name, "-n", RELEASE_NS)["data"]
        fresh = self.root / f"..{time.time_ns()}"
        fresh.mkdir()
        for item in self.items:
            (fresh / item["path"]).write_bytes(base64.b64decode(data[item["key"]]))
        swap = self.root / "..data_tmp"
        swap.symlink_to(fresh.name)
        os.replace(swap, self.root / "..data")
        for item in self.items:
            link = self.root / item["path"]
            if not link.is_symlink():
                link.symlink_to(Path("..data") / item["path"])
        return {k: base64.b64decode(v).decode() for k, v in data.items()}


@dataclass(frozen=True)
class Stack:
    router: str  # base URL
    router_log: Path
    stable_url: str  # turnout serve fraud:v1
    candidate_url: str  # the stub answering as v2
    admin: Kube
    #: The admin key the chart generated, read from its Secret.
    key: str
    secret: SecretVolume

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}"}

    def routing(self, *, weight: float | None = None, candidate_url: str = "") -> dict[str, Any]:
        """A complete status.routing: stable v1, and v2 at ``weight`` (None: no candidate)."""
        candidate = None
        if weight is not None:
            url = candidate_url or self.candidate_url
            candidate = {"version": "v2", "url": url, "weight": weight}
        stable = {"version": "v1", "url": self.stable_url}
        return {"stable": stable, "candidate": candidate, "shadow": None}

    def write_routing(self, routing: dict[str, Any]) -> None:
        """What the operator does each pass: a merge patch of the status subresource."""
        self.admin.patch_deployment_status(NS, "fraud", {"routing": routing})

    def routes(self) -> Any:
        return httpx.get(f"{self.router}/routes", headers=self.headers, timeout=5).json()


def _example_body() -> dict[str, Any]:
    from training.data import FRAUD_SCHEMA, generate

    row = generate(1, seed=7)[FRAUD_SCHEMA.names].iloc[0]
    data = [round(float(v), 4) for v in row]
    return {"inputs": [{"name": "features", "shape": [1, len(data)], "datatype": "FP32",
                        "data": data}]}  # fmt: skip


BODY = _example_body()


def infer(stack: Stack, model: str = "fraud", *, key: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else stack.headers
    url = f"{stack.router}/v2/models/{model}/infer"
    return httpx.post(url, json=BODY, headers=headers, timeout=10)


def served_by(stack: Stack, model: str = "fraud") -> tuple[str, str]:
    """(arm, version) that answered, or ("error", the status) when none did."""
    reply = infer(stack, model)
    if reply.status_code != 200:
        return "error", str(reply.status_code)
    return reply.headers["x-turnout-variant"], reply.headers["x-turnout-model-version"]


@contextlib.contextmanager
def _process(
    argv: list[str], *, log: Path, env: dict[str, str], ready: str | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        if ready is not None:
            wait_ready(ready, proc)
        yield proc
    finally:
        stop(proc)


def _router_rbac(cluster: Cluster, helm: Path) -> list[dict[str, Any]]:
    """The chart's router ServiceAccount, Role, RoleBinding and Secret, rendered for namespace
    NS."""
    namespaces = f"router.watchNamespaces={{{NS}}}"
    out = cluster.run(helm, "template", RELEASE, CHART, "-n", RELEASE_NS, "--set", namespaces)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    router = [d for d in docs if d["metadata"].get("name") == ROUTER_ACCOUNT]
    kinds = {d["kind"] for d in router}
    assert {"ServiceAccount", "Role", "RoleBinding", "Deployment", "Secret"} <= kinds, kinds
    return router


def _secret_volume(objects: list[dict[str, Any]], root: Path) -> tuple[SecretVolume, str]:
    """The router's Secret volume under ``root``, and where the Deployment mounts it."""
    (deployment,) = [d for d in objects if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "router-secret"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    return SecretVolume(root, volume), mount["mountPath"]


def _router_args(
    objects: list[dict[str, Any]], port: int, *, mounted: tuple[str, Path]
) -> list[str]:
    """The chart's router command line, on loopback and a free port, with the mounted Secret
    (``mounted``: its path in the pod, and here) where this test keeps it."""
    (deployment,) = [d for d in objects if d["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    in_pod, here = mounted
    args = [
        a.replace(in_pod, str(here), 1) if a.startswith(in_pod) else a for a in container["args"]
    ]
    assert args != container["args"]  # the router reads a file from its Secret
    args[args.index("--host") + 1] = "127.0.0.1"
    args[args.index("--port") + 1] = str(port)
    assert container["command"] == ["turnout", "route"]
    assert args[:3] == ["--kube", "--namespace", NS]
    return [sys.executable, "-m", "turnout", "route", *args]


def _deployment(model: str, *, stable: str, candidate: str | None = None) -> dict[str, Any]:
    image = f"registry.example.com/{model}:{{}}"
    spec: dict[str, Any] = {
        "model": model,
        "stable": {"version": stable, "image": image.format(stable)},
    }
    if candidate is not None:
        spec["candidate"] = {"version": candidate, "image": image.format(candidate)}
    return {
        "apiVersion": "turnout.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": model, "namespace": NS},
        "spec": spec,
    }


@pytest.fixture(scope="module")
def stack(
    cluster: Cluster, helm: Path, turnout_crds: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("router")
    home = work / "home"
    store = {**os.environ, "TURNOUT_HOME": str(home), "BENTOML_HOME": str(home / "bentoml")}
    turnout = [sys.executable, "-m", "turnout"]
    serve_port, stub_port, router_port = free_port(), free_port(), free_port()
    stable_url, stub_url = f"http://127.0.0.1:{serve_port}", f"http://127.0.0.1:{stub_port}"
    router_url = f"http://127.0.0.1:{router_port}"
    fraud = _deployment("fraud", stable="v1", candidate="v2")
    # A second model in the same namespace, served by the stub alone.
    digits = _deployment("digits", stable="v2")
    with contextlib.ExitStack() as running:
        # Training takes a while: the cluster is set up meanwhile.
        training = running.enter_context(
            _process([*turnout, "train", "--rows", "3000", "--version", "v1"],
                     log=work / "train.log", env=store)
        )  # fmt: skip
        for namespace in (NS, RELEASE_NS):
            cluster.namespace(namespace)
        objects = _router_rbac(cluster, helm)
        # The API server takes the chart's Secret as rendered; the test plays the kubelet.
        cluster.apply([d for d in objects if d["kind"] != "Deployment"])
        secret, in_pod = _secret_volume(objects, work / "router-secret")
        key = secret.sync(cluster)["admin-key"]
        router_env = {
            **os.environ,
            "KUBECONFIG": str(cluster.service_account_kubeconfig(RELEASE_NS, ROUTER_ACCOUNT)),
        }
        cluster.apply([fraud, digits])
        running.callback(cluster.delete, [fraud, digits])
        stub = [sys.executable, "-m", "tests.fake_upstream", "--port", str(stub_port)]
        running.enter_context(
            _process([*stub, "--version", "v2"], log=work / "stub.log", env=dict(os.environ),
                     ready=f"{stub_url}/readyz")
        )  # fmt: skip
        running.enter_context(
            _process(_router_args(objects, router_port, mounted=(in_pod, secret.root)),
                     log=work / "router.log",
                     env=router_env, ready=f"{router_url}/v2/health/ready")
        )  # fmt: skip
        if training.wait(timeout=240) != 0:
            raise AssertionError(f"turnout train failed:\n{(work / 'train.log').read_text()}")
        serve = [*turnout, "serve", "fraud:v1", "--port", str(serve_port)]
        running.enter_context(
            _process(serve, log=work / "serve.log", env=store, ready=f"{stable_url}/readyz")
        )
        admin = Kube.connect(kubeconfig=str(cluster.kubeconfig))
        digits_routing = {"stable": {"version": "v2", "url": stub_url}}
        admin.patch_deployment_status(NS, "digits", {"routing": digits_routing})
        yield Stack(router_url, work / "router.log", stable_url, stub_url, admin, key, secret)


@pytest.fixture
def at_rest(stack: Stack) -> Stack:
    """Stable v1 serves everything, the candidate v2 at 0 %, and the router shows no error."""
    stack.write_routing(stack.routing(weight=0))
    until(lambda: served_by(stack) == ("stable", "v1"), "v1 serves")
    until(lambda: stack.routes()["lastError"] is None, "no error on /routes")
    return stack


def test_router_serves_the_versions_status_routing_names(at_rest: Stack) -> None:
    routes = at_rest.routes()
    assert routes["source"] == f"kubernetes: namespace {NS}"
    assert sorted(routes["table"]["models"]) == ["digits", "fraud"]
    assert served_by(at_rest, "digits") == ("stable", "v2")
    assert routes["table"]["models"]["fraud"]["stable"]["url"] == at_rest.stable_url
    reply = infer(at_rest)
    assert reply.status_code == 200
    assert reply.headers["x-turnout-variant"] == "stable"
    assert reply.headers["x-turnout-model-version"] == "v1"
    doc = reply.json()
    assert doc["model_version"] == "v1"  # the real model server answered
    (output,) = doc["outputs"]
    assert output["name"] == "probability" and 0 <= output["data"][0] <= 1


def test_status_patches_move_traffic(at_rest: Stack) -> None:
    at_rest.write_routing(at_rest.routing(weight=100))
    until(lambda: served_by(at_rest) == ("candidate", "v2"), "the candidate takes the traffic")
    at_rest.write_routing(at_rest.routing(weight=None))
    until(lambda: served_by(at_rest) == ("stable", "v1"), "the candidate removed")
    assert at_rest.routes()["table"]["models"]["fraud"]["candidate"] is None


@pytest.mark.parametrize(
    ("candidate", "reported"),
    [
        (
            {"url": "ftp://127.0.0.1:1", "weight": 100},
            f"{NS}/fraud: status.routing.candidate.url: must be an http:// or https:// base URL",
        ),
        (
            {"weight": 150},
            f"{NS}/fraud: status.routing.candidate.weight: Input should be less than or equal "
            "to 100",
        ),
    ],
)
def test_a_status_the_schema_admits_but_turnout_refuses_keeps_the_last_good_table(
    at_rest: Stack, candidate: dict[str, Any], reported: str
) -> None:
    before = at_rest.routes()["table"]
    # The API server stores it: the CRD's schema has no say on URLs or on weight ranges.
    stored = at_rest.admin.patch_deployment_status(
        NS, "fraud", {"routing": {"candidate": candidate}}
    )
    for key, value in candidate.items():
        assert stored["status"]["routing"]["candidate"][key] == value
    until(lambda: (at_rest.routes()["lastError"] or "").startswith(reported), "the error shown")
    assert at_rest.routes()["table"] == before
    assert served_by(at_rest) == ("stable", "v1")
    assert served_by(at_rest, "digits") == ("stable", "v2")

    # The operator's next pass writes the good routing again: the error goes from /routes.
    at_rest.write_routing(at_rest.routing(weight=0))
    until(lambda: at_rest.routes()["lastError"] is None, "the error cleared")
    assert at_rest.routes()["table"] == before


def test_a_status_the_schema_refuses_never_reaches_the_router(at_rest: Stack) -> None:
    with pytest.raises(KubeError) as refused:
        at_rest.admin.patch_deployment_status(
            NS, "fraud", {"routing": {"candidate": {"version": "v2", "url": None}}}
        )
    assert refused.value.status == 422
    assert "status.routing.candidate.url: Required value" in str(refused.value)
    assert at_rest.routes()["lastError"] is None


def _crd_description(cluster: Cluster) -> str:
    crd = cluster.get("crd", CRD)
    return str(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"])


def _set_crd_description(cluster: Cluster, text: str) -> None:
    patch = [{"op": "replace", "path": DESCRIPTION, "value": text}]
    cluster.ok("patch", "crd", CRD, "--type=json", "-p", json.dumps(patch))


def test_an_expired_watch_is_recovered_by_listing_again(cluster: Cluster, at_rest: Stack) -> None:
    log_start = at_rest.router_log.stat().st_size
    expired = f"ModelDeployments in namespace {NS}: watch expired"

    def router_log() -> str:
        return at_rest.router_log.read_bytes()[log_start:].decode(errors="replace")

    original = _crd_description(cluster)
    try:
        _set_crd_description(cluster, original + " (changed by the test)")
        until(lambda: expired in router_log(), "the router told its watch is gone", 30.0)
        assert "too old resource version" in router_log()
        # Listed again and watching: the next status write is followed.
        at_rest.write_routing(at_rest.routing(weight=100))
        until(lambda: served_by(at_rest) == ("candidate", "v2"), "the router follows again")
        assert at_rest.routes()["lastError"] is None  # a 410 is expected, not an error
    finally:
        _set_crd_description(cluster, original)


def readme_keys_recipe(cluster: Cluster, secret: str, cwd: Path) -> str:
    """Run the README's "In a cluster" key recipe through bash, as an admin would (kubectl
    and turnout on PATH); the key it made."""
    first, rest = readme_recipe("keys-secret").split("\n", 1)
    assert first.startswith("NS=turnout-system SECRET=turnout-router"), first
    script = f"set -euo pipefail\nNS={RELEASE_NS} SECRET={secret}\n{rest}printf '%s' \"$KEY\"\n"
    return ok(Shell(cluster, cluster.kubeconfig, cwd).bash(script)).strip().splitlines()[-1]


def test_the_charts_admin_key_is_needed_and_scoped_keys_added_to_the_secret_apply(
    cluster: Cluster, at_rest: Stack, tmp_path: Path
) -> None:
    assert infer(at_rest).status_code == 200  # the chart's admin key, from its Secret
    refused = httpx.post(f"{at_rest.router}/v2/models/fraud/infer", json=BODY, timeout=10)
    assert refused.status_code == 401 and "no API key" in refused.json()["error"]
    assert at_rest.routes()["auth"]["keys"] == ["admin"]

    original = cluster.get("secret", at_rest.secret.name, "-n", RELEASE_NS)["data"]["api-keys.yaml"]

    def patch(text: bytes) -> None:
        data = {"api-keys.yaml": base64.b64encode(text).decode()}
        cluster.ok("patch", "secret", at_rest.secret.name, "-n", RELEASE_NS,
                   "--type=merge", "-p", json.dumps({"data": data}))  # fmt: skip
        at_rest.secret.sync(cluster)

    try:
        # A key for fraud only, added to the Secret by the README's recipe, run as written
        # (its namespace and Secret name swapped for the test's) with kubectl and turnout.
        app_key = readme_keys_recipe(cluster, at_rest.secret.name, tmp_path)
        assert not (tmp_path / "api-keys.yaml").exists(), "the recipe leaves no keys file"
        at_rest.secret.sync(cluster)  # the kubelet updates the mounted Secret
        until(lambda: infer(at_rest, key=app_key).status_code == 200, "the new key accepted")
        assert infer(at_rest, "digits", key=app_key).status_code == 403
        assert at_rest.routes()["auth"]["keys"] == ["admin", "fraud-app"]

        # A Secret edited into something that is not a keys file: the last good keys stay.
        patch(b"keys: {broken\n")
        until(lambda: at_rest.routes()["auth"]["lastError"] is not None, "the error shown")
        assert "not valid YAML/JSON" in at_rest.routes()["auth"]["lastError"]
        assert infer(at_rest, key=app_key).status_code == 200
    finally:
        patch(base64.b64decode(original))
    until(lambda: infer(at_rest, key=app_key).status_code == 401, "the key gone again")
    assert at_rest.routes()["auth"]["lastError"] is None
    log = at_rest.router_log.read_text()
    assert app_key not in log and at_rest.key not in log


def test_deleting_the_deployment_stops_serving_its_model(cluster: Cluster, stack: Stack) -> None:
    cluster.ok("delete", "mdep", "fraud", "-n", NS, "--wait")
    until(lambda: infer(stack).status_code == 404, "fraud is no longer served")
    assert "not found" in infer(stack).json()["error"]
    assert served_by(stack, "digits") == ("stable", "v2")  # the other model stays
    assert httpx.get(f"{stack.router}/v2/health/ready", timeout=5).status_code == 200
