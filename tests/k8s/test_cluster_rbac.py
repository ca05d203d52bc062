"""The chart's RBAC on a real API server, with each ServiceAccount's own token.

The operator, the router and the retrain workflow get tokens the API server issues to the
ServiceAccounts the chart creates (`kubectl create token`), as their pods would. `kubectl
auth can-i` shows what each may and may not do, and turnout's own client code
(turnout/io/kube.py, workflows/targets.py) makes its real calls with them.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.k8s.cluster import Cluster
from tests.k8s.conftest import CHART, helm_ok, values_args
from turnout.core import isvc
from turnout.core.spec import (
    Check,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    Phase,
    Routing,
    Target,
    VersionRef,
    WeightedTarget,
    dump,
)
from turnout.io.kube import Conflict, Kube, KubeError
from workflows.targets import ClusterTarget

pytestmark = pytest.mark.cluster

#: The cluster-wide release (operator and router see every namespace), with retraining on.
NS = "turnout-rbac"
#: A namespaced release: operator.watchNamespaces [team-a, team-b].
TEAMS_NS = "teams-system"
#: Where the ModelDeployments the accounts work on live.
APPS = "rbac-apps"

MDEP = "modeldeployments.turnout.dev"
ISVC = "inferenceservices.serving.kserve.io"
PEERING = "clusterkopfpeerings.kopf.dev"


@pytest.fixture(scope="module")
def releases(
    cluster: Cluster, helm: Path, turnout_crds: list[str], third_party_crds: list[str]
) -> Iterator[None]:
    for ns in (NS, TEAMS_NS, APPS, "team-a", "team-b", "team-c"):
        cluster.namespace(ns)
    installs = [
        ("turnout", NS, values_args("retrain-values.yaml")),
        ("teams", TEAMS_NS, values_args("namespaced-values.yaml")),
    ]
    try:
        for release, ns, values in installs:
            helm_ok(cluster, helm, "install", release, CHART, "-n", ns, *values)
        yield
    finally:
        for release, ns, _ in installs:
            cluster.run(helm, "uninstall", release, "-n", ns, "--ignore-not-found")


#: account -> (namespace, ServiceAccount the chart created)
ACCOUNTS = {
    "operator": (NS, "turnout-operator"),
    "router": (NS, "turnout-router"),
    "retrain": (NS, "turnout-retrain"),
    "batch-predict": (NS, "turnout-batch-predict"),
    "teams-operator": (TEAMS_NS, "teams-turnout-operator"),
    "teams-router": (TEAMS_NS, "teams-turnout-router"),
}


@pytest.fixture(scope="module")
def kubeconfigs(cluster: Cluster, releases: None) -> dict[str, Path]:
    return {
        account: cluster.service_account_kubeconfig(ns, sa)
        for account, (ns, sa) in ACCOUNTS.items()
    }


def _can(verb: str, resource: str, where: str = "", *, sub: str = "") -> tuple[str, ...]:
    """Arguments of `kubectl auth can-i`; ``where`` is a namespace, "*" for all, "" for none."""
    scope = ("-A",) if where == "*" else ("-n", where) if where else ()
    return (verb, resource, *scope, *((f"--subresource={sub}",) if sub else ()))


ALLOWED = {
    "operator": [
        *(_can(v, MDEP, "*") for v in ("get", "list", "watch", "patch")),
        _can("patch", MDEP, APPS, sub="status"),
        _can("update", MDEP, APPS, sub="finalizers"),  # blockOwnerDeletion on its isvcs
        *(_can(v, ISVC, APPS) for v in ("get", "list", "watch", "create", "patch", "delete")),
        *(_can(v, ISVC, "*") for v in ("list", "watch")),  # kopf watches them everywhere
        _can("create", "events", APPS),
        _can("create", "events.events.k8s.io", APPS),
        *(_can(v, f"{PEERING}/turnout") for v in ("get", "list", "watch", "patch")),
        _can("watch", "customresourcedefinitions.apiextensions.k8s.io"),
        # the routers' A/B ledgers: read, and a finished experiment's removed
        *(_can(v, "configmaps", NS) for v in ("get", "list", "delete")),
    ],
    "router": [
        *(_can(v, MDEP, "*") for v in ("get", "list", "watch")),
        # Its A/B ledger: ConfigMaps in the release namespace only.
        *(_can(v, "configmaps", NS) for v in ("get", "list", "create", "update")),
    ],
    "retrain": [
        _can("get", MDEP, NS),
        _can("patch", MDEP, NS),
        _can("create", "workflowtaskresults.argoproj.io", NS),
    ],
    "batch-predict": [_can("create", "workflowtaskresults.argoproj.io", NS)],
    "teams-operator": [
        _can("patch", MDEP, "team-a"),
        _can("patch", MDEP, "team-b", sub="status"),
        _can("create", ISVC, "team-b"),
        _can("patch", "kopfpeerings.kopf.dev", "team-a"),
        _can("list", "customresourcedefinitions.apiextensions.k8s.io"),
    ],
    "teams-router": [_can("watch", MDEP, "team-a"), _can("list", MDEP, "team-b")],
}

#: What each must not do: read Secrets, and anything its code never calls.
DENIED = {
    "operator": [
        _can("get", "secrets", NS),
        _can("list", "secrets", "*"),
        _can("create", MDEP, APPS),  # users and the chart create them, never the operator
        _can("delete", MDEP, APPS),
        _can("update", ISVC, APPS),  # it patches
        _can("create", "pods", APPS),
        _can("create", "deployments.apps", APPS),
        _can("list", "configmaps", "*"),
        _can("create", "configmaps", NS),  # reads the A/B ledgers, never writes them
        _can("update", "configmaps", NS),
        _can("create", "leases.coordination.k8s.io", NS),  # kopf's peering, not Leases
        _can("patch", "customresourcedefinitions.apiextensions.k8s.io"),
        _can("create", "clusterrolebindings.rbac.authorization.k8s.io"),
        _can("impersonate", "serviceaccounts", NS),
    ],
    "router": [
        _can("get", "secrets", NS),
        _can("patch", MDEP, APPS),
        _can("patch", MDEP, APPS, sub="status"),
        _can("list", ISVC, APPS),
        _can("create", "events", APPS),
        _can("list", "configmaps", APPS),  # its ledger is in the release namespace only
        _can("delete", "configmaps", NS),
        _can("patch", "configmaps", NS),
    ],
    "retrain": [
        _can("get", "secrets", NS),
        _can("list", MDEP, NS),
        _can("patch", MDEP, NS, sub="status"),
        _can("delete", MDEP, NS),
        _can("get", MDEP, APPS),  # only its own namespace
        _can("create", "pods", NS),
    ],
    "batch-predict": [_can("get", MDEP, NS), _can("get", "secrets", NS)],
    "teams-operator": [
        _can("list", MDEP, "*"),
        _can("patch", MDEP, "team-c"),
        _can("create", ISVC, "team-c"),
        _can("list", "namespaces"),
        _can("get", "secrets", "team-a"),
        _can("patch", f"{PEERING}/turnout"),
    ],
    "teams-router": [_can("list", MDEP, "*"), _can("watch", MDEP, "team-c")],
}


def _cases(table: dict[str, list[tuple[str, ...]]]) -> list[Any]:
    return [
        pytest.param(account, args, id=f"{account}:{' '.join(args)}")
        for account, rows in table.items()
        for args in rows
    ]


def _can_i(cluster: Cluster, kubeconfig: Path, args: tuple[str, ...]) -> str:
    out = cluster.kubectl("auth", "can-i", *args, kubeconfig=kubeconfig)
    assert out.returncode in (0, 1), out.stderr
    assert "doesn't have a resource type" not in out.stderr, out.stderr
    return out.stdout.strip()


@pytest.mark.parametrize(("account", "args"), _cases(ALLOWED))
def test_each_account_can_do_what_it_needs(
    cluster: Cluster, kubeconfigs: dict[str, Path], account: str, args: tuple[str, ...]
) -> None:
    assert _can_i(cluster, kubeconfigs[account], args) == "yes"


@pytest.mark.parametrize(("account", "args"), _cases(DENIED))
def test_each_account_cannot_do_what_it_does_not_need(
    cluster: Cluster, kubeconfigs: dict[str, Path], account: str, args: tuple[str, ...]
) -> None:
    assert _can_i(cluster, kubeconfigs[account], args) == "no"


# --- turnout's own calls, with each account's token -----------------------------------------


def _deployment(name: str, namespace: str) -> dict[str, Any]:
    spec = ModelDeploymentSpec(
        model=name, stable=VersionRef(version="v3", image=f"registry.example.com/{name}:v3")
    )
    return {
        "apiVersion": "turnout.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": dump(spec),
    }


_names = itertools.count(1)


@pytest.fixture
def fraud(cluster: Cluster, releases: None) -> Iterator[str]:
    """A ModelDeployment of its own model in APPS and in NS, created by an admin."""
    name = f"fraud{next(_names)}"
    cluster.apply([_deployment(name, APPS), _deployment(name, NS)])
    yield name
    for ns in (APPS, NS):
        cluster.kubectl("delete", "mdep", name, "-n", ns, "--ignore-not-found")


def _kube(kubeconfigs: dict[str, Path], account: str) -> Kube:
    return Kube.connect(kubeconfig=str(kubeconfigs[account]))


def test_router_lists_and_watches_but_cannot_write(
    cluster: Cluster, kubeconfigs: dict[str, Path], fraud: str
) -> None:
    router = _kube(kubeconfigs, "router")
    items, version = router.list_deployments(None)
    assert {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in items} >= {
        (APPS, fraud),
        (NS, fraud),
    }
    cluster.ok("patch", "mdep", fraud, "-n", APPS, "--type=merge", "-p", '{"spec":{"paused":true}}')
    with contextlib.closing(router.watch_deployments(None, version, timeout_s=10)) as events:
        event = next(e for e in events if e.object["metadata"]["name"] == fraud)
    assert (event.type, event.object["spec"]["paused"]) == ("MODIFIED", True)

    with pytest.raises(KubeError) as denied:
        router.patch_deployment(APPS, fraud, {"spec": {"paused": False}})
    assert denied.value.status == 403
    assert "cannot patch resource" in str(denied.value)


def test_operator_writes_status_events_and_inference_services(
    cluster: Cluster, kubeconfigs: dict[str, Path], fraud: str
) -> None:
    operator = _kube(kubeconfigs, "operator")
    obj = operator.get_deployment(APPS, fraud)
    now = datetime.now(UTC).replace(microsecond=0)
    url = f"http://fraud-v3-predictor.{APPS}.svc.cluster.local"
    status = ModelDeploymentStatus(
        phase=Phase.PROGRESSING,
        message="canary v4 at 10%",
        routing=Routing(
            stable=Target(version="v3", url=url),
            candidate=WeightedTarget(version="v4", url=url.replace("v3", "v4"), weight=10),
        ),
        checks=[Check(name="errorRate", value=0.0, threshold=0.01, passed=True, at=now)],
        observed_generation=obj["metadata"]["generation"],
    )
    written = operator.patch_deployment_status(APPS, fraud, dump(status))
    assert written["status"]["routing"]["candidate"]["weight"] == 10
    assert written["metadata"]["generation"] == obj["metadata"]["generation"]

    operator.emit_event(obj, type="Normal", reason="Started", message="canary v4 at 10%")
    events = cluster.get("events", "-n", APPS, "--field-selector", f"involvedObject.name={fraud}")
    assert [(e["reason"], e["source"]["component"]) for e in events["items"]] == [
        ("Started", "turnout-operator")
    ]

    spec = ModelDeploymentSpec.model_validate(obj["spec"])
    body = isvc.inference_service(
        deployment=fraud, namespace=APPS, uid=obj["metadata"]["uid"], spec=spec, ref=spec.stable
    )
    created = operator.create_inference_service(body)  # KServe's own CRD validates it
    assert created["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    listed = operator.list_inference_services(APPS, isvc.selector(fraud))
    assert [o["metadata"]["name"] for o in listed] == [body["metadata"]["name"]]
    patched = operator.patch_inference_service(
        APPS, body["metadata"]["name"], isvc.update_patch(body)
    )
    assert patched["spec"]["predictor"]["minReplicas"] == spec.serving.min_replicas
    operator.delete_inference_service(APPS, body["metadata"]["name"])
    assert operator.list_inference_services(APPS, isvc.selector(fraud)) == []


def test_deleting_a_modeldeployment_collects_its_inference_services(
    cluster: Cluster, kubeconfigs: dict[str, Path], fraud: str
) -> None:
    """Owner references, not a finalizer: the controller-manager's garbage collector."""
    operator = _kube(kubeconfigs, "operator")
    obj = operator.get_deployment(APPS, fraud)
    spec = ModelDeploymentSpec.model_validate(obj["spec"])
    body = isvc.inference_service(
        deployment=fraud, namespace=APPS, uid=obj["metadata"]["uid"], spec=spec, ref=spec.stable
    )
    operator.create_inference_service(body)
    cluster.ok("delete", "mdep", fraud, "-n", APPS, "--wait=false")
    deadline = time.monotonic() + 30
    while operator.list_inference_services(APPS, isvc.selector(fraud)):
        assert time.monotonic() < deadline, "the InferenceService outlived its ModelDeployment"
        time.sleep(0.2)


def test_retrain_proposes_a_candidate_with_its_own_token(
    cluster: Cluster, kubeconfigs: dict[str, Path], fraud: str
) -> None:
    target = ClusterTarget(lambda: _kube(kubeconfigs, "retrain"), namespace=NS)
    candidate = VersionRef(version="v4", image="registry.example.com/ml/fraud:v4")
    proposed = target.propose(fraud, candidate)
    assert (proposed.stable, proposed.changed) == ("v3", True)
    assert cluster.get("mdep", fraud, "-n", NS)["spec"]["candidate"]["version"] == "v4"

    retrain = _kube(kubeconfigs, "retrain")
    stale = {"metadata": {"resourceVersion": "1"}, "spec": {"paused": True}}
    with pytest.raises(Conflict):
        retrain.patch_deployment(NS, fraud, stale)
    with pytest.raises(KubeError) as denied:
        retrain.patch_deployment_status(NS, fraud, {"phase": "Failed"})
    assert denied.value.status == 403
    with pytest.raises(KubeError) as elsewhere:
        retrain.get_deployment(APPS, fraud)
    assert elsewhere.value.status == 403
