"""The operator's kopf handlers, driven step by step against a faked turnout.io.kube.

No API server runs here: ``FakeKube`` keeps objects in memory with the server's rules that
matter (merge patches, generation, optimistic locking, owner garbage collection), the real
client's HTTP layer raises if anything reaches it (``no_http``), and every InferenceService
the handlers send is validated against KServe's own CRD schema.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
import pytest

from services.controller.cluster import ClusterController
from services.controller.operator import (
    Handlers,
    OperatorMetrics,
    PeeringGate,
    configure,
    register,
)
from tests.k8s.fake_kube import FakeKube, no_http  # noqa: F401
from tests.k8s.validate import errors
from turnout.core.ab_ledger import Outcome
from turnout.core.assign import Arm
from turnout.core.observation import Metrics, MetricsQuery, VersionMetrics
from turnout.core.spec import ACTION_ANNOTATION
from turnout.io.ab_store import MemoryLedger
from turnout.io.kube import Conflict

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
NS = "risk"


class FakeMetrics:
    def __init__(self) -> None:
        self.candidate = VersionMetrics(requests=500, error_rate=0.0, p99_ms=10.0)
        self.queries: list[MetricsQuery] = []

    def observe(self, query: MetricsQuery) -> Metrics:
        self.queries.append(query)
        stable = VersionMetrics(requests=5000, error_rate=0.0, p99_ms=10.0)
        return Metrics(stable=stable, candidate=self.candidate)


def deployment(**spec: Any) -> dict[str, Any]:
    base = {
        "model": "fraud",
        "stable": {"version": "v1", "image": "registry.example.com/fraud:v1"},
        "strategy": {"type": "Canary", "canary": {"steps": [10, 50], "interval": "60s"}},
    }
    return {
        "apiVersion": "turnout.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "fraud", "namespace": NS},
        "spec": {**base, **spec},
    }


class Cluster:
    def __init__(self) -> None:
        self.kube = FakeKube(namespace=NS)
        self.now = T0
        self.metrics = FakeMetrics()
        self.operator_metrics = OperatorMetrics()
        self.ledgers = MemoryLedger()
        self.controller = ClusterController(
            kube=self.kube,
            metrics=self.metrics,
            prometheus_url="http://prometheus.monitoring:9090",
            clock=lambda: self.now,
            ledgers=self.ledgers,
        )
        self.handlers = Handlers(self.controller, self.operator_metrics, clock=lambda: self.now)

    # --- what happens in the cluster -------------------------------------------------------

    def create(self, doc: dict[str, Any]) -> None:
        self.kube.add_deployment(doc)
        name = doc["metadata"]["name"]
        self._run(self.handlers.deployment_event("ADDED", self.kube.get_deployment(NS, name)))

    def edit(self, patch: dict[str, Any], name: str = "fraud") -> None:
        self.kube.patch_deployment(NS, name, patch)
        self._run(self.handlers.deployment_event("MODIFIED", self.kube.get_deployment(NS, name)))

    def ready(self, version: str, ready: bool = True) -> None:
        self.kube.set_ready(NS, f"fraud-{version}", ready)
        server = copy.deepcopy(self.kube.isvcs[(NS, f"fraud-{version}")])
        self._run(self.handlers.isvc_event("MODIFIED", server))

    def tick(self, after: float = 0.0) -> None:
        self.now += timedelta(seconds=after)
        self._run(self.handlers.tick(NS, "fraud"))

    def delete(self, name: str = "fraud") -> None:
        body = self.kube.get_deployment(NS, name)
        self.kube.delete_deployment(NS, name)
        self._run(self.handlers.deployment_event("DELETED", body))

    def _run(self, coro: Any) -> None:
        """Run a handler, then what the watch delivers next: the deployment as the operator's
        own writes left it (its write-back, a cleared action), until a delivery changes
        nothing (the handler passes again only when spec or action changed)."""
        asyncio.run(coro)
        for _ in range(5):
            if (NS, "fraud") not in self.kube.deployments:
                break
            before = len(self.kube.writes)
            body = self.kube.get_deployment(NS, "fraud")
            asyncio.run(self.handlers.deployment_event("MODIFIED", body))
            if len(self.kube.writes) == before:
                break
        for (_, name), obj in self.kube.isvcs.items():
            assert errors(obj) == [], name

    # --- reading back --------------------------------------------------------------------

    @property
    def status(self) -> dict[str, Any]:
        return self.kube.status("fraud")

    @property
    def spec(self) -> dict[str, Any]:
        return self.kube.spec("fraud")

    def weight(self) -> float | None:
        cand = self.status.get("routing", {}).get("candidate")
        return None if cand is None else cand["weight"]

    def isvc_names(self) -> list[str]:
        return sorted(name for _, name in self.kube.isvcs)

    def sent_isvcs(self) -> list[dict[str, Any]]:
        return [
            b
            for verb, kind, _, b in self.kube.writes
            if (verb, kind) == ("create", "InferenceService")
        ]

    def metric(self, metric: str, **labels: str) -> float | None:
        return self.operator_metrics.registry.get_sample_value(metric, labels)


@pytest.fixture
def cluster() -> Cluster:
    return Cluster()


def serving(c: Cluster) -> Cluster:
    """A deployment whose stable v1 is Ready and routed."""
    c.create(deployment())
    c.ready("v1")
    return c


# --- create → ready → canary steps → promote ------------------------------------------------


def test_a_new_deployment_gets_one_inference_service_and_traffic_once_ready(cluster: Cluster):
    cluster.create(deployment())
    assert cluster.isvc_names() == ["fraud-v1"]
    assert cluster.status.get("routing", {}).get("stable") is None
    assert "waiting for v1" in cluster.status["message"]

    cluster.ready("v1")
    stable = cluster.status["routing"]["stable"]
    assert stable == {
        "version": "v1",
        "url": "http://fraud-v1-predictor.risk.svc.cluster.local",
    }
    assert cluster.status["phase"] == "Idle"
    assert (
        cluster.metric("turnout_modeldeployment_phase", namespace=NS, name="fraud", phase="Idle")
        == 1
    )


def test_the_inference_service_is_the_bento_on_port_3000_owned_by_the_deployment(cluster: Cluster):
    cluster.create(deployment())
    (body,) = cluster.sent_isvcs()
    meta, predictor = body["metadata"], body["spec"]["predictor"]
    (container,) = predictor["containers"]
    assert container["image"] == "registry.example.com/fraud:v1"
    assert container["ports"][0]["containerPort"] == 3000
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 3000}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": 3000}
    assert {"name": "TURNOUT_MODEL", "value": "fraud:v1"} in container["env"]
    assert predictor["annotations"]["prometheus.io/scrape"] == "true"
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "2Gi"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert predictor["securityContext"]["runAsNonRoot"] is True
    owner = meta["ownerReferences"][0]
    fraud = cluster.kube.get_deployment(NS, "fraud")
    assert (owner["kind"], owner["uid"], owner["controller"]) == (
        "ModelDeployment",
        fraud["metadata"]["uid"],
        True,
    )
    assert meta["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert meta["annotations"]["serving.kserve.io/autoscalerClass"] == "hpa"
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("cpu", 70)
    assert errors(body) == []


def test_canary_steps_through_its_weights_and_promotes(cluster: Cluster):
    serving(cluster)
    cluster.edit(
        {"spec": {"candidate": {"version": "v2", "image": "registry.example.com/fraud:v2"}}}
    )
    assert cluster.isvc_names() == ["fraud-v1", "fraud-v2"]
    assert cluster.weight() is None, "no traffic before the candidate is Ready"

    cluster.ready("v2")
    assert (cluster.status["phase"], cluster.weight()) == ("Progressing", 10)
    cluster.tick(after=30)
    assert cluster.weight() == 10, "the step lasts its interval"
    cluster.tick(after=31)
    assert cluster.weight() == 50
    cluster.tick(after=61)

    assert cluster.status["phase"] == "Promoted"
    assert cluster.status["routing"]["stable"]["version"] == "v2"
    assert cluster.spec["stable"]["version"] == "v2"
    assert "candidate" not in cluster.spec, "the write-back clears spec.candidate"
    assert [h["version"] for h in cluster.status["history"]][:2] == ["v2", "v1"]
    assert cluster.kube.reasons("fraud")[-3:] == ["Started", "StepPassed", "Promoted"]
    promoted = cluster.kube.events[-1]["message"]
    assert "errorRate 0" in promoted and "latencyP99Ms 10" in promoted
    assert (
        cluster.metric("turnout_rollouts_total", namespace=NS, name="fraud", result="Promoted") == 1
    )

    # v1 drains for 30 s, then its InferenceService goes.
    cluster.tick(after=1)
    assert (
        "turnout.dev/retired-at" in cluster.kube.isvcs[(NS, "fraud-v1")]["metadata"]["annotations"]
    )
    cluster.tick(after=31)
    assert cluster.isvc_names() == ["fraud-v2"]


def test_failing_checks_roll_back_with_the_numbers(cluster: Cluster):
    serving(cluster)
    cluster.edit(
        {
            "spec": {
                "candidate": {"version": "v2", "image": "registry.example.com/fraud:v2"},
                "strategy": {"canary": {"maxFailedChecks": 2}},
            }
        }
    )
    cluster.ready("v2")
    cluster.metrics.candidate = VersionMetrics(requests=500, error_rate=0.2, p99_ms=10.0)
    cluster.tick(after=61)
    assert (cluster.status["phase"], cluster.status["failedChecks"]) == ("Progressing", 1)
    cluster.tick(after=61)

    assert cluster.status["phase"] == "RolledBack"
    assert cluster.weight() is None
    assert cluster.status["routing"]["stable"]["version"] == "v1"
    assert "candidate" not in cluster.spec
    warning = cluster.kube.events[-1]
    assert (warning["type"], warning["reason"]) == ("Warning", "RolledBack")
    assert "errorRate 0.2 > 0.01" in warning["message"]
    assert (
        cluster.metric("turnout_rollouts_total", namespace=NS, name="fraud", result="RolledBack")
        == 1
    )
    cluster.tick(after=1)
    cluster.tick(after=31)
    assert cluster.isvc_names() == ["fraud-v1"]


def test_the_log_tells_each_decision_once_with_its_numbers(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="turnout.operator")
    serving(cluster)
    cluster.edit(
        {"spec": {"candidate": {"version": "v2", "image": "registry.example.com/fraud:v2"}}}
    )
    cluster.ready("v2")
    cluster.metrics.candidate = VersionMetrics(requests=500, error_rate=0.2, p99_ms=10.0)
    cluster.tick(after=61)
    cluster.edit({"metadata": {"annotations": {ACTION_ANNOTATION: "bogus"}}})
    cluster.tick(after=61)
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "turnout.operator"]
    assert lines == [
        ("INFO", "risk/fraud: WaitingForReady waiting for v1's server to be ready"),
        ("INFO", "risk/fraud: Idle v1 serves all traffic"),
        ("INFO", "risk/fraud: Started Canary of v2 over stable v1 started"),
        ("INFO", "risk/fraud: Progressing canary v2 at 10%"),
        ("WARNING", "risk/fraud: ChecksFailed analysis failed (1 of 2): errorRate 0.2 > 0.01"),
        ("ERROR", "risk/fraud: ignoring turnout.dev/action='bogus': expected promote or abort"),
        (
            "WARNING",
            "risk/fraud: RolledBack v2 rolled back; v1 serves all traffic: 2 failed analyses "
            "(maxFailedChecks 2): errorRate 0.2 > 0.01",
        ),
    ]


def test_each_pass_patches_status_at_most_once(cluster: Cluster):
    per_pass: list[int] = []
    reconcile = cluster.controller.reconcile

    def counted(namespace: str, name: str, **given: Any):
        before = len(cluster.kube.writes)
        try:
            return reconcile(namespace, name, **given)
        finally:
            new = cluster.kube.writes[before:]
            per_pass.append(sum(1 for w in new if w[0] == "patch-status"))

    cluster.controller.reconcile = counted  # type: ignore[method-assign]
    serving(cluster)
    cluster.edit(
        {"spec": {"candidate": {"version": "v2", "image": "registry.example.com/fraud:v2"}}}
    )
    cluster.ready("v2")
    for _ in range(4):
        cluster.tick(after=61)
    assert cluster.status["phase"] == "Promoted"
    assert len(per_pass) >= 6 and max(per_pass) == 1


def test_a_quiet_tick_writes_nothing(cluster: Cluster):
    serving(cluster)
    before = len(cluster.kube.writes)
    cluster.tick(after=120)
    assert cluster.kube.writes[before:] == []


def test_an_operator_action_acts_and_is_cleared(cluster: Cluster):
    serving(cluster)
    cluster.edit(
        {"spec": {"candidate": {"version": "v2", "image": "registry.example.com/fraud:v2"}}}
    )
    cluster.ready("v2")
    cluster.edit({"metadata": {"annotations": {ACTION_ANNOTATION: "promote"}}})
    assert cluster.status["phase"] == "Promoted"
    assert cluster.spec["stable"]["version"] == "v2"
    annotations = cluster.kube.get_deployment(NS, "fraud")["metadata"].get("annotations", {})
    assert ACTION_ANNOTATION not in annotations


def test_removing_the_candidate_rolls_back_at_once(cluster: Cluster):
    serving(cluster)
    cluster.edit(
        {"spec": {"candidate": {"version": "v2", "image": "registry.example.com/fraud:v2"}}}
    )
    cluster.ready("v2")
    assert cluster.weight() == 10
    cluster.edit({"spec": {"candidate": None}})  # what `kubectl patch` of the README sends
    assert cluster.status["phase"] == "RolledBack"
    assert cluster.weight() is None


def test_a_version_whose_server_stops_being_ready_gets_no_new_traffic(cluster: Cluster):
    serving(cluster)
    cluster.edit(
        {"spec": {"candidate": {"version": "v2", "image": "registry.example.com/fraud:v2"}}}
    )
    cluster.ready("v2", ready=False)
    cluster.tick(after=5)
    assert cluster.weight() is None
    assert "waiting for v2" in cluster.status["message"]


def test_a_spec_edit_patches_the_inference_service_and_waits_for_it_to_be_ready(cluster: Cluster):
    serving(cluster)
    cluster.edit({"spec": {"serving": {"resources": {"limits": {"cpu": "4", "memory": "4Gi"}}}}})
    live = cluster.kube.isvcs[(NS, "fraud-v1")]
    assert live["spec"]["predictor"]["containers"][0]["resources"]["limits"]["cpu"] == "4"
    assert live["metadata"]["generation"] == 2
    # KServe has not caught up with generation 2, but stable keeps its route meanwhile.
    assert cluster.status["routing"]["stable"]["version"] == "v1"


def test_switching_autoscaler_drops_the_old_scaling_fields(cluster: Cluster):
    serving(cluster)
    cluster.edit(
        {"spec": {"serving": {"autoscalerClass": "keda", "scaleMetric": "rps", "scaleTarget": 50}}}
    )
    predictor = cluster.kube.isvcs[(NS, "fraud-v1")]["spec"]["predictor"]
    assert "scaleMetric" not in predictor and "scaleTarget" not in predictor
    (metric,) = predictor["autoScaling"]["metrics"]
    assert metric["external"]["metric"]["serverAddress"] == "http://prometheus.monitoring:9090"
    assert 'version="v1"' in metric["external"]["metric"]["query"]


def test_an_ab_test_starting_removes_the_models_finished_ledgers(cluster: Cluster):
    """The last finished experiment's ledger stays for an audit until the next one begins."""
    one = [Outcome("r1", Arm.STABLE, 1.0, 0.0)]
    cluster.ledgers.append(model="fraud", experiment="finished", replica="gone-0", records=one)
    cluster.ledgers.append(model="churn", experiment="finished", replica="gone-0", records=one)
    serving(cluster)
    assert cluster.ledgers.read(model="fraud", experiment="finished")  # no A/B yet: kept
    ab = {"type": "ABTest", "abTest": {"split": 50, "interval": "60s"}}
    cluster.edit(
        {
            "spec": {
                "candidate": {"version": "v2", "image": "registry.example.com/fraud:v2"},
                "strategy": ab,
            }
        }
    )
    cluster.ready("v2")
    assert cluster.status["phase"] == "Experimenting"
    assert cluster.ledgers.read(model="fraud", experiment="finished") == {}
    assert cluster.ledgers.read(model="churn", experiment="finished")  # another model's


# --- deletion ---------------------------------------------------------------------------------


def test_deleting_the_deployment_removes_its_versions(cluster: Cluster):
    serving(cluster)
    cluster.edit(
        {"spec": {"candidate": {"version": "v2", "image": "registry.example.com/fraud:v2"}}}
    )
    other = deployment()
    other["metadata"]["name"] = "churn"
    other["spec"]["model"] = "churn"
    cluster.kube.add_deployment(other)
    asyncio.run(cluster.handlers.changed(NS, "churn"))
    cluster.delete("fraud")
    assert cluster.isvc_names() == ["churn-v1"]
    assert (
        cluster.metric("turnout_modeldeployment_candidate_weight", namespace=NS, name="fraud")
        is None
    )


def test_every_inference_service_names_its_owner_so_the_collector_removes_it(cluster: Cluster):
    serving(cluster)
    uid = cluster.kube.get_deployment(NS, "fraud")["metadata"]["uid"]
    cluster.kube.delete_deployment(NS, "fraud")  # the operator is down: garbage collection only
    assert cluster.isvc_names() == []
    assert all(b["metadata"]["ownerReferences"][0]["uid"] == uid for b in cluster.sent_isvcs())


# --- both deployment modes validate against KServe's schema -------------------------------------


@pytest.mark.parametrize(
    ("serving_spec", "expect"),
    [
        ({}, {"scaleMetric": "cpu"}),
        ({"scaleMetric": "memory", "scaleTarget": 80}, {"scaleMetric": "memory"}),
        ({"autoscalerClass": "keda", "scaleMetric": "cpu"}, {"autoScaling": "Resource"}),
        ({"autoscalerClass": "keda", "scaleMetric": "concurrency"}, {"autoScaling": "External"}),
        (
            {"deploymentMode": "Knative", "scaleMetric": "concurrency", "minReplicas": 0},
            {"scaleMetric": "concurrency", "minReplicas": 0},
        ),
        (
            {"deploymentMode": "Knative", "scaleMetric": "rps", "scaleTarget": 100},
            {"scaleMetric": "rps"},
        ),
    ],
)
def test_inference_services_for_each_mode_and_autoscaler_are_valid(
    cluster: Cluster, serving_spec: dict[str, Any], expect: dict[str, Any]
):
    cluster.create(deployment(serving=serving_spec))
    (body,) = cluster.sent_isvcs()
    assert errors(body) == []
    predictor, notes = body["spec"]["predictor"], body["metadata"]["annotations"]
    mode = serving_spec.get("deploymentMode", "Standard")
    assert notes["serving.kserve.io/deploymentMode"] == mode
    if mode == "Knative":
        assert "serving.kserve.io/autoscalerClass" not in notes
    for key, value in expect.items():
        if key == "autoScaling":
            assert notes["serving.kserve.io/autoscalerClass"] == "keda"
            assert predictor["autoScaling"]["metrics"][0]["type"] == value
        else:
            assert predictor[key] == value


def test_an_unknown_field_in_an_inference_service_would_be_rejected():
    """The schema check above can fail: KServe's schema rejects what it does not know."""
    c = Cluster()
    c.create(deployment())
    body = copy.deepcopy(c.sent_isvcs()[0])
    body["spec"]["predictor"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/readyz"
    assert any("paht" in e for e in errors(body))


# --- bad input ----------------------------------------------------------------------------------


def test_a_candidate_without_an_image_is_refused_and_stable_keeps_serving(cluster: Cluster):
    serving(cluster)
    cluster.edit({"spec": {"candidate": {"version": "v2"}}})

    spec_valid = next(c for c in cluster.status["conditions"] if c["type"] == "SpecValid")
    assert spec_valid["status"] == "False"
    assert "spec.candidate.image" in spec_valid["message"]
    event = cluster.kube.events[-1]
    assert (event["type"], event["reason"]) == ("Warning", "InvalidSpec")
    assert "spec.candidate.image: required in a cluster" in event["message"]
    assert cluster.isvc_names() == ["fraud-v1"]
    assert cluster.status["routing"]["stable"]["version"] == "v1"

    before = len(cluster.kube.events)
    cluster.tick(after=120)
    assert len(cluster.kube.events) == before, "said once, not every pass"

    cluster.edit(
        {"spec": {"candidate": {"version": "v2", "image": "registry.example.com/fraud:v2"}}}
    )
    spec_valid = next(c for c in cluster.status["conditions"] if c["type"] == "SpecValid")
    assert spec_valid["status"] == "True"
    assert cluster.isvc_names() == ["fraud-v1", "fraud-v2"]


def test_a_spec_the_models_reject_is_named_and_changes_nothing(cluster: Cluster):
    serving(cluster)
    cluster.edit({"spec": {"strategy": {"canary": {"steps": [50, 10]}}}})
    spec_valid = next(c for c in cluster.status["conditions"] if c["type"] == "SpecValid")
    assert "spec.strategy.canary.steps" in spec_valid["message"]
    assert cluster.status["routing"]["stable"]["version"] == "v1"


def test_a_name_kserve_cannot_take_is_refused_with_the_field(cluster: Cluster):
    model, version = "fraud-detection-for-card-payments", "v2026-11-21-retrained"
    cluster.create(deployment(model=model, stable={"version": version, "image": "r/f:1"}))
    spec_valid = next(c for c in cluster.status["conditions"] if c["type"] == "SpecValid")
    assert spec_valid["status"] == "False"
    assert spec_valid["message"] == (
        f"spec.stable.version: InferenceService name '{model}-{version}' is 55 characters; "
        "KServe allows 53 (model + '-' + version)"
    )
    assert cluster.isvc_names() == []


def test_an_inference_service_that_cannot_be_created_is_reported_and_the_rest_goes_on(
    cluster: Cluster,
):
    serving(cluster)
    # Someone else's InferenceService already has the name fraud-v2.
    foreign = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService"}
    foreign["metadata"] = {"name": "fraud-v2", "namespace": NS, "labels": {}, "annotations": {}}
    cluster.kube.isvcs[(NS, "fraud-v2")] = {**foreign, "spec": {"predictor": {}}}
    cluster.edit(
        {"spec": {"candidate": {"version": "v2", "image": "registry.example.com/fraud:v2"}}}
    )

    synced = next(c for c in cluster.status["conditions"] if c["type"] == "Synced")
    assert synced["status"] == "False"
    assert "fraud-v2 already exists in risk and is not managed by this" in synced["message"]
    assert cluster.kube.reasons("fraud").count("SyncFailed") == 1
    assert cluster.status["routing"]["stable"]["version"] == "v1"
    assert cluster.weight() is None
    cluster.tick(after=5)
    assert cluster.kube.reasons("fraud").count("SyncFailed") == 1, "said once"
    # The operator still acts on the deployment: the candidate can be rolled back.
    cluster.edit({"spec": {"candidate": None}})
    assert cluster.status["phase"] == "RolledBack"
    synced = next(c for c in cluster.status["conditions"] if c["type"] == "Synced")
    assert synced["status"] == "True"


def test_a_running_version_keeps_its_deployment_mode(cluster: Cluster):
    serving(cluster)
    cluster.edit({"spec": {"serving": {"deploymentMode": "Knative", "scaleMetric": "rps"}}})
    live = cluster.kube.isvcs[(NS, "fraud-v1")]
    assert live["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    synced = next(c for c in cluster.status["conditions"] if c["type"] == "Synced")
    assert "roll out a new version to serve in Knative mode" in synced["message"]
    assert cluster.status["routing"]["stable"]["version"] == "v1"


def test_a_promoted_stable_does_not_inherit_the_old_stables_env(cluster: Cluster):
    cluster.create(deployment(stable={"version": "v1", "image": "r/fraud:v1", "env": {"OLD": "1"}}))
    cluster.ready("v1")
    cluster.edit(
        {"spec": {"candidate": {"version": "v2", "image": "registry.example.com/fraud:v2"}}}
    )
    cluster.ready("v2")
    cluster.edit({"metadata": {"annotations": {ACTION_ANNOTATION: "promote"}}})
    assert cluster.spec["stable"]["version"] == "v2"
    assert cluster.spec["stable"].get("env", {}) == {}
    env = cluster.kube.isvcs[(NS, "fraud-v2")]["spec"]["predictor"]["containers"][0]["env"]
    assert [e["name"] for e in env] == ["TURNOUT_MODEL"]


def test_a_concurrent_edit_wins_over_the_write_back(cluster: Cluster, monkeypatch):
    serving(cluster)
    cluster.edit(
        {"spec": {"candidate": {"version": "v2", "image": "registry.example.com/fraud:v2"}}}
    )
    cluster.ready("v2")
    real = cluster.kube.patch_deployment

    def edited_meanwhile(namespace: str, name: str, patch: dict[str, Any]):
        if "resourceVersion" in patch.get("metadata", {}):
            raise Conflict(409, "the object has been modified")
        return real(namespace, name, patch)

    monkeypatch.setattr(cluster.kube, "patch_deployment", edited_meanwhile)
    cluster.tick(after=61)
    cluster.tick(after=61)
    assert cluster.status["phase"] == "Promoted"
    assert cluster.spec["candidate"]["version"] == "v2", "the write-back did not land"
    monkeypatch.setattr(cluster.kube, "patch_deployment", real)
    cluster.tick(after=2)
    assert cluster.spec["stable"]["version"] == "v2"
    assert "candidate" not in cluster.spec
    assert cluster.status["routing"]["stable"]["version"] == "v2"


def test_an_edit_made_while_deciding_is_not_overwritten_by_a_stale_promotion(
    cluster: Cluster, monkeypatch
):
    """The user replaces the candidate while the last analysis runs: the pass that decided on
    the old spec writes nothing (409 on its status patch), and the next one acts on the edit."""
    serving(cluster)
    cluster.edit(
        {"spec": {"candidate": {"version": "v2", "image": "registry.example.com/fraud:v2"}}}
    )
    cluster.ready("v2")
    cluster.tick(after=61)
    assert cluster.weight() == 50
    analyse = cluster.metrics.observe
    v3 = {"version": "v3", "image": "registry.example.com/fraud:v3"}

    def edited_meanwhile(query: MetricsQuery) -> Metrics:
        cluster.kube.patch_deployment(NS, "fraud", {"spec": {"candidate": v3}})
        monkeypatch.setattr(cluster.metrics, "observe", analyse)
        return analyse(query)

    monkeypatch.setattr(cluster.metrics, "observe", edited_meanwhile)
    cluster.tick(after=61)
    assert cluster.spec["candidate"] == v3, "the edit was overwritten"
    assert cluster.spec["stable"]["version"] == "v1"
    assert cluster.status["phase"] == "Progressing", "the stale promotion was written"
    assert "Promoted" not in cluster.kube.reasons()

    cluster.tick(after=2)  # the pass the edit itself triggers
    assert cluster.status["rolloutVersion"] == "v3"
    assert cluster.isvc_names() == ["fraud-v1", "fraud-v2", "fraud-v3"]


def test_other_metadata_written_meanwhile_does_not_hold_the_pass(
    cluster: Cluster, monkeypatch, caplog: pytest.LogCaptureFixture
):
    """A label added while a pass decides (by a user, by another tool) is no reason to decide
    again: the pass's status patch is retried over it, the spec being unchanged."""
    serving(cluster)
    cluster.edit(
        {"spec": {"candidate": {"version": "v2", "image": "registry.example.com/fraud:v2"}}}
    )
    cluster.ready("v2")
    analyse = cluster.metrics.observe
    note = {"metadata": {"labels": {"team": "risk"}}}

    def labelled_meanwhile(query: MetricsQuery) -> Metrics:
        cluster.kube.patch_deployment(NS, "fraud", note)
        monkeypatch.setattr(cluster.metrics, "observe", analyse)
        return analyse(query)

    monkeypatch.setattr(cluster.metrics, "observe", labelled_meanwhile)
    with caplog.at_level(logging.INFO, logger="turnout.operator"):
        cluster.tick(after=61)
    assert cluster.weight() == 50
    assert "changed while deciding" not in caplog.text


# --- kopf wiring ------------------------------------------------------------------------------


def test_kopf_only_watches_so_it_writes_nothing_on_the_objects():
    """No change handler (kopf would keep its progress in annotations) and no timer or daemon
    (kopf would put its finalizer on every ModelDeployment, and deleting one would wait for a
    running operator): events, an index of the InferenceServices, and our own timers."""
    registry = kopf.OperatorRegistry()
    register(Handlers(Cluster().controller, OperatorMetrics()), registry)
    assert registry._changing.get_all_handlers() == []
    assert registry._spawning.get_all_handlers() == []
    watching = registry._watching.get_all_handlers()
    assert len(watching) == 2, "ModelDeployment events, and InferenceService events"
    assert len(registry._indexing.get_all_handlers()) == 1


def test_a_pass_runs_for_spec_and_action_edits_not_for_status_writes(cluster: Cluster):
    passes: list[dict[str, Any] | None] = []
    reconcile = cluster.controller.reconcile

    def counted(namespace: str, name: str, **given: Any):
        passes.append(given.get("obj"))
        return reconcile(namespace, name, **given)

    cluster.controller.reconcile = counted  # type: ignore[method-assign]
    handlers = cluster.handlers
    body = cluster.kube.add_deployment(deployment())
    asyncio.run(handlers.deployment_event(None, body))  # listed at start: a pass
    assert len(passes) == 1 and passes[0] is not None  # on the body delivered: no read
    body = cluster.kube.get_deployment(NS, "fraud")
    asyncio.run(handlers.deployment_event("MODIFIED", body))  # its own status write: nothing
    assert len(passes) == 1

    cluster.kube.patch_deployment(NS, "fraud", {"metadata": {"labels": {"team": "risk"}}})
    asyncio.run(handlers.deployment_event("MODIFIED", cluster.kube.get_deployment(NS, "fraud")))
    assert len(passes) == 1
    for patch in (
        {"metadata": {"annotations": {ACTION_ANNOTATION: "abort"}}},
        {"spec": {"paused": True}},
    ):
        cluster.kube.patch_deployment(NS, "fraud", patch)
        body = cluster.kube.get_deployment(NS, "fraud")
        asyncio.run(handlers.deployment_event("MODIFIED", body))
    assert len(passes) == 3


def test_an_inference_service_changing_readiness_or_spec_passes_its_owner(cluster: Cluster):
    serving(cluster)
    passes: list[str] = []
    reconcile = cluster.controller.reconcile

    def counted(namespace: str, name: str, **given: Any):
        passes.append(name)
        return reconcile(namespace, name, **given)

    cluster.controller.reconcile = counted  # type: ignore[method-assign]
    server = copy.deepcopy(cluster.kube.isvcs[(NS, "fraud-v1")])
    asyncio.run(cluster.handlers.isvc_event("MODIFIED", server))  # nothing new
    assert passes == []
    cluster.ready("v1", ready=False)
    assert passes[:1] == ["fraud"]


def test_peering_gate_holds_timers_while_another_replica_acts():
    gate = PeeringGate(peerings=2)
    assert not gate.active()  # each peering starts paused until its first look at the peers
    log = logging.getLogger("kopf.tests")
    kopf_log = logging.getLogger("kopf")
    level = kopf_log.level
    kopf_log.setLevel(logging.INFO)
    gate.install()
    try:
        log.info("Resuming operations after the pause.")
        assert not gate.active()
        log.info("Resuming operations after the pause.")
        assert gate.active()
        log.info("Pausing operations in favour of [<Peer other: priority=200>].")
        assert not gate.active()
    finally:
        kopf_log.removeHandler(gate)
        kopf_log.setLevel(level)


def test_the_operator_logs_in_like_the_rest_of_turnout():
    registry = kopf.OperatorRegistry()
    register(Handlers(Cluster().controller, OperatorMetrics()), registry)
    assert registry._activities.get_all_handlers(), "kopf needs a login handler"


def test_a_deployment_gone_before_its_pass_stops_being_reported(cluster: Cluster):
    serving(cluster)
    assert cluster.metric("turnout_modeldeployment_phase", namespace=NS, name="fraud", phase="Idle")
    cluster.kube.delete_deployment(NS, "fraud")
    cluster.tick(after=120)
    assert (
        cluster.metric("turnout_modeldeployment_phase", namespace=NS, name="fraud", phase="Idle")
        is None
    )


def test_only_one_replica_acts():
    settings = kopf.OperatorSettings()
    configure(settings, peering="turnout", clusterwide=True)
    assert settings.peering.mandatory and settings.peering.name == "turnout"
