"""The cluster-mode stories, end to end: API server -> operator -> router -> model servers,
judged from a real Prometheus.

Everything runs as the chart runs it, on loopback: `turnout operator` and `turnout route` as
processes with the command lines the chart renders and tokens of the chart's ServiceAccounts
(helm install watching the README's namespace), tests/k8s/kserve_harness.py playing KServe
with real model servers (`bentoml serve` of versions trained here), and the Debian
``prometheus`` configured as the local platform configures it (turnout/cli/prometheus_server.py:
the router, and the model servers through a file_sd file the harness keeps), scraping every
second. Synthetic users (turnout/cli/traffic.py) call both models through the router.

Two models behind one router, each with its own rollouts:

- fraud (the built-in server; versions from `turnout train`): a healthy canary promoted; a
  canary failing half its requests (the version's ``env`` sets the server's fault injection)
  rolled back with its error rate in status and events; ``kubectl turnout rollback`` and the
  README's plain kubectl recipes, run verbatim as an on-call account, taking effect
  mid-rollout with the operator running;
- digits (examples/digits, an image CNN served through the SDK): a version trained with the
  labels of 3 and 8 swapped, shadowed and blocked on top-class agreement, never answering a
  user.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from tests.k8s.apiserver import Api, wait_until, watching
from tests.k8s.cluster import Cluster
from tests.k8s.conftest import CHART, ROOT, helm_ok
from tests.k8s.test_cluster_kubectl import ROLLOUT_VERBS, Shell, _rbac, ok, rollback_recipes
from tests.k8s.test_cluster_operator import Process, start, wait_written_back, weights
from turnout.cli import prometheus_server
from turnout.cli.traffic import Traffic, conversion, digits_samples, fraud_samples
from turnout.core import ab_ledger
from turnout.core.assign import Arm
from turnout.core.crd import GROUP, VERSION
from turnout.io.ab_store import ConfigMapLedger
from turnout.io.kube import Kube
from turnout.io.processes import free_port

pytestmark = pytest.mark.cluster

#: The README's namespace and names, so that its recipes run as written.
NS = "risk"
RELEASE, SYSTEM = "st", "st-system"
IMAGE = "registry.example.com/{model}:{version}"
#: Seconds a real model server may take to start on a busy 2-core machine.
SERVER_START_S = 120.0
#: Seconds a rollout may take once its servers answer (a few analyses of a few seconds).
ROLLOUT_S = 90.0
#: The canary the stories use: one step, judged on 4 s of metrics (4 scrapes).
CANARY = {"steps": [50], "interval": "4s", "maxFailedChecks": 2}
#: Thresholds a healthy version passes on a busy shared machine; errors still fail. The
#: synthetic users' rows are not any version's training data, so a prediction PSI near the
#: default 0.25 says nothing here: drift has its own tests.
ANALYSIS = {
    "maxLatencyP99Ms": 2000,
    "maxLatencyRatio": 10,
    "latencyToleranceMs": 200,
    "maxPredictionPsi": 2.0,
}
#: The fault the broken version's server injects (half its requests fail).
FAULT = {"TURNOUT_FAULT_ERROR_RATE": "0.5"}
FRAUD_VERSIONS = {"v1": 0, "v2": 1, "v3": 2}  # version -> seed
DIGITS_VERSIONS = {"v1": ("--seed", "0"), "v4": ("--seed", "0", "--confuse", "3,8")}


#: One request body per model, as applications send them.
BODIES = {"fraud": fraud_samples(n=1)[0][0], "digits": digits_samples()[0][0]}


def ref(model: str, version: str, **more: Any) -> dict[str, Any]:
    return {"version": version, "image": IMAGE.format(model=model, version=version), **more}


def fraud_deployment() -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": "fraud", "namespace": NS},
        "spec": {
            "model": "fraud",
            "stable": ref("fraud", "v1"),
            "strategy": {"type": "Canary", "canary": CANARY},
            "analysis": ANALYSIS,
        },
    }


def digits_deployment() -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": "digits", "namespace": NS},
        "spec": {
            "model": "digits",
            "stable": ref("digits", "v1"),
            # Ten class scores per image: the shadow agrees when its top class is stable's.
            "comparison": {"type": "MultiClass"},
            "strategy": {
                "type": "Shadow",
                "shadow": {"duration": "6s", "then": "Canary"},
                "canary": CANARY,
            },
            "analysis": ANALYSIS,
        },
    }


# --- the platform ----------------------------------------------------------------------------


@dataclass
class Platform:
    cluster: Cluster
    api: Api
    router: str
    #: The chart's admin API key, as the router wants it.
    auth: dict[str, str]
    prometheus: str
    operator: Process
    harness: Process
    router_process: Process
    fraud: Traffic
    digits: Traffic
    shell: Shell

    def routes(self, model: str) -> dict[str, Any]:
        table = httpx.get(f"{self.router}/routes", headers=self.auth, timeout=5).json()["table"]
        return (table or {}).get("models", {}).get(model) or {}

    def candidate_routed(self, model: str) -> dict[str, Any] | None:
        return self.routes(model).get("candidate")

    def served(self, model: str, n: int = 20) -> set[tuple[str, str]]:
        """(variant, version) of ``n`` calls through the router, as an application sees them."""
        body = BODIES[model]
        seen = set()
        with httpx.Client(timeout=10, headers=self.auth) as client:
            for i in range(n):
                reply = client.post(
                    f"{self.router}/v2/models/{model}/infer",
                    content=body,
                    headers={"content-type": "application/json", "x-user-id": f"probe-{i}"},
                )
                assert reply.status_code == 200, reply.text
                seen.add(
                    (reply.headers["x-turnout-variant"], reply.headers["x-turnout-model-version"])
                )
        return seen

    def query(self, promql: str) -> float:
        """A PromQL expression's one value (0 when it answers nothing)."""
        doc = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": promql}, timeout=10)
        result = doc.json()["data"]["result"]
        return float(result[0]["value"][1]) if result else 0.0

    def events(self, name: str) -> list[dict[str, Any]]:
        field = f"involvedObject.name={name}"
        return list(self.cluster.get("events", "-n", NS, "--field-selector", field)["items"])

    def merge(self, name: str, patch: dict[str, Any]) -> None:
        self.cluster.ok("patch", "mdep", name, "-n", NS, "--type=merge", "-p", json.dumps(patch))


def _train(home: Path, logs: Path) -> list[tuple[str, subprocess.Popen[bytes]]]:
    """Every version the stories deploy, trained at once into one model store."""
    env = {**os.environ, "TURNOUT_HOME": str(home), "BENTOML_HOME": str(home / "bentoml")}
    runs: list[tuple[str, list[str]]] = [
        (f"fraud:{v}", ["-m", "turnout", "train", "--rows", "5000", "--version", v,
                        "--seed", str(seed)])
        for v, seed in FRAUD_VERSIONS.items()
    ]  # fmt: skip
    runs += [
        (f"digits:{v}", ["examples/digits/train.py", "--version", v, "--epochs", "12", *options])
        for v, options in DIGITS_VERSIONS.items()
    ]
    started = []
    for tag, argv in runs:
        log = (logs / f"train-{tag.replace(':', '-')}.log").open("wb")
        popen = subprocess.Popen(
            [sys.executable, *argv], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        started.append((tag, popen))
    return started


def _chart_pods(cluster: Cluster, helm: Path, values: list[str]) -> dict[str, dict[str, Any]]:
    """The operator's and the router's pod specs as the chart renders them, by command."""
    out = cluster.run(helm, "template", RELEASE, CHART, "-n", SYSTEM, *values)
    assert out.returncode == 0, out.stderr
    pods = {}
    for doc in yaml.safe_load_all(out.stdout):
        if doc and doc["kind"] == "Deployment":
            pod = doc["spec"]["template"]["spec"]
            pods[pod["containers"][0]["command"][1]] = pod
    return pods


def _mount_secrets(cluster: Cluster, pod: dict[str, Any], root: Path) -> list[str]:
    """What the kubelet does for the pod's Secret volumes: each Secret's items, as the API
    server holds them, written under ``root``; the container's args with each mount path
    replaced by its directory here."""
    args = list(pod["containers"][0]["args"])
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    for volume in pod["volumes"]:
        if "secret" not in volume:
            continue
        data = cluster.get("secret", volume["secret"]["secretName"], "-n", SYSTEM)["data"]
        here = root / volume["name"]
        here.mkdir(parents=True)
        for item in volume["secret"]["items"]:
            (here / item["path"]).write_bytes(base64.b64decode(data[item["key"]]))
        in_pod = mounts[volume["name"]]
        args = [a.replace(in_pod, str(here), 1) if a.startswith(in_pod) else a for a in args]
    return args


def _admin_key(cluster: Cluster) -> str:
    """The router's admin API key the chart generated (its NOTES say how to read it)."""
    secret = cluster.get("secret", f"{RELEASE}-turnout-router", "-n", SYSTEM)
    return base64.b64decode(secret["data"]["admin-key"]).decode()


def _set(args: list[str], flag: str, value: str) -> list[str]:
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


@pytest.fixture(scope="module")
def platform(
    cluster: Cluster,
    helm: Path,
    turnout_crds: list[str],
    third_party_crds: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Platform]:
    work = tmp_path_factory.mktemp("stories")
    home, logs = work / "home", work / "logs"
    logs.mkdir()
    trainings = _train(home, logs)  # meanwhile, the cluster is set up

    for ns in (SYSTEM, NS):
        cluster.namespace(ns)
    # Earlier tests (test_cluster_kubectl) leave their own fraud here, never reconciled.
    cluster.ok("delete", "mdep", "--all", "-n", NS, "--wait")
    values = ["--set", f"operator.watchNamespaces={{{NS}}}"]
    helm_ok(cluster, helm, "install", RELEASE, CHART, "-n", SYSTEM, "--skip-crds", *values)
    cluster.apply(_rbac("oncall", ROLLOUT_VERBS))
    pods = _chart_pods(cluster, helm, values)
    key = _admin_key(cluster)
    processes: list[Process] = []
    traffic: list[Traffic] = []
    try:
        # Prometheus, configured as the local platform does: the router and a file_sd file.
        router_port, prometheus_port = free_port(), free_port()
        router = f"http://127.0.0.1:{router_port}"
        prometheus = f"http://127.0.0.1:{prometheus_port}"
        targets = work / "prometheus" / "models.json"
        targets.parent.mkdir()
        targets.write_text("[]")
        prometheus_server.write_config(
            targets.parent, router_url=router, targets_file=targets, scrape_interval_s=1.0
        )
        prom = prometheus_server.start(targets.parent, port=prometheus_port)
        processes.append(Process("prometheus", prom, targets.parent / "prometheus.log"))

        for tag, training in trainings:
            if training.wait(timeout=600) != 0:
                log = logs / f"train-{tag.replace(':', '-')}.log"
                raise AssertionError(f"training {tag} failed:\n{log.read_text()[-3000:]}")
        store = {"TURNOUT_HOME": str(home), "BENTOML_HOME": str(home / "bentoml")}
        harness = start(
            "harness",
            ["-m", "tests.k8s.kserve_harness", "--kubeconfig", str(cluster.kubeconfig),
             "--namespace", NS, "--service", "digits=examples/digits",
             "--targets-file", str(targets)],
            env=store, logs=logs,
        )  # fmt: skip
        processes.append(harness)
        account = f"{RELEASE}-turnout-router"
        route_args = _mount_secrets(cluster, pods["route"], work / "router-volumes")
        route_args = _set(_set(route_args, "--host", "127.0.0.1"), "--port", str(router_port))
        router_process = start(
            "router",
            ["-m", "turnout", "route", *route_args],
            env={"KUBECONFIG": str(cluster.service_account_kubeconfig(SYSTEM, account))},
            logs=logs,
        )
        processes.append(router_process)
        operator_args = _set(pods["operator"]["containers"][0]["args"], "--prometheus", prometheus)
        operator_args = _set(operator_args, "--metrics-port", str(free_port()))
        operator_args = _set(operator_args, "--health-port", str(free_port()))
        account = f"{RELEASE}-turnout-operator"
        operator = start(
            "operator",
            [
                "-m",
                "turnout",
                "operator",
                *operator_args,
                "--scrape-interval",
                "1",
                "--listen-address",
                "127.0.0.1",
            ],
            env={
                "KUBECONFIG": str(cluster.service_account_kubeconfig(SYSTEM, account)),
                "POD_ID": "operator-0",
            },
            logs=logs,
        )
        processes.append(operator)
        prometheus_server.wait_ready(prometheus, timeout=60, proc=prom)
        harness.wait_log("^watching", timeout_s=60)
        operator.wait_log("Resuming operations", timeout_s=60)
        wait_until("the router answering", lambda: _live(router), timeout_s=60)

        api = Api(cluster)
        cluster.ok("create", "-f", "-", input=json.dumps(fraud_deployment()))
        cluster.ok("create", "-f", "-", input=json.dumps(digits_deployment()))
        fraud = Traffic(router, "fraud", rate=30, api_key=key).start()
        digits = Traffic(router, "digits", rate=20, samples=digits_samples(), api_key=key).start()
        traffic += [fraud, digits]
        shell = Shell(cluster, cluster.service_account_kubeconfig(NS, "oncall"), work)
        running = Platform(
            cluster, api, router, {"authorization": f"Bearer {key}"}, prometheus, operator,
            harness, router_process, fraud, digits, shell,
        )  # fmt: skip
        for model in ("fraud", "digits"):
            wait_until(
                f"{model} v1 served through the router",
                lambda m=model: _stable_is(running, m, "v1"),
                timeout_s=SERVER_START_S,
            )
        yield running
    finally:
        for t in traffic:
            t.stop()
        cluster.kubectl("delete", "mdep", "--all", "-n", NS, "--wait=false")
        for process in reversed(processes):
            process.stop()
        cluster.run(helm, "uninstall", RELEASE, "-n", SYSTEM, "--ignore-not-found")


def _live(router: str) -> bool:
    try:
        return httpx.get(f"{router}/v2/health/live", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _stable_is(platform: Platform, model: str, version: str) -> bool:
    try:
        routes = platform.routes(model)
    except httpx.HTTPError:
        return False
    return (routes.get("stable") or {}).get("version") == version


def _rollout(platform: Platform, name: str, candidate: dict[str, Any], **spec: Any) -> Any:
    """Set the candidate (and other spec fields) and wait for the rollout's end, written back;
    the deployment then, and the statuses seen on the way."""
    with watching(platform.api, NS, name) as watch:
        platform.merge(name, {"spec": {"candidate": candidate, **spec}})
        md = wait_written_back(platform.api, NS, name, timeout_s=SERVER_START_S + ROLLOUT_S)
        return md, watch.statuses(upto=md)


def _failed_checks(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in status.get("checks") or [] if not c["passed"]}


# --- the stories ----------------------------------------------------------------------------


def test_both_models_answer_through_one_router(platform: Platform) -> None:
    """fraud and digits, each a ModelDeployment in the same namespace, served by real model
    servers the router finds through status.routing."""
    fraud = httpx.post(
        f"{platform.router}/v2/models/fraud/infer",
        content=BODIES["fraud"],
        headers={"content-type": "application/json", **platform.auth},
        timeout=10,
    )
    assert fraud.status_code == 200, fraud.text
    assert fraud.headers["x-turnout-model-version"] == "v1"
    (probability,) = fraud.json()["outputs"]
    assert probability["name"] == "probability" and 0 <= probability["data"][0] <= 1

    body, label = digits_samples()[0]
    digits = httpx.post(
        f"{platform.router}/v2/models/digits/infer",
        content=body,
        headers={"content-type": "application/json", **platform.auth},
        timeout=10,
    )
    assert digits.status_code == 200, digits.text
    assert digits.headers["x-turnout-model-version"] == "v1"
    (scores,) = digits.json()["outputs"]
    assert scores["name"] == "probabilities" and len(scores["data"]) == 10
    assert int(np.argmax(scores["data"])) == label

    for name in ("fraud", "digits"):
        md = platform.api.deployment(NS, name)
        assert md is not None and md["status"]["phase"] == "Idle"
        url = md["status"]["routing"]["stable"]["url"]
        assert platform.routes(name)["stable"]["url"] == url
    # Prometheus scrapes the router and both models' servers.
    wait_until(
        "Prometheus scraping the router and two model servers",
        lambda: (
            platform.query('sum(up{job="turnout-router"})') == 1
            and platform.query('sum(up{job="turnout-model"})') >= 2
        ),
        timeout_s=30,
    )


def test_a_healthy_canary_is_promoted(platform: Platform) -> None:
    md, statuses = _rollout(platform, "fraud", ref("fraud", "v2"))
    status = md["status"]
    assert status["phase"] == "Promoted", status["message"]
    assert md["spec"]["stable"]["version"] == "v2"
    assert weights(statuses) == [50]
    assert status["routing"]["stable"]["version"] == "v2"
    assert "candidate" not in status["routing"]
    assert [h["version"] for h in status["history"]][:2] == ["v2", "v1"]
    # Judged on real traffic: the checks' numbers came from Prometheus.
    checks = {c["name"]: c for c in status["checks"]}
    assert checks["errorRate"]["passed"] and checks["errorRate"]["value"] == 0
    assert checks["latencyP99Ms"]["value"] > 0
    assert platform.query('sum(turnout_router_upstream_calls_total{version="v2"})') > 0

    # The router serves only the new version.
    wait_until("only v2 served", lambda: platform.served("fraud") == {("stable", "v2")})
    reasons = [(e["reason"], e["message"]) for e in platform.events("fraud")]
    assert any(
        r == "Promoted" and "v2 promoted over v1" in m and "errorRate 0 <= 0.01" in m
        for r, m in reasons
    ), reasons


def test_a_failing_canary_is_rolled_back_with_its_numbers(platform: Platform) -> None:
    md, statuses = _rollout(platform, "fraud", ref("fraud", "v3", env=FAULT))
    status = md["status"]
    assert status["phase"] == "RolledBack", status["message"]
    assert md["spec"]["stable"]["version"] == "v2"
    assert weights(statuses) == [50]  # it served at its first step, then no more
    failed = _failed_checks(status)
    assert "errorRate" in failed, status["checks"]
    rate = failed["errorRate"]["value"]
    assert 0.2 < rate < 0.8, rate  # about half of its attempts failed
    warned = [e for e in platform.events("fraud") if e["type"] == "Warning"]
    said = " | ".join(e["message"] for e in warned)
    assert re.search(r"errorRate 0\.\d+ > 0\.01", said), said
    assert any(e["reason"] == "RolledBack" for e in warned), said

    wait_until("only v2 served", lambda: platform.served("fraud") == {("stable", "v2")})
    # Users never saw its failures: each failed attempt was retried on stable.
    assert not [k for k in platform.fraud.counts.replies if k[2] >= 500]


def test_a_divergent_digits_shadow_is_blocked_and_never_answers(platform: Platform) -> None:
    """digits v4 (3 and 8 swapped in training) mirrored beside v1: its top class agrees too
    rarely, it is blocked, and no user ever got one of its replies."""
    md, statuses = _rollout(platform, "digits", ref("digits", "v4"))
    status = md["status"]
    assert status["phase"] == "RolledBack", status["message"]
    assert md["spec"]["stable"]["version"] == "v1"
    assert any((s.get("routing") or {}).get("shadow") for s in statuses), "never mirrored"
    assert weights(statuses) == []  # never a canary weight
    failed = _failed_checks(status)
    (agreement,) = [c for n, c in failed.items() if n.startswith("shadowAgreement")]
    assert agreement["name"] == "shadowAgreement (top class)"
    assert 0.5 < agreement["value"] < 0.95, agreement  # 3s and 8s are about a fifth of digits
    blocked = [e for e in platform.events("digits") if e["reason"] == "ShadowBlocked"]
    assert blocked and "shadowAgreement (top class)" in blocked[0]["message"]
    # Mirrored for real, never returned.
    assert platform.query('sum(turnout_shadow_agreement_total{model="digits"})') > 0
    assert platform.digits.counts.served_by("v4") == 0
    assert platform.served("digits") == {("stable", "v1")}


# --- rolling back by hand, mid-rollout, with the operator running ----------------------------

#: A canary that stays at its first step until someone acts.
HELD = {"strategy": {"canary": {"interval": "1h"}}}


def _hold_candidate(platform: Platform, version: str = "v1") -> None:
    """fraud's candidate ``version`` at 50 %, with the router sending it traffic."""
    platform.merge("fraud", {"spec": {"candidate": ref("fraud", version), **HELD}})
    wait_until(
        f"the router sending {version} candidate traffic",
        lambda: (
            (platform.candidate_routed("fraud") or {}).get("weight") == 50
            and ("candidate", version) in platform.served("fraud")
        ),
        timeout_s=SERVER_START_S,
    )


def _candidate_dropped_after(platform: Platform, started: float) -> float:
    """Seconds from ``started`` until the router no longer routes fraud's candidate; then
    every call is answered by stable."""
    wait_until(
        "the router without the candidate",
        lambda: platform.candidate_routed("fraud") is None,
        every_s=0.02,
    )
    elapsed = time.monotonic() - started
    stable = platform.routes("fraud")["stable"]["version"]
    assert platform.served("fraud") == {("stable", stable)}
    return elapsed


@pytest.fixture
def recipes(platform: Platform) -> Iterator[Platform]:
    yield platform
    platform.merge(
        "fraud", {"spec": {"candidate": None, "paused": False, **{"strategy": {"canary": CANARY}}}}
    )


def _run(platform: Platform, command: str) -> str:
    return ok(platform.shell.bash(command))


def test_kubectl_turnout_rollback_mid_rollout(recipes: Platform) -> None:
    platform = recipes
    plugin, _ = rollback_recipes()
    rollback = plugin[0].command
    assert rollback == "kubectl turnout rollback fraud -n risk"
    _hold_candidate(platform)
    started = time.monotonic()
    said = _run(platform, rollback)
    assert said.strip() == (
        "modeldeployment.turnout.dev/fraud: removed candidate v1; v2 serves all traffic"
    )
    seconds = _candidate_dropped_after(platform, started)
    assert seconds < 10, seconds
    md = wait_written_back(platform.api, NS, "fraud")
    assert md["status"]["phase"] == "RolledBack"
    assert md["spec"]["stable"]["version"] == "v2"
    aborted = [e for e in platform.events("fraud") if e["reason"] == "Aborted"]
    assert aborted, [e["reason"] for e in platform.events("fraud")]


def _recipe(plain: list[Any], fragment: str) -> str:
    (command,) = [s.command for s in plain if fragment in s.command]
    return str(command)


def test_the_readmes_plain_kubectl_recipes_mid_rollout(recipes: Platform) -> None:
    """Each of the README's kubectl-only recipes, run verbatim as the on-call account while
    the operator runs a rollout, does what its comment says to the traffic."""
    platform = recipes
    _, plain = rollback_recipes()

    # A candidate in flight: removed; the router stops sending it traffic.
    _hold_candidate(platform)
    started = time.monotonic()
    _run(platform, _recipe(plain, '{"spec":{"candidate":null}}'))
    seconds = _candidate_dropped_after(platform, started)
    assert seconds < 10, seconds

    # Forcing a decision: abort drops the candidate; the operator clears the annotation.
    _hold_candidate(platform, "v3")
    started = time.monotonic()
    _run(platform, _recipe(plain, "turnout.dev/action=abort"))
    _candidate_dropped_after(platform, started)
    md = wait_written_back(platform.api, NS, "fraud")
    assert md["status"]["phase"] == "RolledBack"
    assert "turnout.dev/action" not in (md["metadata"].get("annotations") or {})

    # "or promote": the held candidate becomes stable at once.
    _hold_candidate(platform, "v3")
    _run(platform, _recipe(plain, "turnout.dev/action=abort").replace("=abort", "=promote"))
    md = wait_written_back(platform.api, NS, "fraud")
    assert md["status"]["phase"] == "Promoted" and md["spec"]["stable"]["version"] == "v3"
    wait_until("only v3 served", lambda: platform.served("fraud") == {("stable", "v3")})

    # Stable back to a past version, read from status.history.
    listed = _run(platform, _recipe(plain, "jsonpath="))
    assert "v2\tregistry.example.com/fraud:v2" in listed.splitlines(), listed
    _run(platform, _recipe(plain, '"stable":{"version":"v2"'))
    wait_until(
        "v2 serving all traffic again",
        lambda: platform.served("fraud") == {("stable", "v2")},
        timeout_s=SERVER_START_S,
    )

    # Freezing the weights: a held canary stays where it is.
    _hold_candidate(platform, "v3")
    _run(platform, _recipe(plain, '{"spec":{"paused":true}}'))
    wait_until(
        "the pause recorded",
        lambda: (
            (platform.api.deployment(NS, "fraud") or {}).get("status", {}).get("phase") == "Paused"
        ),
    )
    assert (platform.candidate_routed("fraud") or {}).get("weight") == 50


# --- A/B, last: it leaves v3 stable ----------------------------------------------------------


def _ledger(
    platform: Platform, model: str, statuses: list[dict[str, Any]]
) -> dict[str, list[ab_ledger.Outcome]]:
    """The routers' A/B ledger of the experiment the statuses ran, read from its ConfigMaps
    the way the operator reads it."""
    split = [r for r in ((s.get("routing") or {}) for s in statuses) if r.get("candidate")][-1]
    experiment = ab_ledger.experiment_id(
        model=model, candidate=split["candidate"]["version"], salt=split.get("salt", "")
    )
    admin = Kube.connect(kubeconfig=str(platform.cluster.kubeconfig))
    ledger = ConfigMapLedger.from_kube(admin, namespace=SYSTEM)
    return ledger.read(model=model, experiment=experiment)


def test_an_ab_test_is_decided_from_the_routers_ledgers(platform: Platform) -> None:
    """fraud v3 converts twice as often as stable: the synthetic users post each outcome with
    the reply's assignment token, the router keeps them in its ledger ConfigMaps, and the
    operator (allowed only to read them) merges them, decides CandidateWon and promotes."""
    # A finished experiment's ledger, left by a replica long gone: removed when this one starts.
    admin = Kube.connect(kubeconfig=str(platform.cluster.kubeconfig))
    ledgers = ConfigMapLedger.from_kube(admin, namespace=SYSTEM)
    old = [ab_ledger.Outcome("r0", Arm.STABLE, 1.0, 0.0)]
    ledgers.append(model="fraud", experiment="finished", replica="gone-0", records=old)
    assert ledgers.read(model="fraud", experiment="finished") == {"gone-0": old}

    before = platform.fraud.counts.feedback
    platform.fraud.set_outcome(conversion({"v3": 0.30}, 0.15))
    try:
        ab = {"split": 50, "minSamplesPerArm": 100, "minDetectableEffect": 0.1, "interval": "4s"}
        strategy = {"type": "ABTest", "abTest": ab}
        md, statuses = _rollout(platform, "fraud", ref("fraud", "v3"), strategy=strategy)
    finally:
        platform.fraud.set_outcome(None)
    status = md["status"]
    assert status["phase"] == "Promoted", status["message"]
    assert md["spec"]["stable"]["version"] == "v3"
    reasons = [e["reason"] for e in platform.events("fraud")]
    assert "CandidateWon" in reasons, reasons
    arms = status["experiment"]["arms"]
    assert arms["stable"]["n"] >= 100 and arms["candidate"]["n"] >= 100, arms
    assert arms["candidate"]["mean"] > arms["stable"]["mean"], arms

    platform.merge("fraud", {"spec": {"strategy": {"type": "Canary", "canary": CANARY}}})

    # The ledgers hold exactly the outcomes the users had accepted: once the router no longer
    # splits, outcomes of the ended experiment are refused, so both counts come to rest.
    wait_until("the router no longer splitting", lambda: platform.candidate_routed("fraud") is None)

    def counted() -> tuple[float, int] | None:
        merged = ab_ledger.moments(_ledger(platform, "fraud", statuses))
        total = merged["stable"].n + merged["candidate"].n
        accepted = platform.fraud.counts.feedback - before
        return (total, accepted) if total == accepted else None

    total, _ = wait_until("the ledgers to hold every accepted outcome", counted, timeout_s=15)
    # The operator decided on some of the same records.
    assert arms["stable"]["n"] + arms["candidate"]["n"] <= total
    assert ledgers.read(model="fraud", experiment="finished") == {}
