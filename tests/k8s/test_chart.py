"""The Helm chart (helm/turnout) and the kustomize base rendered from it (manifests/base).

Rendered with the real helm binary and checked the way a cluster would take them: every
object against the API server's schemas (tests/k8s/validate.py), plus what a platform
engineer would notice: pod security, least-privilege RBAC, probes and ports that line up,
the values schema, NOTES, and the generated files staying in step with their sources.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.k8s.conftest import (
    CHART,
    NAMESPACE,
    RELEASE,
    ROOT,
    VALUES_FILES,
    Render,
    run,
    values_args,
)
from tests.k8s.validate import errors
from training.data import FRAUD_SCHEMA
from turnout.core.api_keys import Action, ApiKey, identify
from turnout.core.crd import CRD_PATH, NAME, crd_yaml
from turnout.core.spec import ModelDeploymentSpec
from turnout.io.api_keys import parse_keys_text
from turnout_sdk.protocol import decode_infer
from turnout_sdk.tensors import Tensor

Obj = dict[str, Any]
RenderValues = Callable[[str | None], list[Obj]]

CLUSTER_SCOPED = {
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "ClusterKopfPeering",
    "Namespace",
}
PROMETHEUS_URL = "http://prometheus-operated.monitoring.svc:9090"
OPERATOR_TAIL = [
    "--prometheus",
    PROMETHEUS_URL,
    "--peering",
    "turnout",
    "--metrics-port",
    "9090",
    "--health-port",
    "8081",
]
KEYS_FILE = "/etc/turnout/router/api-keys.yaml"
TOKEN_SECRET = "/etc/turnout/router/token-secret"
ROUTER_TAIL = [
    "--api-keys", KEYS_FILE, "--token-secret", TOKEN_SECRET, "--host", "0.0.0.0", "--port", "8080"
]  # fmt: skip
#: The one Role per component that is not per watched namespace: the A/B ledger's ConfigMaps.
LEDGER_ROLES = {"turnout-router-ab-ledger", "turnout-operator-ab-ledger"}


# --- helpers ------------------------------------------------------------------------------


def of_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in of_kind(objs, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def ref(obj: Obj) -> str:
    meta = obj["metadata"]
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj['kind']} {where}{meta['name']}"


def component(obj: Obj) -> str | None:
    return obj["metadata"].get("labels", {}).get("app.kubernetes.io/component")


def deployment(objs: list[Obj], name: str) -> Obj:
    found = [o for o in of_kind(objs, "Deployment") if component(o) == name]
    assert len(found) == 1, f"expected one {name} Deployment, found {len(found)}"
    return found[0]


def container(objs: list[Obj], name: str) -> Obj:
    containers = deployment(objs, name)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def pod_specs(objs: list[Obj]) -> Iterator[tuple[str, Obj]]:
    for obj in objs:
        spec = obj.get("spec", {})
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield ref(obj), spec["template"]["spec"]
        elif obj["kind"] == "CronJob":
            yield ref(obj), spec["jobTemplate"]["spec"]["template"]["spec"]
        elif obj["kind"] == "Pod":
            yield ref(obj), spec


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def port_number(c: Obj, port: int | str) -> int:
    if isinstance(port, int):
        return port
    numbers = [p["containerPort"] for p in c.get("ports", []) if p.get("name") == port]
    assert numbers, f"container {c['name']} has no port named {port!r}"
    return int(numbers[0])


def crds_of(objs: list[Obj]) -> list[Obj]:
    return of_kind(objs, "CustomResourceDefinition")


def helm_fails(helm: Path, *args: str) -> str:
    out = run(helm, "template", RELEASE, CHART, "--namespace", NAMESPACE, *args)
    assert out.returncode != 0, f"helm template {' '.join(args)} should have failed"
    return out.stderr


# --- lint, render, validate ---------------------------------------------------------------


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=str)
def test_chart_lints_strictly(helm: Path, values_file: str | None) -> None:
    out = run(helm, "lint", "--strict", CHART, *values_args(values_file))
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=str)
def test_every_rendered_object_is_one_the_api_server_accepts(
    render_values: RenderValues, values_file: str | None
) -> None:
    objs = render_values(values_file)
    crds = crds_of(objs)  # the chart's own: ModelDeployment and kopf's peering resources
    found = [f"{ref(o)}: {e}" for o in objs for e in errors(o, crds=crds)]
    assert found == []


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=str)
def test_every_object_is_labelled_as_part_of_the_release(
    render_values: RenderValues, values_file: str | None
) -> None:
    unlabelled = []
    for obj in render_values(values_file):
        if obj["kind"] == "CustomResourceDefinition":
            continue  # crds/ is not templated; helm installs it as is
        labels = obj["metadata"].get("labels", {})
        if labels.get("app.kubernetes.io/instance") != RELEASE:
            unlabelled.append(ref(obj))
        if obj["kind"] in ("Deployment", "Service", "ServiceAccount") and not component(obj):
            unlabelled.append(f"{ref(obj)} has no app.kubernetes.io/component")
    assert unlabelled == []


def test_both_copies_of_the_crd_are_generated_from_the_spec() -> None:
    expected = crd_yaml()
    for path in (ROOT / CRD_PATH, CHART / "crds" / f"{NAME}.yaml"):
        assert path.read_text() == expected, (
            f"{path.relative_to(ROOT)} is stale vs turnout/core/spec.py: run `make manifests`"
        )


def test_chart_installs_the_crds_it_needs(render_values: RenderValues) -> None:
    names = {o["metadata"]["name"] for o in crds_of(render_values(None))}
    assert names == {NAME, "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}


# --- operator -----------------------------------------------------------------------------


def test_operator_watches_every_namespace_by_default(render_values: RenderValues) -> None:
    objs = render_values(None)
    c = container(objs, "operator")
    assert c["command"] == ["turnout", "operator"]
    assert c["args"] == ["--all-namespaces", *OPERATOR_TAIL]
    assert deployment(objs, "operator")["spec"]["replicas"] == 1
    peering = one(objs, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == c["args"][c["args"].index("--peering") + 1]
    assert of_kind(objs, "KopfPeering") == []


def test_namespaced_operator_watches_only_its_namespaces(render_values: RenderValues) -> None:
    objs = render_values("namespaced-values.yaml")
    c = container(objs, "operator")
    assert c["args"] == ["--namespace", "team-a", "--namespace", "team-b", *OPERATOR_TAIL]
    peerings = of_kind(objs, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    assert {p["metadata"]["name"] for p in peerings} == {"turnout"}
    assert of_kind(objs, "ClusterKopfPeering") == []


def test_operator_probes_and_metrics_ports(render_values: RenderValues) -> None:
    objs = render_values(None)
    c = container(objs, "operator")
    for probe in ("livenessProbe", "readinessProbe"):
        get = c[probe]["httpGet"]
        assert (get["path"], port_number(c, get["port"])) == ("/healthz", 8081)
    assert port_number(c, "metrics") == 9090
    service = one(objs, "Service", "turnout-operator-metrics")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]
    # kopf names each replica in the peering object after its pod.
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_ha_runs_standby_operators_and_a_wider_router(render_values: RenderValues) -> None:
    objs = render_values("ha-values.yaml")
    assert deployment(objs, "operator")["spec"]["replicas"] == 2
    hpa = one(objs, "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 20)
    assert one(objs, "PodDisruptionBudget")["spec"]["minAvailable"] == 2


# --- router -------------------------------------------------------------------------------


def test_router_command_line_env_and_probes(render_values: RenderValues) -> None:
    objs = render_values(None)
    c = container(objs, "router")
    assert c["command"] == ["turnout", "route"]
    assert c["args"] == ["--kube", "--all-namespaces", *ROUTER_TAIL]
    ready, live = c["readinessProbe"]["httpGet"], c["livenessProbe"]["httpGet"]
    assert (ready["path"], port_number(c, ready["port"])) == ("/v2/health/ready", 8080)
    assert (live["path"], port_number(c, live["port"])) == ("/v2/health/live", 8080)
    config = one(objs, "ConfigMap", c["envFrom"][0]["configMapRef"]["name"])
    assert config["data"] == {
        "TURNOUT_MAX_BODY_BYTES": "1048576",
        "TURNOUT_SHADOW_MAX_INFLIGHT": "64",
    }
    pod = deployment(objs, "router")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 35  # the router drains for 30 s


def test_router_follows_the_operators_namespaces_unless_told_otherwise(render: Render) -> None:
    namespaced = values_args("namespaced-values.yaml")
    c = container(render(*namespaced), "router")
    assert c["args"] == ["--kube", "--namespace", "team-a", "--namespace", "team-b", *ROUTER_TAIL]
    c = container(render(*namespaced, "--set", "router.watchNamespaces={team-a}"), "router")
    assert c["args"] == ["--kube", "--namespace", "team-a", *ROUTER_TAIL]


def test_router_pods_restart_when_their_config_changes(render: Render) -> None:
    def checksum(*args: str) -> str:
        pod = deployment(render(*args), "router")["spec"]["template"]
        return str(pod["metadata"]["annotations"]["checksum/config"])

    assert checksum() == checksum("--set", "router.replicas=3")
    assert checksum() != checksum("--set", "router.maxBodyBytes=2048")
    assert checksum() != checksum("--set", "router.extraEnv.TURNOUT_LOG_PAYLOADS=on")


def test_router_extra_env_cannot_shadow_its_own_settings(helm: Path) -> None:
    stderr = helm_fails(helm, "--set", "router.extraEnv.TURNOUT_MAX_BODY_BYTES=5")
    assert "router.maxBodyBytes" in stderr


def secret_data(secret: Obj) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def test_router_secret_holds_a_generated_admin_key_the_router_accepts(render: Render) -> None:
    secret = one(render(), "Secret", "turnout-router")
    data = secret_data(secret)
    assert set(data) == {"admin-key", "api-keys.yaml", "token-secret"}
    keys = parse_keys_text(data["api-keys.yaml"], source="the chart's api-keys.yaml")
    admin = identify(f"Bearer {data['admin-key']}", keys)
    assert isinstance(admin, ApiKey) and admin.name == "admin"
    assert admin.actions == frozenset(Action) and admin.allows("any-model", Action.INFER)
    assert data["admin-key"] not in data["api-keys.yaml"]
    assert len(data["token-secret"]) >= 32
    # Generated per install (an upgrade keeps them: tests/k8s/test_cluster_chart.py).
    again = secret_data(one(render("--set", "router.replicas=3"), "Secret", "turnout-router"))
    assert again["admin-key"] != data["admin-key"]
    assert again["token-secret"] != data["token-secret"]


def test_router_mounts_its_keys_and_token_secret_but_never_the_admin_key(render: Render) -> None:
    objs = render()
    c = container(objs, "router")
    [mount] = [m for m in c["volumeMounts"] if m["name"] == "router-secret"]
    assert mount["readOnly"] is True
    assert c["args"][c["args"].index("--api-keys") + 1] == f"{mount['mountPath']}/api-keys.yaml"
    pod = deployment(objs, "router")["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "router-secret"]
    assert volume["secret"]["secretName"] == "turnout-router"
    assert [i["key"] for i in volume["secret"]["items"]] == ["api-keys.yaml", "token-secret"]
    # Read through the volume, not the API: the router may not read Secrets
    # (test_no_wildcards_and_no_secrets).
    assert pod["automountServiceAccountToken"] is True  # for its ModelDeployment watch only


def test_an_existing_secret_replaces_the_charts(render: Render) -> None:
    objs = render("--set", "router.existingSecret=my-keys")
    assert of_kind(objs, "Secret") == []
    pod = deployment(objs, "router")["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "router-secret"]
    assert volume["secret"]["secretName"] == "my-keys"


def test_authentication_can_be_turned_off(render: Render) -> None:
    objs = render("--set", "router.auth.enabled=false")
    assert "--api-keys" not in container(objs, "router")["args"]
    # The Secret stays: the A/B assignment tokens' key is in it.
    assert "token-secret" in one(objs, "Secret", "turnout-router")["data"]


def test_router_service_reaches_the_router_pods(render_values: RenderValues) -> None:
    objs = render_values(None)
    service = one(objs, "Service", "turnout-router")
    assert service["spec"]["type"] == "ClusterIP"
    [port] = service["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (80, "http")
    pod = deployment(objs, "router")["spec"]["template"]
    assert matches(service["spec"]["selector"], pod["metadata"]["labels"])
    assert port_number(pod["spec"]["containers"][0], "http") == 8080


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=str)
def test_services_select_their_own_pods_only(
    render_values: RenderValues, values_file: str | None
) -> None:
    objs = render_values(values_file)
    pods = {component(d): d["spec"]["template"] for d in of_kind(objs, "Deployment")}
    for service in of_kind(objs, "Service"):
        selected = [
            n
            for n, p in pods.items()
            if matches(service["spec"]["selector"], p["metadata"]["labels"])
        ]
        assert selected == [component(service)], ref(service)
        [c] = pods[component(service)]["spec"]["containers"]
        for port in service["spec"]["ports"]:
            port_number(c, port["targetPort"])


def test_router_autoscales_and_keeps_a_pod_through_drains(render_values: RenderValues) -> None:
    objs = render_values(None)
    router = deployment(objs, "router")
    assert "replicas" not in router["spec"]  # the HPA owns it
    hpa = one(objs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": router["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert matches(
        pdb["spec"]["selector"]["matchLabels"], router["spec"]["template"]["metadata"]["labels"]
    )
    # CPU utilisation is a share of the request: without one the HPA cannot scale.
    assert router["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]


def test_a_single_router_pod_gets_no_disruption_budget(render: Render) -> None:
    objs = render("--set", "router.autoscaling.enabled=false", "--set", "router.replicas=1")
    assert of_kind(objs, "PodDisruptionBudget") == []
    assert of_kind(objs, "HorizontalPodAutoscaler") == []
    assert deployment(objs, "router")["spec"]["replicas"] == 1


def test_autoscaling_bounds_are_checked(helm: Path) -> None:
    stderr = helm_fails(helm, "--set", "router.autoscaling.maxReplicas=1")
    assert "maxReplicas must be at least" in stderr


# --- pod security ---------------------------------------------------------------------------


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=str)
def test_every_pod_meets_the_restricted_security_standard(
    render_values: RenderValues, values_file: str | None
) -> None:
    problems: list[str] = []
    specs = list(pod_specs(render_values(values_file)))
    assert specs
    for where, pod in specs:
        sc = pod.get("securityContext", {})
        expected = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001}
        problems += [f"{where}: securityContext.{k}" for k, v in expected.items() if sc.get(k) != v]
        if sc.get("seccompProfile") != {"type": "RuntimeDefault"}:
            problems.append(f"{where}: seccompProfile")
        # Both components watch the API, so both mount a token, and say so.
        if pod.get("automountServiceAccountToken") is not True:
            problems.append(f"{where}: automountServiceAccountToken")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod.get("initContainers", []) + pod["containers"]:
            at = f"{where} container {c['name']}"
            csc = c.get("securityContext", {})
            if csc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{at}: readOnlyRootFilesystem")
            if csc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{at}: allowPrivilegeEscalation")
            if csc.get("capabilities") != {"drop": ["ALL"]}:
                problems.append(f"{at}: capabilities")
            if not c.get("resources", {}).get("requests"):
                problems.append(f"{at}: resources.requests")
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            if not tmp or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
                problems.append(f"{at}: no emptyDir at /tmp")
    assert problems == []


def test_service_accounts_do_not_hand_out_tokens_by_default(render_values: RenderValues) -> None:
    accounts = of_kind(render_values(None), "ServiceAccount")
    assert {a["metadata"]["name"] for a in accounts} == {"turnout-operator", "turnout-router"}
    assert all(a["automountServiceAccountToken"] is False for a in accounts)


# --- RBAC ---------------------------------------------------------------------------------


def grants(objs: list[Obj], account: str) -> list[tuple[str | None, Obj]]:
    """(namespace or None for cluster-wide, rule) for every rule bound to ``account``."""
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objs}
    out: list[tuple[str | None, Obj]] = []
    for binding in of_kind(objs, "RoleBinding") + of_kind(objs, "ClusterRoleBinding"):
        subjects = binding["subjects"]
        if not any(s["kind"] == "ServiceAccount" and s["name"] == account for s in subjects):
            continue
        assert all(s.get("namespace") == NAMESPACE for s in subjects), ref(binding)
        namespace = binding["metadata"].get("namespace")
        role_ref = binding["roleRef"]
        key = (
            role_ref["kind"],
            namespace if role_ref["kind"] == "Role" else None,
            role_ref["name"],
        )
        assert key in roles, f"{ref(binding)} refers to a missing {key}"
        out += [(namespace, rule) for rule in roles[key]["rules"]]
    return out


def allowed(
    rules: list[tuple[str | None, Obj]], group: str, resource: str, verb: str, namespace: str
) -> bool:
    return any(
        (ns is None or ns == namespace)
        and group in rule["apiGroups"]
        and resource in rule["resources"]
        and verb in rule["verbs"]
        for ns, rule in rules
    )


def account_of(objs: list[Obj], name: str) -> str:
    return str(deployment(objs, name)["spec"]["template"]["spec"]["serviceAccountName"])


CONFIGMAP_VERBS = {
    "router": {"get", "list", "create", "update"},
    "operator": {"get", "list", "delete"},
}


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=str)
def test_no_wildcards_and_no_secrets(render_values: RenderValues, values_file: str | None) -> None:
    objs = render_values(values_file)
    for name in ("operator", "router"):
        for ns, rule in grants(objs, account_of(objs, name)):
            assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], rule
            assert not {"secrets", "pods"} & set(rule["resources"]), rule
            assert not allowed([(ns, rule)], "", "secrets", "get", "default")
            if "configmaps" in rule["resources"]:  # the A/B ledger, in its own namespace only
                assert ns == NAMESPACE and rule["resources"] == ["configmaps"], rule
                # The routers append to their ledgers and never delete one; the operator reads
                # them and removes a finished experiment's, and never writes a count.
                assert set(rule["verbs"]) == CONFIGMAP_VERBS[name], rule


def test_operator_can_do_its_job_cluster_wide(render_values: RenderValues) -> None:
    objs = render_values(None)
    rules = grants(objs, account_of(objs, "operator"))
    needed = [
        ("turnout.dev", "modeldeployments", ["get", "list", "watch", "patch"]),
        ("turnout.dev", "modeldeployments/status", ["get", "patch"]),
        (
            "serving.kserve.io",
            "inferenceservices",
            ["get", "list", "watch", "create", "patch", "delete"],
        ),
        ("", "events", ["create", "patch"]),
        ("events.k8s.io", "events", ["create", "patch"]),
        ("kopf.dev", "clusterkopfpeerings", ["get", "list", "watch", "patch"]),
        ("apiextensions.k8s.io", "customresourcedefinitions", ["get", "list", "watch"]),
    ]
    for group, resource, verbs in needed:
        for verb in verbs:
            assert allowed(rules, group, resource, verb, "anywhere"), (group, resource, verb)
    assert not allowed(rules, "turnout.dev", "modeldeployments", "delete", "anywhere")
    assert not allowed(rules, "turnout.dev", "modeldeployments", "create", "anywhere")
    assert allowed(rules, "", "configmaps", "list", NAMESPACE)  # the routers' A/B ledgers
    assert not allowed(rules, "", "configmaps", "update", NAMESPACE)
    assert all(ns is None for ns, rule in rules if rule["resources"] != ["configmaps"])
    assert {r["metadata"]["name"] for r in of_kind(objs, "Role")} == LEDGER_ROLES


def test_namespaced_values_grant_only_in_the_listed_namespaces(render_values: RenderValues) -> None:
    objs = render_values("namespaced-values.yaml")
    watched = [r for r in of_kind(objs, "Role") if r["metadata"]["name"] not in LEDGER_ROLES]
    assert {r["metadata"]["namespace"] for r in watched} == {"team-a", "team-b"}
    assert {
        b["metadata"]["namespace"]
        for b in of_kind(objs, "RoleBinding")
        if b["metadata"]["name"] not in LEDGER_ROLES
    } == {"team-a", "team-b"}
    for role in of_kind(objs, "ClusterRole"):
        resources = {r for rule in role["rules"] for r in rule["resources"]}
        assert resources == {"customresourcedefinitions"}, ref(role)
    operator = grants(objs, account_of(objs, "operator"))
    for ns in ("team-a", "team-b"):
        assert allowed(operator, "serving.kserve.io", "inferenceservices", "create", ns)
        assert allowed(operator, "kopf.dev", "kopfpeerings", "patch", ns)
    assert not allowed(operator, "serving.kserve.io", "inferenceservices", "create", "default")
    assert not allowed(operator, "turnout.dev", "modeldeployments", "get", "default")
    assert not allowed(operator, "kopf.dev", "clusterkopfpeerings", "patch", "team-a")
    router = grants(objs, account_of(objs, "router"))
    assert allowed(router, "turnout.dev", "modeldeployments", "watch", "team-b")
    assert not allowed(router, "turnout.dev", "modeldeployments", "watch", "default")


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=str)
def test_router_can_only_read_modeldeployments(
    render_values: RenderValues, values_file: str | None
) -> None:
    objs = render_values(values_file)
    rules = [rule for _, rule in grants(objs, account_of(objs, "router"))]
    assert rules
    ledger = {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "verbs": ["get", "list", "create", "update"],
    }
    assert rules.count(ledger) == 1  # its A/B ledger, in the release namespace
    for rule in (r for r in rules if r != ledger):
        assert rule == {
            "apiGroups": ["turnout.dev"],
            "resources": ["modeldeployments"],
            "verbs": ["get", "list", "watch"],
        }


def test_every_rbac_rule_says_why() -> None:
    sources = sorted((CHART / "templates").rglob("*.yaml"))
    rules = 0
    for path in sources:
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        for i, line in enumerate(lines):
            if line.startswith("- apiGroups:"):
                rules += 1
                assert lines[i - 1].startswith("#"), (
                    f"{path.relative_to(ROOT)}: rule {line!r} has no comment saying why"
                )
    assert rules >= 8


# --- values and their schema -----------------------------------------------------------------


def test_an_unknown_value_is_rejected_by_name(helm: Path) -> None:
    assert "bogus" in helm_fails(helm, "--set", "bogus=1")
    assert "replicaz" in helm_fails(helm, "--set", "router.replicaz=3")


def test_a_wrongly_typed_value_is_rejected(helm: Path) -> None:
    assert "replicas" in helm_fails(helm, "--set", "operator.replicas=two")


def _schema_objects(node: Obj, path: str = "") -> Iterator[tuple[str, Obj]]:
    if "properties" in node:
        yield path or "(root)", node
        for key, child in node["properties"].items():
            yield from _schema_objects(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _schema_objects(node["items"], f"{path}[]")


def test_schema_closes_every_object_it_describes() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_objects = [
        p for p, node in _schema_objects(schema) if node.get("additionalProperties") is not False
    ]
    assert open_objects == []


def _value_paths(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(node, dict) and node:
        for key, child in node.items():
            yield (*path, key)
            yield from _value_paths(child, (*path, key))


def test_schema_and_values_describe_the_same_keys() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())

    def schema_paths(node: Obj, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
        for key, child in node.get("properties", {}).items():
            yield (*path, key)
            yield from schema_paths(child, (*path, key))

    documented, typed = set(_value_paths(values)), set(schema_paths(schema))
    assert documented - typed == set()
    # The schema may know more resource quantities (limits.cpu, ephemeral-storage) than are set.
    assert {p for p in typed - documented if "resources" not in p} == set()


def test_every_value_is_documented() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        if not re.match(r"^\s*[A-Za-z][\w-]*:", line):
            continue
        j = i - 1
        while (
            j >= 0 and lines[j].strip().startswith("#") and not lines[j].strip().startswith("# --")
        ):
            j -= 1  # continuation lines of the doc comment
        if j < 0 or not lines[j].strip().startswith("# --"):
            undocumented.append(f"values.yaml:{i + 1}: {line.strip()}")
    assert undocumented == []


def test_every_value_is_used_by_a_template() -> None:
    # files/workflows/*.yaml are templates too: templates/retrain.yaml renders them with tpl.
    templates = [*(CHART / "templates").rglob("*"), *(CHART / "files" / "workflows").glob("*")]
    source = "\n".join(p.read_text() for p in templates if p.suffix in (".yaml", ".tpl", ".txt"))
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    unused = []
    for path in _value_paths(values):
        # Used: read by name, or inside a parent handed over whole (toYaml .Values.x.resources).
        read = re.search(rf"\.{re.escape(path[-1])}\b", source)
        whole = any(re.search(rf"toYaml [^}}]*\.{re.escape(p)}\b", source) for p in path[1:-1])
        if not (read or whole):
            unused.append(".".join(path))
    assert unused == []


# --- ModelDeployments from values ---------------------------------------------------------------


def test_example_modeldeployments_are_valid(render_values: RenderValues) -> None:
    objs = render_values("modeldeployments-values.yaml")
    deployments = {o["metadata"]["name"]: o for o in of_kind(objs, "ModelDeployment")}
    assert set(deployments) == {"fraud", "churn", "ranking"}
    for obj in deployments.values():
        assert errors(obj, crds=crds_of(objs)) == []
        ModelDeploymentSpec.model_validate(obj["spec"])  # the cross-field rules (CEL) too
    fraud, churn, ranking = deployments["fraud"], deployments["churn"], deployments["ranking"]
    # Created once: an upgrade must not undo the operator's promotions, nor uninstall delete.
    assert all(
        o["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        for o in deployments.values()
    )
    assert fraud["metadata"]["namespace"] == NAMESPACE
    assert fraud["metadata"]["labels"]["team"] == "risk"
    assert (fraud["spec"]["strategy"]["type"], fraud["spec"]["serving"]["autoscalerClass"]) == (
        "Canary",
        "hpa",
    )
    serving = churn["spec"]["serving"]
    assert (serving["deploymentMode"], serving["minReplicas"], serving["scaleMetric"]) == (
        "Knative",
        0,
        "concurrency",
    )
    assert churn["spec"]["strategy"]["type"] == "Shadow"
    assert ranking["spec"]["strategy"]["type"] == "ABTest"
    assert (
        ranking["spec"]["serving"]["autoscalerClass"],
        ranking["spec"]["serving"]["scaleMetric"],
    ) == (
        "keda",
        "rps",
    )


def test_a_misspelt_modeldeployment_field_is_caught(render: Render) -> None:
    bad = [
        {"name": "fraud", "spec": {"model": "fraud", "stable": {"version": "v1"}, "stratgy": {}}}
    ]
    objs = render("--set-json", f"modelDeployments={json.dumps(bad)}")
    found = errors(one(objs, "ModelDeployment"), crds=crds_of(objs))
    assert found and "stratgy" in found[0]


def test_a_modeldeployment_outside_the_watched_namespaces_fails(helm: Path) -> None:
    bad = [
        {
            "name": "fraud",
            "namespace": "team-c",
            "spec": {"model": "fraud", "stable": {"version": "v1"}},
        }
    ]
    stderr = helm_fails(
        helm,
        *values_args("namespaced-values.yaml"),
        "--set-json",
        f"modelDeployments={json.dumps(bad)}",
    )
    assert "team-c" in stderr and "operator.watchNamespaces" in stderr


# --- monitoring -----------------------------------------------------------------------------


def test_monitoring_is_off_by_default(render_values: RenderValues) -> None:
    kinds = {o["kind"] for o in render_values(None)}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    assert [
        c for c in of_kind(render_values(None), "ConfigMap") if component(c) == "dashboard"
    ] == []


def test_service_monitors_scrape_the_router_and_operator(render_values: RenderValues) -> None:
    objs = render_values("monitoring-values.yaml")
    monitors = of_kind(objs, "ServiceMonitor")
    assert {component(m) for m in monitors} == {"router", "operator"}
    for monitor in monitors:
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        selector = monitor["spec"]["selector"]["matchLabels"]
        [service] = [
            s for s in of_kind(objs, "Service") if matches(selector, s["metadata"]["labels"])
        ]
        [endpoint] = monitor["spec"]["endpoints"]
        assert endpoint["path"] == "/metrics"
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        assert endpoint["port"] == {"router": "http", "operator": "metrics"}[component(monitor)]


@pytest.mark.parametrize(
    ("values_file", "namespaces"),
    [
        ("monitoring-values.yaml", {"any": True}),
        ("namespaced-values.yaml", {"matchNames": ["team-a", "team-b"]}),
    ],
)
def test_pod_monitor_scrapes_the_model_servers(
    render_values: RenderValues, values_file: str, namespaces: Obj
) -> None:
    monitor = one(render_values(values_file), "PodMonitor")
    assert monitor["spec"]["selector"] == {"matchLabels": {"turnout.dev/model-server": "true"}}
    assert monitor["spec"]["namespaceSelector"] == namespaces
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http1", "/metrics")


def test_dashboard_config_map_holds_the_dashboard(render_values: RenderValues) -> None:
    objs = render_values("monitoring-values.yaml")
    [dashboard] = [c for c in of_kind(objs, "ConfigMap") if component(c) == "dashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "turnout"}
    shipped = json.loads((CHART / "files" / "dashboard.json").read_text())
    assert json.loads(dashboard["data"]["turnout.json"]) == shipped


# --- retraining -----------------------------------------------------------------------------


def test_retrain_is_off_by_default(render_values: RenderValues) -> None:
    assert of_kind(render_values(None), "CronWorkflow") == []


def test_retrain_renders_every_shipped_workflow(render_values: RenderValues) -> None:
    # (tests/k8s/test_workflows.py checks what is in them.)
    shipped = sorted((CHART / "files" / "workflows").glob("*.yaml"))
    assert shipped
    objs = render_values("retrain-values.yaml")
    rendered = of_kind(objs, "CronWorkflow") + of_kind(objs, "WorkflowTemplate")
    assert len(rendered) == len(shipped)


def test_retrain_needs_a_registry_to_push_to(helm: Path) -> None:
    stderr = helm_fails(helm, "--set", "retrain.enabled=true")
    assert "retrain.registry is required" in stderr


# --- NOTES ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def notes(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """NOTES.txt as `helm install` prints it; --dry-run=client needs no cluster."""
    kubeconfig = tmp_path_factory.mktemp("kube") / "config"  # absent: nothing to reach
    out = run(
        "env",
        f"KUBECONFIG={kubeconfig}",
        helm,
        "install",
        RELEASE,
        CHART,
        "--namespace",
        NAMESPACE,
        "--dry-run=client",
        *values_args("modeldeployments-values.yaml"),
    )
    assert out.returncode == 0, out.stderr
    assert "NOTES:" in out.stdout
    return out.stdout.split("NOTES:", 1)[1]


def test_notes_say_how_to_roll_back(notes: str) -> None:
    assert "kubectl turnout rollback fraud -n turnout-system" in notes
    patch = (
        "kubectl patch mdep fraud -n turnout-system --type merge"
        """ -p '{"spec":{"candidate":null}}'"""
    )
    assert patch in notes
    # The patch is a valid merge patch that drops the candidate.
    assert json.loads(shlex.split(patch)[-1]) == {"spec": {"candidate": None}}


def test_notes_say_how_to_watch(notes: str) -> None:
    assert "kubectl get mdep -A -w" in notes
    assert "kubectl turnout status fraud -n turnout-system" in notes


def test_notes_say_how_to_read_the_admin_key_and_send_it(notes: str) -> None:
    read = (
        "export TURNOUT_KEY=$(kubectl -n turnout-system get secret turnout-router"
        " -o jsonpath='{.data.admin-key}' | base64 -d)"
    )
    assert read in notes
    assert '-H "authorization: Bearer $TURNOUT_KEY"' in notes


def test_notes_without_authentication_say_the_router_is_open(helm: Path, tmp_path: Path) -> None:
    off = ("--set", "router.auth.enabled=false")
    out = run(
        "env", f"KUBECONFIG={tmp_path / 'none'}", helm, "install", RELEASE, CHART,
        "--namespace", NAMESPACE, "--dry-run=client", *off,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    notes = out.stdout.split("NOTES:", 1)[1]
    assert "Authentication is off" in notes and "TURNOUT_KEY" not in notes


def test_notes_show_a_request_the_model_accepts(notes: str) -> None:
    assert "port-forward svc/turnout-router 8080:80" in notes
    command = " ".join(line.strip().rstrip("\\") for line in notes.splitlines() if line.strip())
    curl = shlex.split(command[command.index("curl ") :])
    assert "http://127.0.0.1:8080/v2/models/fraud/infer" in curl
    body = curl[curl.index("-d") + 1].encode()
    n_features = len(FRAUD_SCHEMA.features)
    features = Tensor("features", "FP32", (-1, n_features))
    request = decode_infer(body, header_length=None, inputs=[features], max_rows=1)
    assert request.inputs["features"].shape == (1, n_features)


# --- the kustomize base ---------------------------------------------------------------------


def _render_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "render_manifests", ROOT / "scripts" / "render_manifests.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kustomize_base_is_the_chart_rendered_with_defaults(helm: Path) -> None:
    script = _render_script()
    files = script.render(helm)
    assert script.stale(files) == [], "manifests/base is stale: run `make manifests`"


def test_kustomize_base_builds_and_every_object_is_valid(
    kubectl: Path, render_values: RenderValues
) -> None:
    out = run(kubectl, "kustomize", ROOT / "manifests" / "base")
    assert out.returncode == 0, out.stderr
    objs = [doc for doc in yaml.safe_load_all(out.stdout) if doc]
    crds = crds_of(objs)
    assert [f"{ref(o)}: {e}" for o in objs for e in errors(o, crds=crds)] == []
    for obj in objs:
        namespace = obj["metadata"].get("namespace")
        expected = None if obj["kind"] in CLUSTER_SCOPED else NAMESPACE
        assert namespace == expected, ref(obj)
    assert one(objs, "Namespace")["metadata"]["name"] == NAMESPACE
    # The router's Secret is the user's to make (its keys are generated at install).
    from_chart = {ref(o) for o in render_values(None)} - {f"Secret {NAMESPACE}/turnout-router"}
    assert {ref(o) for o in objs} == from_chart | {f"Namespace {NAMESPACE}"}
    router = deployment(objs, "router")["spec"]["template"]["spec"]
    [volume] = [v for v in router["volumes"] if v["name"] == "router-secret"]
    kustomization = (ROOT / "manifests" / "base" / "kustomization.yaml").read_text()
    assert f"create secret generic {volume['secret']['secretName']}" in kustomization
