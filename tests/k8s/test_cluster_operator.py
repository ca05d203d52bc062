"""The kopf operator for real: `turnout operator` against a real API server, as the chart runs it.

The operator runs as its own process with a token the API server issued to the chart's
operator ServiceAccount, under the chart's RBAC (helm install, watching two namespaces).
tests/k8s/kserve_harness.py plays KServe: in ``operator-real`` each InferenceService becomes
a real model server (`bentoml serve` of a version trained here with `turnout train`), in
``operator-fake`` it is only marked Ready. Canary analyses read tests/k8s/stub_prometheus.py,
which answers the operator's PromQL with numbers each test sets.

What tests/k8s/test_operator.py checks against a fake client is checked here on the server
itself: reconcile on create and on spec edits, one status patch per pass, a concurrent edit
winning over a stale promotion, events, garbage collection of owned InferenceServices by the
controller-manager, kopf peering between two replicas, and a restart mid-rollout.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.k8s.apiserver import Api, wait_until, watching
from tests.k8s.cluster import Cluster
from tests.k8s.conftest import CHART, ROOT, helm_ok
from tests.k8s.kserve_harness import stop_with_parent
from tests.k8s.stub_prometheus import StubPrometheus, serve
from turnout.core import isvc
from turnout.core.crd import GROUP, PLURAL, VERSION
from turnout.io.processes import free_port

pytestmark = pytest.mark.cluster

SYSTEM = "operator-system"
#: InferenceServices here become real model servers.
REAL = "operator-real"
#: InferenceServices here are only marked Ready.
FAKE = "operator-fake"
RELEASE = "op"
SERVICE_ACCOUNT = f"{RELEASE}-turnout-operator"
#: Seconds a real model server may take to start on a busy 2-core machine.
SERVER_START_S = 120.0


# --- ModelDeployments ---------------------------------------------------------------------


def status_of(api: Api, ns: str, name: str) -> dict[str, Any]:
    obj = api.deployment(ns, name)
    return (obj or {}).get("status") or {}


def wait_phase(
    api: Api, ns: str, name: str, phase: str, *, timeout_s: float = 60.0, **fields: Any
) -> dict[str, Any]:
    """The deployment's status once its phase (and the given status fields) are as said."""

    def probe() -> dict[str, Any] | None:
        status = status_of(api, ns, name)
        ok = status.get("phase") == phase and all(status.get(k) == v for k, v in fields.items())
        return status if ok else None

    return wait_until(f"{ns}/{name} {phase} {fields or ''}", probe, timeout_s=timeout_s)  # type: ignore[no-any-return]


def wait_written_back(api: Api, ns: str, name: str, *, timeout_s: float = 60.0) -> dict[str, Any]:
    """The deployment once a rollout's end is in its spec (no candidate) and the pass that
    followed the write-back has recorded it (observedGeneration)."""

    def probe() -> dict[str, Any] | None:
        md = api.deployment(ns, name)
        if md is None or "candidate" in md["spec"]:
            return None
        status = md.get("status") or {}
        done = status.get("observedGeneration") == md["metadata"]["generation"]
        return md if done and status.get("phase") in ("Promoted", "RolledBack") else None

    return wait_until(f"{ns}/{name}'s rollout written back", probe, timeout_s=timeout_s)  # type: ignore[no-any-return]


def deployment(
    name: str,
    ns: str,
    *,
    candidate: str | None = None,
    steps: list[float] | None = None,
    interval: str = "1s",
) -> dict[str, Any]:
    model = name  # one model per deployment: InferenceServices are named <model>-<version>
    spec: dict[str, Any] = {
        "model": model,
        "stable": {"version": "v1", "image": f"registry.example.com/{model}:v1"},
        "strategy": {"canary": {"steps": steps or [50], "interval": interval}},
    }
    if candidate:
        spec["candidate"] = {
            "version": candidate,
            "image": f"registry.example.com/{model}:{candidate}",
        }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def weights(statuses: list[dict[str, Any]]) -> list[float]:
    """The candidate weights the routing went through, in order, each once."""
    seen: list[float] = []
    for status in statuses:
        candidate = (status.get("routing") or {}).get("candidate")
        if candidate and (not seen or seen[-1] != candidate["weight"]):
            seen.append(candidate["weight"])
    return seen


def merge(cluster: Cluster, ns: str, name: str, patch: dict[str, Any]) -> None:
    cluster.ok("patch", "mdep", name, "-n", ns, "--type=merge", "-p", json.dumps(patch))


# --- processes: the harness and the operator -----------------------------------------------


@dataclass
class Process:
    """One run of a process. Its log file is shared with earlier runs of the same name (a
    restarted replica appends), so it reads only from `start`, the offset its run began at."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    start: int = 0

    def mark(self) -> int:
        """Where the log ends now: `wait_log(since=mark)` waits for lines written after it."""
        return self.log.stat().st_size

    def text(self, since: int | None = None) -> str:
        with self.log.open("rb") as log:
            log.seek(self.start if since is None else since)
            return log.read().decode(errors="replace")

    def wait_log(
        self, pattern: str, *, count: int = 1, since: int | None = None, timeout_s: float = 60.0
    ) -> str:
        def probe() -> str | None:
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited:\n{self.text()[-3000:]}")
            text = self.text(since)
            return text if len(re.findall(pattern, text, re.MULTILINE)) >= count else None

        try:
            return wait_until(f"{pattern!r} in {self.name}'s log", probe, timeout_s=timeout_s)  # type: ignore[no-any-return]
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- {self.name}:\n{self.text()[-3000:]}") from None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)


def start(name: str, argv: list[str], *, env: dict[str, str], logs: Path) -> Process:
    log = logs / f"{name}.log"
    with log.open("ab") as out:
        offset = out.tell()
        popen = subprocess.Popen(
            [sys.executable, *argv],
            cwd=ROOT,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=stop_with_parent,
        )
    return Process(name, popen, log, offset)


class Operators:
    """`turnout operator` processes, each a replica named like a pod (POD_ID)."""

    def __init__(self, kubeconfig: Path, prometheus: str, logs: Path) -> None:
        self.kubeconfig = kubeconfig
        self.prometheus = prometheus
        self.logs = logs
        self.running: dict[str, Process] = {}

    def start(self, name: str, *, priority: int) -> Process:
        argv = [
            "-m", "turnout", "operator",
            "--namespace", REAL, "--namespace", FAKE,
            "--prometheus", self.prometheus,
            "--peering", "turnout",
            "--priority", str(priority),
            "--metrics-port", str(free_port()),
            "--health-port", str(free_port()),
            "--listen-address", "127.0.0.1",
            "--scrape-interval", "1",
        ]  # fmt: skip
        env = {"KUBECONFIG": str(self.kubeconfig), "POD_ID": name}
        process = start(name, argv, env=env, logs=self.logs)
        self.running[name] = process
        return process

    def main(self) -> Process:
        """The replica most tests use, active (started if it is not running)."""
        process = self.running.get("operator-0")
        if process is None or process.popen.poll() is not None:
            process = self.start("operator-0", priority=100)
            # kopf resumes in each namespace once it sees no higher-priority peer.
            process.wait_log("Resuming operations", count=2)
        return process

    def stop_all(self) -> None:
        for process in self.running.values():
            process.stop()


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(cluster: Cluster) -> Iterator[Api]:
    reader = Api(cluster)
    yield reader
    reader.client.close()


@pytest.fixture(scope="module")
def operator_kubeconfig(
    cluster: Cluster, helm: Path, turnout_crds: list[str], third_party_crds: list[str]
) -> Iterator[Path]:
    """The chart installed watching REAL and FAKE, and a token of its operator ServiceAccount.

    No pod runs (no kubelet): the chart gives the ServiceAccount, Roles, RoleBindings and
    KopfPeerings; the operator runs here as a process with that account's token."""
    for ns in (SYSTEM, REAL, FAKE):
        cluster.namespace(ns)
    values = ["--set", f"operator.watchNamespaces={{{REAL},{FAKE}}}"]
    helm_ok(cluster, helm, "install", RELEASE, CHART, "-n", SYSTEM, "--skip-crds", *values)
    try:
        yield cluster.service_account_kubeconfig(SYSTEM, SERVICE_ACCOUNT)
    finally:
        cluster.run(helm, "uninstall", RELEASE, "-n", SYSTEM, "--ignore-not-found")


@pytest.fixture(scope="module")
def model_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store with fraud:v1 and fraud:v2, made by `turnout train` (both at once)."""
    home = tmp_path_factory.mktemp("models")
    env = {**os.environ, "TURNOUT_HOME": str(home), "BENTOML_HOME": str(home / "bentoml")}

    def train(version: str, seed: int) -> subprocess.Popen[bytes]:
        argv = ["train", "--rows", "5000", "--version", version, "--seed", str(seed)]
        return subprocess.Popen(
            [sys.executable, "-m", "turnout", *argv],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    trainings = [train("v1", 0), train("v2", 1)]
    for training in trainings:
        out, _ = training.communicate(timeout=300)
        assert training.returncode == 0, out.decode(errors="replace")
    return home


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("operator-logs")


@pytest.fixture(scope="module")
def harness(
    cluster: Cluster, operator_kubeconfig: Path, model_home: Path, logs: Path
) -> Iterator[Process]:
    argv = [
        "-m", "tests.k8s.kserve_harness", "--kubeconfig", str(cluster.kubeconfig),
        "--namespace", REAL, "--namespace", FAKE, "--fake-namespace", FAKE,
    ]  # fmt: skip
    env = {"TURNOUT_HOME": str(model_home), "BENTOML_HOME": str(model_home / "bentoml")}
    process = start("harness", argv, env=env, logs=logs)
    try:
        process.wait_log("^watching", timeout_s=60)
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def stub() -> Iterator[StubPrometheus]:
    with serve(StubPrometheus()) as running:
        yield running


@pytest.fixture
def prometheus(stub: StubPrometheus) -> StubPrometheus:
    """The stub, healthy: every version judged on plenty of requests, no errors, fast."""
    stub.reset()
    return stub


@pytest.fixture(scope="module")
def operators(
    operator_kubeconfig: Path, harness: Process, stub: StubPrometheus, logs: Path
) -> Iterator[Operators]:
    running = Operators(operator_kubeconfig, stub.url, logs)
    try:
        yield running
    finally:
        running.stop_all()


# --- the tests -----------------------------------------------------------------------------


@dataclass
class Counts:
    """The API server's request counters, to compare before and after."""

    api: Api

    def __post_init__(self) -> None:
        self.start = self.now()

    def now(self) -> dict[str, int]:
        return {
            "passes": self.api.requests("GET", PLURAL),  # each pass starts with one GET
            "status_patches": self.api.requests("PATCH", PLURAL, "status"),
        }

    def since(self) -> dict[str, int]:
        now = self.now()
        return {k: now[k] - self.start[k] for k in now}


# --- reconcile on create and on spec edits (real model servers) -----------------------------


@pytest.fixture(scope="module")
def fraud(cluster: Cluster, api: Api, operators: Operators) -> dict[str, Any]:
    """A ModelDeployment of fraud:v1 in REAL, reconciled until its server is Ready; what the
    API server saw on the way."""
    operators.main()
    counts = Counts(api)
    with watching(api, REAL, "fraud") as watch:
        cluster.ok("create", "-f", "-", input=json.dumps(deployment("fraud", REAL, steps=[25, 50])))

        def routed() -> dict[str, Any] | None:
            status = status_of(api, REAL, "fraud")
            return status if status.get("routing", {}).get("stable", {}).get("url") else None

        status = wait_until("fraud's stable URL in its routing", routed, timeout_s=SERVER_START_S)
        time.sleep(2)  # a quiet moment: passes that change nothing must write nothing
        seen = watch.statuses()
    return {"status": status, "statuses": seen, "counts": counts.since()}


def test_create_serves_stable_through_an_owned_inference_service(
    api: Api, fraud: dict[str, Any]
) -> None:
    md = api.deployment(REAL, "fraud")
    assert md is not None
    ((name, obj),) = api.inference_services(REAL, "fraud").items()
    assert name == "fraud-v1"
    assert obj["metadata"]["ownerReferences"] == [
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ModelDeployment",
            "name": "fraud",
            "uid": md["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    url = obj["status"]["url"]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url), url
    status = md["status"]
    assert status["phase"] == "Idle"
    assert status["routing"]["stable"] == {"version": "v1", "url": url}
    assert status["observedGeneration"] == md["metadata"]["generation"]
    # The URL the router would be given is a real model server of that version.
    reply = httpx.get(f"{url}/v2/models/fraud", timeout=10)
    assert reply.status_code == 200
    assert reply.headers["x-turnout-model-version"] == "v1"


def test_create_writes_status_once_per_pass_that_changes_it(fraud: dict[str, Any]) -> None:
    """Waiting for the server, then serving: two statuses, two status PATCHes, however many
    passes the InferenceService's own changes and the timer caused."""
    said = [(s["phase"], s["message"]) for s in fraud["statuses"]]
    assert said == [
        ("Idle", "waiting for v1's server to be ready"),
        ("Idle", "v1 serves all traffic"),
    ]
    counts = fraud["counts"]
    assert counts["status_patches"] == 2, counts
    assert counts["passes"] >= counts["status_patches"], counts


def test_spec_edit_rolls_out_the_candidate_step_by_step(
    cluster: Cluster, api: Api, fraud: dict[str, Any], prometheus: StubPrometheus
) -> None:
    """A candidate added to the spec: its InferenceService and server, the canary's steps,
    promotion written back into the spec, the old version retired, and the events."""
    counts = Counts(api)
    with watching(api, REAL, "fraud") as watch:
        merge(
            cluster,
            REAL,
            "fraud",
            {"spec": {"candidate": {"version": "v2", "image": "registry.example.com/fraud:v2"}}},
        )
        md = wait_written_back(api, REAL, "fraud", timeout_s=SERVER_START_S)
        statuses = watch.statuses(upto=md)
    patched = counts.since()["status_patches"]
    assert md["spec"]["stable"]["version"] == "v2"
    assert weights(statuses) == [25, 50]

    owned = api.inference_services(REAL, "fraud")
    assert set(owned) == {"fraud-v1", "fraud-v2"}
    v2 = owned["fraud-v2"]
    assert v2["metadata"]["ownerReferences"][0]["uid"] == md["metadata"]["uid"]
    # Promoted: v2 serves all traffic from its own server; v1 drains before it is deleted.
    assert md["status"]["routing"]["stable"] == {"version": "v2", "url": v2["status"]["url"]}
    assert "candidate" not in md["status"]["routing"]
    assert isvc.RETIRED_ANNOTATION in owned["fraud-v1"]["metadata"]["annotations"]
    reply = httpx.get(f"{v2['status']['url']}/v2/models/fraud", timeout=10)
    assert reply.headers["x-turnout-model-version"] == "v2"

    events = cluster.get("events", "-n", REAL, "--field-selector", "involvedObject.name=fraud")
    said = [(e["reason"], e["source"]["component"]) for e in events["items"]]
    for reason in ("Started", "StepPassed", "Promoted"):
        assert (reason, "turnout-operator") in said, said
    promoted = next(e for e in events["items"] if e["reason"] == "Promoted")
    assert promoted["involvedObject"]["uid"] == md["metadata"]["uid"]
    assert "v2 promoted over v1" in promoted["message"]

    # One status PATCH for each status the watch saw, none for passes that changed nothing.
    assert patched == len(statuses), [s["message"] for s in statuses]


def test_deleting_the_deployment_stops_its_model_servers(
    cluster: Cluster, api: Api, operators: Operators, harness: Process, fraud: dict[str, Any]
) -> None:
    """Deleted while the operator runs: kopf lets it go at once, its InferenceServices go
    with it, and the harness (as KServe would) stops their servers."""
    operators.main()
    urls = {name: o["status"]["url"] for name, o in api.inference_services(REAL, "fraud").items()}
    assert set(urls) == {"fraud-v1", "fraud-v2"}
    cluster.ok("delete", "mdep", "fraud", "-n", REAL, "--timeout=60s")
    wait_until("fraud's InferenceServices gone", lambda: not api.inference_services(REAL, "fraud"))
    for name, url in urls.items():
        harness.wait_log(f"stopped {REAL}/{name} ")
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/readyz", timeout=5)


# --- what only a real API server does -----------------------------------------------------


def test_an_edit_during_a_promotion_wins_and_the_next_pass_decides_again(
    cluster: Cluster, api: Api, operators: Operators, prometheus: StubPrometheus
) -> None:
    """The spec is edited while the operator is deciding to promote: its writes carry the
    resourceVersion it read, the API server answers 409, and the next pass acts on the edit
    instead of promoting the candidate the user just replaced."""
    operator = operators.main()
    prometheus.released.clear()  # the first analysis of the candidate waits for the edit
    cluster.ok("create", "-f", "-", input=json.dumps(deployment("race", FAKE, candidate="v2")))
    assert prometheus.holding.wait(60), "the operator never analysed v2"
    merge(
        cluster,
        FAKE,
        "race",
        {"spec": {"candidate": {"version": "v3", "image": "registry.example.com/race:v3"}}},
    )
    prometheus.released.set()

    md = wait_written_back(api, FAKE, "race")
    assert md["spec"]["stable"]["version"] == "v3", "the edit was lost"
    status = md["status"]
    assert [h["version"] for h in status["history"]][:2] == ["v3", "v1"]
    log = operator.text()
    assert f"{FAKE}/race changed while deciding" in log
    assert f"{FAKE}/race: Promoted v2" not in log


def test_a_restart_mid_rollout_resumes_the_same_step(
    cluster: Cluster, api: Api, operators: Operators, prometheus: StubPrometheus
) -> None:
    """Killed at the second of three steps (SIGKILL: no goodbye), the operator comes back
    (same pod name, as a restarted container) and goes on from that step, in the same
    rollout: no restart at the first weight, no second Started."""
    operator = operators.main()
    prometheus.allow("v2", 1)  # one analysis on data (20% -> 40%), then the step waits
    doc = deployment("resume", FAKE, candidate="v2", steps=[20, 40, 60])
    cluster.ok("create", "-f", "-", input=json.dumps(doc))
    before = wait_phase(api, FAKE, "resume", "Progressing", step=1)
    operator.wait_log(f"{FAKE}/resume: InsufficientData")
    operator.stop(signal.SIGKILL)
    before = status_of(api, FAKE, "resume")
    assert (before["step"], before["routing"]["candidate"]["weight"]) == (1, 40)

    prometheus.allow("v2", None)
    with watching(api, FAKE, "resume") as watch:
        restarted = operators.main()
        after = wait_phase(api, FAKE, "resume", "Promoted")
        statuses = watch.statuses()
    assert weights(statuses) in ([60], [40, 60]), weights(statuses)
    assert after["rolloutStartedAt"] == before["rolloutStartedAt"]
    assert f"{FAKE}/resume: StepPassed v2 40% -> 60%" in restarted.text()
    events = cluster.get("events", "-n", FAKE, "--field-selector", "involvedObject.name=resume")
    assert [e["reason"] for e in events["items"]].count("Started") == 1


def test_deleting_a_model_deployment_garbage_collects_its_inference_services(
    cluster: Cluster, api: Api, operators: Operators, prometheus: StubPrometheus
) -> None:
    """With no operator running, the controller-manager's garbage collector removes the
    deployment's InferenceServices through their owner references (foreground deletion:
    blockOwnerDeletion holds the owner until they are gone)."""
    operator = operators.main()
    doc = deployment("gc", FAKE, candidate="v2", steps=[50], interval="1h")
    cluster.ok("create", "-f", "-", input=json.dumps(doc))
    wait_phase(api, FAKE, "gc", "Progressing")
    assert set(api.inference_services(FAKE, "gc")) == {"gc-v1", "gc-v2"}
    operator.stop()

    cluster.ok("delete", "mdep", "gc", "-n", FAKE, "--cascade=foreground", "--wait=false")
    wait_until("gc's InferenceServices collected", lambda: not api.inference_services(FAKE, "gc"))
    # No finalizer, turnout's or kopf's: the deployment goes too, with no operator running.
    wait_until("gc gone", lambda: api.deployment(FAKE, "gc") is None, timeout_s=30)


def test_two_replicas_only_one_acts_and_the_other_takes_over(
    cluster: Cluster, api: Api, operators: Operators, prometheus: StubPrometheus
) -> None:
    """kopf peering in each watched namespace: a replica of higher priority takes over and the
    other pauses; when it goes (SIGTERM, as Kubernetes stops a pod) the first resumes."""
    first = operators.main()  # priority 100, active in both namespaces
    before = first.mark()
    second = operators.start("operator-1", priority=200)
    first.wait_log("Pausing operations in favour of", count=2, since=before)  # per namespace
    second.wait_log("Resuming operations", count=2)
    peering = api.get(f"/apis/kopf.dev/v1/namespaces/{FAKE}/kopfpeerings/turnout")
    peers = {name: peer["priority"] for name, peer in peering["status"].items()}
    assert peers == {"operator-0": 100, "operator-1": 200}

    cluster.ok("create", "-f", "-", input=json.dumps(deployment("peer", FAKE)))
    wait_phase(api, FAKE, "peer", "Idle", message="v1 serves all traffic")
    assert f"{FAKE}/peer: Idle" in second.text()
    assert f"{FAKE}/peer" not in first.text(), "the paused replica acted"

    before = first.mark()
    second.stop()
    first.wait_log("Resuming operations", count=2, since=before, timeout_s=30)
    candidate = {"version": "v2", "image": "registry.example.com/peer:v2"}
    merge(cluster, FAKE, "peer", {"spec": {"candidate": candidate}})
    wait_written_back(api, FAKE, "peer")
    first.wait_log(f"{FAKE}/peer: Promoted v2")
    assert f"{FAKE}/peer: Started" not in second.text()


def test_no_request_of_the_operator_was_refused(operators: Operators) -> None:
    """The chart's RBAC let every replica do all of the above: no 403, no rejected object,
    no event it could not post, no handler that failed."""
    refusals = ("Forbidden", " 403", "Unprocessable", "could not post event", "Traceback")
    for process in operators.running.values():
        for line in process.text(since=0).splitlines():  # every run of that replica
            assert not any(word in line for word in refusals), f"{process.name}: {line}"
            assert not re.search(r"Handler .* failed", line), f"{process.name}: {line}"
