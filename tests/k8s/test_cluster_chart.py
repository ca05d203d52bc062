"""The chart, the kustomize base and the Argo workflows on a real API server.

tests/k8s/test_chart.py renders the chart and validates each object against schemas; here
Helm itself installs, upgrades, rolls back and uninstalls it, so Helm's lookups, hooks and
ownership, and the API server's validation of every object (with KServe's, Argo's and the
Prometheus Operator's real CRDs installed), take part. No pod runs: there is no kubelet, so
nothing waits for readiness (no --wait).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.cluster import Cluster
from tests.k8s.conftest import CHART, ROOT, VALUES_FILES, helm_ok, values_args

pytestmark = pytest.mark.cluster

RELEASE_NAMESPACE = "turnout-system"
#: Namespaces the ci values files put objects in, besides the release's.
OTHER_NAMESPACES = ("ml-serving", "team-a", "team-b", "monitoring")


@pytest.fixture(scope="module")
def crds(turnout_crds: list[str], third_party_crds: list[str]) -> None:
    """Ours, and those the chart's optional objects need (KServe, Argo, Prometheus Operator)."""


@pytest.fixture(scope="module")
def namespaces(cluster: Cluster) -> None:
    for name in (RELEASE_NAMESPACE, *OTHER_NAMESPACES):
        cluster.namespace(name)


def names(
    cluster: Cluster, kind: str, namespace: str | None = None, *, release: str = ""
) -> set[str]:
    """Names of the objects of one kind (in a namespace, or cluster-scoped), of one release."""
    where = ["-n", namespace] if namespace else []
    selector = ["-l", f"app.kubernetes.io/instance={release}"] if release else []
    return {o["metadata"]["name"] for o in cluster.get(kind, *where, *selector)["items"]}


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_server_accepts_every_object_of_every_values_file(
    cluster: Cluster, helm: Path, crds: None, namespaces: None, values_file: str | None
) -> None:
    """Server-side validation (`--dry-run=server`): schemas, CEL, RBAC escalation checks and
    admission, for each object each ci values file renders."""
    rendered = helm_ok(
        cluster, helm, "template", "turnout", CHART, "-n", RELEASE_NAMESPACE,
        *values_args(values_file),
    )  # fmt: skip
    out = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered)
    assert out.returncode == 0, out.stderr
    objects = [doc for doc in yaml.safe_load_all(rendered) if doc]
    assert out.stdout.count("(server dry run)") == len(objects)


def test_install_upgrade_rollback_uninstall(
    cluster: Cluster, helm: Path, crds: None, namespaces: None
) -> None:
    ns, release = RELEASE_NAMESPACE, "turnout"
    values = ("-f", str(CHART / "ci" / "modeldeployments-values.yaml"))
    try:
        notes = helm_ok(cluster, helm, "install", release, CHART, "-n", ns, *values)
        assert f"kubectl turnout rollback fraud -n {ns}" in notes
        assert names(cluster, "deployment", ns, release=release) == {
            "turnout-operator",
            "turnout-router",
        }
        assert names(cluster, "hpa", ns, release=release) == {"turnout-router"}
        assert names(cluster, "pdb", ns, release=release) == {"turnout-router"}
        assert names(cluster, "serviceaccount", ns, release=release) == {
            "turnout-operator",
            "turnout-router",
        }
        assert names(cluster, "clusterrole", release=release) == {
            "turnout-operator",
            "turnout-router",
        }
        assert names(cluster, "clusterkopfpeering", release=release) == {"turnout"}
        assert names(cluster, "servicemonitor", ns, release=release) == set()
        assert names(cluster, "mdep", ns) == {"fraud"}
        assert names(cluster, "mdep", "ml-serving") == {"churn", "ranking"}

        # The operator promotes fraud's candidate: from now on it owns spec.stable.
        promoted = {"stable": {"version": "v4", "image": "registry.example.com/fraud:v4"}}
        cluster.ok(
            "patch", "mdep", "fraud", "-n", ns, "--type=merge",
            "-p", json.dumps({"spec": {**promoted, "candidate": None}}),
        )  # fmt: skip

        changed = (
            "--set", "router.autoscaling.enabled=false", "--set", "router.replicas=3",
            "--set", "metrics.serviceMonitor.enabled=true",
            "--set", "metrics.prometheusRule.enabled=true",
        )  # fmt: skip
        helm_ok(cluster, helm, "upgrade", release, CHART, "-n", ns, *values, *changed)
        assert names(cluster, "hpa", ns, release=release) == set()
        assert cluster.get("deployment", "turnout-router", "-n", ns)["spec"]["replicas"] == 3
        assert names(cluster, "servicemonitor", ns, release=release) == {
            "turnout-operator",
            "turnout-router",
        }
        assert names(cluster, "prometheusrule", ns, release=release) == {"turnout-alerts"}
        fraud = cluster.get("mdep", "fraud", "-n", ns)["spec"]
        assert fraud["stable"]["version"] == "v4"  # the upgrade did not re-apply values
        assert "candidate" not in fraud

        helm_ok(cluster, helm, "rollback", release, "1", "-n", ns)
        assert names(cluster, "hpa", ns, release=release) == {"turnout-router"}
        assert names(cluster, "servicemonitor", ns, release=release) == set()
        assert names(cluster, "prometheusrule", ns, release=release) == set()
        assert cluster.get("mdep", "fraud", "-n", ns)["spec"]["stable"]["version"] == "v4"
        history = json.loads(helm_ok(cluster, helm, "history", release, "-n", ns, "-o", "json"))
        assert [(h["revision"], h["status"]) for h in history] == [
            (1, "superseded"),
            (2, "superseded"),
            (3, "deployed"),
        ]

        helm_ok(cluster, helm, "uninstall", release, "-n", ns)
        for kind in ("deployment", "hpa", "pdb", "serviceaccount", "configmap", "service"):
            assert names(cluster, kind, ns, release=release) == set(), kind
        assert names(cluster, "clusterrole", release=release) == set()
        assert names(cluster, "clusterrolebinding", release=release) == set()
        assert names(cluster, "clusterkopfpeering", release=release) == set()
        # ModelDeployments and the CRDs outlive the release.
        assert names(cluster, "mdep", ns) == {"fraud"}
        assert names(cluster, "mdep", "ml-serving") == {"churn", "ranking"}
        assert cluster.exists("crd", "modeldeployments.turnout.dev")
    finally:
        cluster.run(helm, "uninstall", release, "-n", ns, "--ignore-not-found")
        for where in (ns, "ml-serving"):
            cluster.kubectl("delete", "mdep", "--all", "-n", where)


def test_install_with_monitoring_and_retraining(
    cluster: Cluster, helm: Path, crds: None, namespaces: None
) -> None:
    """ServiceMonitors, PodMonitor, PrometheusRule, the Grafana dashboard, the Argo
    CronWorkflow and WorkflowTemplates and the model store, created for real."""
    ns, release = RELEASE_NAMESPACE, "turnout"
    values = [*values_args("monitoring-values.yaml"), *values_args("retrain-values.yaml")]
    try:
        helm_ok(cluster, helm, "install", release, CHART, "-n", ns, *values)
        assert names(cluster, "servicemonitor", ns, release=release) == {
            "turnout-operator",
            "turnout-router",
        }
        assert names(cluster, "podmonitor", ns, release=release) == {"turnout-model-server"}
        assert names(cluster, "prometheusrule", ns, release=release) == {"turnout-alerts"}
        assert names(cluster, "configmap", "monitoring", release=release) == {"turnout-dashboard"}
        assert names(cluster, "cronworkflow", ns, release=release) == {"retrain"}
        assert names(cluster, "workflowtemplate", ns, release=release) == {
            "retrain",
            "batch-predict",
        }
        assert names(cluster, "pvc", ns, release=release) == {"turnout-store"}
        cron = cluster.get("cronworkflow", "retrain", "-n", ns)["spec"]
        assert (cron["schedules"], cron["timezone"]) == (["30 2 * * 1-5"], "Europe/Amsterdam")

        helm_ok(cluster, helm, "uninstall", release, "-n", ns)
        for kind in ("servicemonitor", "podmonitor", "prometheusrule", "cronworkflow"):
            assert names(cluster, kind, ns, release=release) == set(), kind
        assert names(cluster, "pvc", ns, release=release) == {
            "turnout-store"
        }  # the models outlive it
    finally:
        cluster.run(helm, "uninstall", release, "-n", ns, "--ignore-not-found")
        cluster.kubectl("delete", "pvc", "turnout-store", "-n", ns, "--ignore-not-found")


def _base_objects(cluster: Cluster) -> list[dict[str, Any]]:
    built = cluster.ok("kustomize", str(ROOT / "manifests" / "base"))
    return [doc for doc in yaml.safe_load_all(built) if doc]


def test_kustomize_base_applies_with_nothing_left_to_diff(
    cluster: Cluster, crds: None, namespaces: None
) -> None:
    base = ROOT / "manifests" / "base"
    objects = _base_objects(cluster)
    # What the tests installed (CRDs, the namespace) stays; everything else is removed after.
    removable = [o for o in objects if o["kind"] not in ("CustomResourceDefinition", "Namespace")]
    try:
        first = cluster.ok("apply", "-k", base).splitlines()
        assert len(first) == len(objects)
        assert cluster.exists("deployment", "turnout-router", "-n", RELEASE_NAMESPACE)
        assert cluster.exists("clusterkopfpeering", "turnout")
        # Nothing the server defaults or mutates makes the manifests look changed.
        diff = cluster.kubectl("diff", "-k", base)
        assert (diff.returncode, diff.stdout) == (0, ""), diff.stderr
    finally:
        cluster.delete(removable)


def test_workflow_manifests_are_accepted(cluster: Cluster, crds: None) -> None:
    ns = cluster.namespace("workflows")
    manifests = ROOT / "manifests" / "workflows"
    dry = cluster.ok("apply", "--dry-run=server", "-n", ns, "-f", manifests)
    assert dry.count("(server dry run)") == 3
    cluster.ok("apply", "-n", ns, "-f", manifests)
    assert names(cluster, "workflowtemplate", ns) == {"retrain", "batch-predict"}
    assert names(cluster, "cronworkflow", ns) == {"retrain"}
