"""The cluster's A/B ledger against a real API server: two `turnout route --kube` replicas, each
with a token the API server issued to a router ServiceAccount allowed only what the router
needs (ModelDeployments read, ConfigMaps get/list/create/update in its namespace), keep the
outcomes in ConfigMaps; one is SIGKILLed mid-experiment and restarted, the other stopped. The
operator's reader, with a ServiceAccount allowed only get/list on ConfigMaps, merges exactly
what the clients sent.

The control plane is tests/k8s/cluster.py's (kine, kube-apiserver, kube-controller-manager on
loopback); the model servers are stand-ins (tests/fake_upstream.py).
"""

from __future__ import annotations

import random
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.integration.test_feedback import SECRET, expected, post, token_of
from tests.k8s.cluster import Cluster, control_plane, missing_binaries
from tests.servers import ROOT, fake_upstream, kill_tree, process
from turnout.core.ab_ledger import LedgerUnavailable, Outcome, experiment_id
from turnout.core.assign import Arm
from turnout.core.observation import Metrics, MetricsQuery, WithLedger
from turnout.io.ab_store import ConfigMapLedger
from turnout.io.kube import Kube
from turnout.io.processes import free_port

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
NS = "ab-ledger"
SALT = "fraud/v2/1700000000"
CRD = ROOT / "manifests" / "crds" / "modeldeployments.turnout.dev.yaml"


def role(name: str, rules: list[dict]) -> list[dict]:
    """A ServiceAccount, a Role with ``rules`` in NS and the binding between them."""
    meta = {"name": name, "namespace": NS}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta,
         "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NS}]},
    ]  # fmt: skip


#: The router: its ModelDeployments, and its own ledger (what the chart's router Role grants).
ROUTER_RULES = [
    {"apiGroups": ["turnout.dev"], "resources": ["modeldeployments"],
     "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "create", "update"]},
]  # fmt: skip
#: The operator reads the ledgers, never writes them.
OPERATOR_RULES = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]


def in_namespace(kubeconfig: Path) -> Path:
    """The kubeconfig with NS as its context's namespace, as a pod's service account has."""
    doc = yaml.safe_load(kubeconfig.read_text())
    doc["contexts"][0]["context"]["namespace"] = NS
    kubeconfig.write_text(yaml.safe_dump(doc))
    return kubeconfig


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    kubectl = ROOT / ".tools" / "bin" / "kubectl"
    if missing := missing_binaries():
        pytest.fail(f"{', '.join(missing)} missing: run `make kube-tools`", pytrace=False)
    with control_plane(tmp_path_factory.mktemp("cluster"), kubectl=kubectl) as running:
        yield running


@pytest.fixture(scope="module")
def accounts(cluster: Cluster) -> dict[str, Path]:
    cluster.ok("apply", "-f", str(CRD))
    cluster.wait_for("crd/modeldeployments.turnout.dev", condition="condition=Established")
    cluster.namespace(NS)
    cluster.apply(role("router", ROUTER_RULES) + role("operator", OPERATOR_RULES))
    return {
        name: in_namespace(cluster.service_account_kubeconfig(NS, name))
        for name in ("router", "operator")
    }


def test_outcomes_in_configmaps_survive_a_killed_replica_and_a_scale_down(
    cluster: Cluster, accounts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(accounts["router"]))  # the routers' credentials
    (v1, cm1), (v2, cm2) = fake_upstream(version="v1"), fake_upstream(version="v2")
    secret = tmp_path / "token-secret"
    secret.write_text(SECRET + "\n")
    admin = Kube.connect(kubeconfig=str(cluster.kubeconfig))
    cluster.apply([{
        "apiVersion": "turnout.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "fraud", "namespace": NS},
        "spec": {"model": "fraud", "stable": {"version": "v1", "image": "r/fraud:v1"},
                 "candidate": {"version": "v2", "image": "r/fraud:v2"}},
    }])  # fmt: skip
    routing = {
        "stable": {"version": "v1", "url": v1},
        "candidate": {"version": "v2", "url": v2, "weight": 50},
        "salt": SALT,
    }
    admin.patch_deployment_status(NS, "fraud", {"routing": routing})

    def replica(name: str, port: int):  # type: ignore[no-untyped-def]
        args = [sys.executable, "-m", "turnout", "route", "--kube", "--namespace", NS]
        args += ["--token-secret", str(secret), "--replica-id", name, "--port", str(port)]
        base = f"http://127.0.0.1:{port}"
        return base, process(args, f"{base}/v2/health/ready", f"router-kube-{name}.log")

    rng = random.Random(11)
    port_a = free_port()
    with cm1, cm2:
        base_a, run_a = replica("router-a", port_a)
        base_b, run_b = replica("router-b", free_port())
        proc_a = run_a.__enter__()
        run_b.__enter__()
        b_running = True
        try:
            with (
                httpx.Client(base_url=base_a, timeout=10) as a,
                httpx.Client(base_url=base_b, timeout=10) as b,
            ):
                tokens = [token_of(a if i % 2 else b, f"user-{i}") for i in range(120)]
                values = [round(rng.uniform(-3, 3), 2) for _ in tokens]
                for i in range(60):  # both take outcomes; every 4th goes to both
                    first, other = (a, b) if i % 2 else (b, a)
                    assert post(first, tokens[i], values[i]).status_code == 200
                    if i % 4 == 0:
                        assert post(other, tokens[i], values[i]).status_code in (200, 409)
                kill_tree(proc_a, signal.SIGKILL)
                proc_a.wait()
                for i in range(60, 80):  # a is gone: b takes them
                    assert post(b, tokens[i], values[i]).status_code == 200
                _, run_a2 = replica("router-a", port_a)
                with run_a2:
                    resp = post(a, tokens[1], values[1])  # counted before a died
                    assert resp.status_code == 409 and resp.json()["reason"] == "replayed"
                    run_b.__exit__(None, None, None)  # scale 2 -> 1
                    b_running = False
                    for i in range(80, 120):
                        assert post(a, tokens[i], values[i]).status_code == 200
        finally:
            if b_running:
                run_b.__exit__(None, None, None)
            run_a.__exit__(None, None, None)

    reader = ConfigMapLedger.from_kube(
        Kube.connect(kubeconfig=str(accounts["operator"])), namespace=NS
    )

    class NoMetrics:
        def observe(self, query: MetricsQuery) -> Metrics:
            return Metrics()

    experiment = experiment_id(model="fraud", candidate="v2", salt=SALT)
    query = MetricsQuery("fraud", "v1", "v2", "candidate", 60, experiment=experiment)
    merged = dict(WithLedger(NoMetrics(), reader).observe(query).ab)
    assert merged == expected(tokens, values)  # exact: each request once
    stored = cluster.get("configmaps", "-n", NS, "-l", "turnout.dev/ab-ledger=fraud")["items"]
    assert {m["metadata"]["annotations"]["turnout.dev/ab-replica"] for m in stored} == {
        "router-a",
        "router-b",
    }
    # The operator's account reads the ledgers and cannot write one.
    with pytest.raises(LedgerUnavailable, match="403"):
        reader.append(
            model="fraud",
            experiment=experiment,
            replica="operator",
            records=[Outcome("forged", Arm.CANDIDATE, 100.0, 0.0)],
        )
