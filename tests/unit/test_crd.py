"""The ModelDeployment CRD: generated from turnout/core/spec.py, structural, strict as the models.

No API server runs here, so the schema is checked the ways one would use it: documents are
validated with jsonschema (unknown fields rejected, as `kubectl apply` does by default), the
CEL rules are evaluated with cel-python the way the API server presents objects to them, and
the API server's defaulting is compared with the models' defaults.
"""

from __future__ import annotations

import copy
import functools
import itertools
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import celpy
import pytest
import yaml
from celpy import celtypes
from click.testing import CliRunner

from tests.k8s.validate import validator
from turnout.cli.main import main
from turnout.core.crd import CRD_PATH, DURATION_PATTERN, RULES, crd, crd_yaml, defaulted
from turnout.core.spec import (
    ABTestStrategy,
    Analysis,
    ArmSummary,
    CanaryStrategy,
    Check,
    Comparison,
    ComparisonType,
    Condition,
    Experiment,
    Fallback,
    HistoryEntry,
    Metadata,
    ModelDeployment,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    Phase,
    Routing,
    Serving,
    ShadowTarget,
    SpecError,
    Strategy,
    StrategyType,
    Target,
    VersionRef,
    WeightedTarget,
    dump,
    parse_deployment,
    seconds,
)
from turnout.io.processes import project_root

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
VERSION = crd()["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]


def full_deployment() -> dict[str, Any]:
    """A ModelDeployment with every part of spec and status filled, dumped by the models."""
    md = ModelDeployment(
        metadata=Metadata(name="fraud", labels={"team": "risk"}),
        spec=ModelDeploymentSpec(
            model="fraud",
            stable=VersionRef(version="v3", image="registry/fraud:v3"),
            candidate=VersionRef(version="v4", image="registry/fraud:v4", env={"A": "1"}),
            strategy=Strategy(
                type=StrategyType.CANARY,
                canary=CanaryStrategy(steps=[5, 25, 50], interval="1m", max_failed_checks=3),
                ab_test=ABTestStrategy(split=30, min_samples_per_arm=100),
            ),
            analysis=Analysis(max_error_rate=0.02, window="5m"),
            serving=Serving(deployment_mode="Knative", min_replicas=0, scale_metric="concurrency"),
            fallback=Fallback(mode="static", probability=0.01),
            comparison=Comparison(
                type=ComparisonType.REGRESSION, tolerance=0.05, relative_tolerance=0.01
            ),
        ),
        status=ModelDeploymentStatus(
            phase=Phase.PROGRESSING,
            message="step 2 of 3",
            routing=Routing(
                stable=Target(version="v3", url="http://fraud-v3:3000"),
                candidate=WeightedTarget(version="v4", url="http://fraud-v4:3000", weight=25),
                shadow=ShadowTarget(version="v4", url="http://fraud-v4:3000", percent=10),
                salt="r7",
            ),
            rollout_version="v4",
            rollout_strategy=StrategyType.CANARY,
            step=1,
            step_started_at=NOW,
            rollout_started_at=NOW - timedelta(minutes=5),
            last_analysis_at=NOW,
            checks=[
                Check(name="error_rate", value=0.001, threshold=0.02, passed=True, at=NOW),
                Check(name="p99_ms", value=None, threshold=100, passed=True, at=NOW),
            ],
            failed_checks=1,
            experiment=Experiment(
                metric="conversion",
                arms={"stable": ArmSummary(n=120, mean=0.1), "candidate": ArmSummary(n=118)},
                lift=0.01,
                relative_lift=0.1,
                ci=(-0.02, 0.04),
                p_value=0.4,
                srm_p_value=0.8,
            ),
            history=[HistoryEntry(version="v3", image=None, promoted_at=NOW, reason="Promoted")],
            conditions=[
                Condition(type="Ready", status="True", reason="Started", last_transition_time=NOW)
            ],
            observed_generation=4,
        ),
    )
    return dump(md)


# --- the checked-in file ------------------------------------------------------------------


def test_checked_in_crd_is_current() -> None:
    path = project_root() / CRD_PATH
    if not path.exists() or path.read_text() != crd_yaml():
        pytest.fail(f"{CRD_PATH} is stale or missing: run `turnout render crd` and commit it")


def test_yaml_says_it_is_generated_and_reads_back_as_the_crd() -> None:
    text = crd_yaml()
    assert text.startswith(
        "# Generated from turnout/core/spec.py by `turnout render crd`; do not edit."
    )
    assert "&id" not in text  # no YAML anchors
    assert yaml.safe_load(text) == crd()
    assert crd_yaml() == text


def test_render_crd_writes_the_file(tmp_path: Any) -> None:
    out = tmp_path / "crds" / "mdep.yaml"
    runner = CliRunner()
    first = runner.invoke(main, ["render", "crd", "--output", str(out)])
    assert first.exit_code == 0, first.output
    assert out.read_text() == crd_yaml()
    assert f"wrote {out}" in first.output
    again = runner.invoke(main, ["render", "crd", "-o", str(out)])
    assert again.exit_code == 0
    assert "up to date" in again.output


# --- what kubectl shows and how the resource is served ------------------------------------


def test_names_scope_and_status_subresource() -> None:
    doc = crd()
    assert doc["apiVersion"] == "apiextensions.k8s.io/v1"
    assert doc["metadata"]["name"] == "modeldeployments.turnout.dev"
    spec = doc["spec"]
    assert spec["group"] == "turnout.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "ModelDeployment",
        "listKind": "ModelDeploymentList",
        "plural": "modeldeployments",
        "singular": "modeldeployment",
        "shortNames": ["mdep"],
    }
    assert [(v["name"], v["served"], v["storage"]) for v in spec["versions"]] == [
        ("v1alpha1", True, True)
    ]
    assert VERSION["subresources"] == {"status": {}}


def test_printer_columns() -> None:
    columns = [
        (c["name"].upper(), c["type"], c["jsonPath"]) for c in VERSION["additionalPrinterColumns"]
    ]
    assert columns == [
        ("STABLE", "string", ".spec.stable.version"),
        ("CANDIDATE", "string", ".spec.candidate.version"),
        ("STRATEGY", "string", ".spec.strategy.type"),
        ("WEIGHT", "number", ".status.routing.candidate.weight"),
        ("PHASE", "string", ".status.phase"),
        ("AGE", "date", ".metadata.creationTimestamp"),
    ]
    doc = full_deployment()
    for _, _, path in columns[:-1]:  # each column points at a field the models write
        value: Any = doc
        for key in path.strip(".").split("."):
            value = value[key]
        assert value is not None


# --- structural schema ------------------------------------------------------------------

# Keywords of apiextensions.k8s.io/v1 JSONSchemaProps that a structural schema may use here.
ALLOWED = {
    "description",
    "type",
    "format",
    "nullable",
    "enum",
    "default",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "multipleOf",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "x-kubernetes-validations",
}
TYPES = {"object", "array", "string", "number", "integer", "boolean"}


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path or "(root)", schema
    for name, sub in schema.get("properties", {}).items():
        yield from nodes(sub, f"{path}.{name}")
    if "items" in schema:
        yield from nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural() -> None:
    text = crd_yaml()
    for word in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "prefixItems", "const:", "title:"):
        assert word not in text, word
    seen = 0
    for path, node in nodes(SCHEMA):
        seen += 1
        assert set(node) <= ALLOWED, f"{path}: {set(node) - ALLOWED}"
        assert node.get("type") in TYPES, f"{path}: type {node.get('type')!r}"
        if node["type"] == "object":
            # Without either, the API server would prune every field under it.
            assert ("properties" in node) != ("additionalProperties" in node), path
        if node["type"] == "array":
            assert isinstance(node.get("items"), dict), path
        assert set(node.get("required", [])) <= set(node.get("properties", {})), path
        for bound, flag in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
            if flag in node:
                assert node[flag] is True and bound in node, f"{path}: OpenAPI v3.0 {flag}"
        assert node.get("format", "date-time") == "date-time", path
        if "enum" in node and node.get("nullable"):
            assert None in node["enum"], f"{path}: a nullable enum must list null"
    assert seen > 100
    # Only metadata.name may be restricted in a CRD.
    assert set(SCHEMA["properties"]["metadata"]["properties"]) == {"name"}


def test_defaults_are_valid_where_they_sit() -> None:
    """The API server refuses a CRD whose defaults fail their own schema."""
    with_default = [(path, node) for path, node in nodes(SCHEMA) if "default" in node]
    assert len(with_default) > 40
    for path, node in with_default:
        errors = list(validator(node).iter_errors(defaulted(node, node["default"])))
        assert not errors, f"{path}: default {node['default']!r}: {errors[0].message}"


def test_tuples_and_maps() -> None:
    experiment = SCHEMA["properties"]["status"]["properties"]["experiment"]["properties"]
    assert experiment["ci"] == {
        "type": "array",
        "nullable": True,
        "minItems": 2,
        "maxItems": 2,
        "items": {"type": "number"},
    }
    assert experiment["arms"]["additionalProperties"]["properties"]["n"]["type"] == "number"
    env = SCHEMA["properties"]["spec"]["properties"]["stable"]["properties"]["env"]
    assert env["additionalProperties"] == {"type": "string"}


# --- documents against the schema ---------------------------------------------------------


def crd_errors(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(dotted path, failed keyword) of each OpenAPI error, after the API server's defaulting."""
    errors = validator(SCHEMA).iter_errors(defaulted(SCHEMA, doc))
    return sorted((".".join(str(p) for p in e.absolute_path), str(e.validator)) for e in errors)


def test_full_deployment_dumped_by_the_models_is_valid() -> None:
    doc = full_deployment()
    assert crd_errors(doc) == []
    assert cel_failures(doc) == []


def test_minimal_deployment_is_valid() -> None:
    doc = {
        "apiVersion": "turnout.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "fraud", "namespace": "risk"},
        "spec": {"model": "fraud", "stable": {"version": "v1"}},
    }
    assert crd_errors(doc) == []
    assert cel_failures(doc) == []
    parse_deployment(doc)  # the models agree


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            doc = doc[int(key)] if isinstance(doc, list) else doc[key]
        if value is _DELETE:
            del doc[last]
        else:
            doc[last] = value

    return change


_DELETE = object()


@pytest.mark.parametrize(
    ("change", "error", "model_error"),
    [
        pytest.param(
            _set("spec.strategy.type", "BlueGreen"),
            ("spec.strategy.type", "enum"),
            "spec.strategy.type",
            id="unknown-strategy",
        ),
        pytest.param(
            _set("spec.strategy.canary.steps", [5, 150]),
            ("spec.strategy.canary.steps.1", "maximum"),
            "spec.strategy.canary.steps",
            id="step-above-100",
        ),
        pytest.param(
            _set("spec.strategy.canary.steps", [0, 50]),
            ("spec.strategy.canary.steps.0", "minimum"),
            "spec.strategy.canary.steps",
            id="step-zero",
        ),
        pytest.param(
            _set("spec.strategy.canary.steps", []),
            ("spec.strategy.canary.steps", "minItems"),
            "spec.strategy.canary.steps",
            id="no-steps",
        ),
        pytest.param(
            _set("spec.stable", _DELETE), ("spec", "required"), "spec.stable", id="no-stable"
        ),
        pytest.param(
            _set("spec.stable", None), ("spec.stable", "type"), "spec.stable", id="null-stable"
        ),
        pytest.param(
            _set("spec.candidate.version", "V4_beta"),
            ("spec.candidate.version", "pattern"),
            "spec.candidate.version",
            id="version-not-dns-label",
        ),
        pytest.param(
            _set("spec.stable.version", "v" * 41),
            ("spec.stable.version", "maxLength"),
            "spec.stable.version",
            id="version-too-long",
        ),
        pytest.param(
            _set("spec.strategy.canary.stepz", [1]),
            ("spec.strategy.canary", "additionalProperties"),
            "spec.strategy.canary.stepz",
            id="unknown-field",
        ),
        pytest.param(
            _set("spec.strategy.canary.interval", "5 minutes"),
            ("spec.strategy.canary.interval", "pattern"),
            "spec.strategy.canary.interval",
            id="bad-duration",
        ),
        pytest.param(
            _set("spec.analysis.window", "0s"),
            ("spec.analysis.window", "pattern"),
            "spec.analysis.window",
            id="zero-duration",
        ),
        pytest.param(
            _set("spec.strategy.abTest.split", 100),
            ("spec.strategy.abTest.split", "maximum"),
            "spec.strategy.abTest.split",
            id="split-100",
        ),
        pytest.param(
            _set("spec.analysis.maxErrorRate", -0.1),
            ("spec.analysis.maxErrorRate", "minimum"),
            "spec.analysis.maxErrorRate",
            id="negative-rate",
        ),
        pytest.param(
            _set("spec.comparison.type", "Ranking"),
            ("spec.comparison.type", "enum"),
            "spec.comparison.type",
            id="unknown-comparison",
        ),
        pytest.param(
            _set("spec.comparison.tolerance", -0.1),
            ("spec.comparison.tolerance", "minimum"),
            "spec.comparison.tolerance",
            id="negative-tolerance",
        ),
        pytest.param(
            _set("spec.serving.deploymentMode", "Serverless"),
            ("spec.serving.deploymentMode", "enum"),
            "spec.serving.deploymentMode",
            id="unknown-mode",
        ),
        pytest.param(
            _set("spec.serving.resources.limits", {"cpu": 2}),
            ("spec.serving.resources.limits.cpu", "type"),
            "spec.serving.resources.limits.cpu",
            id="quantity-not-string",
        ),
        pytest.param(
            _set("metadata.name", "Fraud_Model"),
            ("metadata.name", "pattern"),
            "metadata.name",
            id="name-not-dns-label",
        ),
        pytest.param(
            _set("status.phase", "Running"),
            ("status.phase", "enum"),
            "status.phase",
            id="unknown-phase",
        ),
        pytest.param(
            _set("status.routing.candidate.weight", "ten"),
            ("status.routing.candidate.weight", "type"),
            "status.routing.candidate.weight",
            id="weight-not-number",
        ),
        pytest.param(
            _set("status.checks.0.at", "yesterday"),
            ("status.checks.0.at", "format"),
            "status.checks.0.at",
            id="time-not-rfc3339",
        ),
        pytest.param(
            _set("status.experiment.ci", [0.1]),
            ("status.experiment.ci", "minItems"),
            "status.experiment.ci",
            id="ci-one-number",
        ),
    ],
)
def test_bad_documents_are_rejected_at_the_field(
    change: Callable[[dict[str, Any]], None], error: tuple[str, str], model_error: str
) -> None:
    doc = full_deployment()
    change(doc)
    assert crd_errors(doc) == [error]
    with pytest.raises(SpecError, match=rf"(^|; ){model_error}"):
        parse_deployment(doc)


def test_nulls_the_models_write_are_accepted() -> None:
    doc = full_deployment()
    doc["spec"]["candidate"] = None
    doc["status"]["rolloutStrategy"] = None
    doc["status"]["experiment"] = None
    doc["status"]["routing"]["shadow"] = None
    assert crd_errors(doc) == []
    assert cel_failures(doc) == []


def test_duration_pattern_agrees_with_the_models() -> None:
    import re

    pattern = re.compile(DURATION_PATTERN)
    for text in ["1s", "500ms", "0.5s", "00.50m", "7d", " 30s ", "10h", "1.0s", "0.01ms"]:
        assert pattern.match(text) and seconds(text) > 0, text
    for text in ["0s", "0.0m", "00ms", "5", "s", "1.s", ".5s", "-1s", "5 m", "1w", "1sec"]:
        assert not pattern.match(text), text


# --- defaulting -------------------------------------------------------------------------


def meaningful(value: Any) -> Any:
    """Without nulls and empty containers: what both sides agree 'not set' looks like."""
    if isinstance(value, dict):
        kept = {k: meaningful(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [meaningful(v) for v in value]
    return value


@pytest.mark.parametrize(
    "spec",
    [
        {"model": "fraud", "stable": {"version": "v1"}},
        {"model": "fraud", "stable": {"version": "v1"}, "strategy": {"type": "Shadow"}},
        {"model": "f", "stable": {"version": "v1"}, "serving": {"resources": {}, "maxReplicas": 9}},
        {"model": "f", "stable": {"version": "v1"}, "strategy": {"canary": None}},
        {"model": "f", "stable": {"version": "v1"}, "comparison": {"type": "MultiClass"}},
    ],
)
def test_api_server_defaults_match_the_models(spec: dict[str, Any]) -> None:
    spec_schema = SCHEMA["properties"]["spec"]
    by_server = defaulted(spec_schema, copy.deepcopy(spec))
    # A null the API server replaces with the default is a missing field to the models.
    by_models = dump(ModelDeploymentSpec.model_validate(meaningful(spec)))
    assert meaningful(by_server) == meaningful(by_models)


def test_status_defaults_match_the_models() -> None:
    status_schema = SCHEMA["properties"]["status"]
    assert defaulted(status_schema, {}) == meaningful(dump(ModelDeploymentStatus())) | {
        "checks": [],
        "history": [],
        "conditions": [],
    }


# --- CEL rules --------------------------------------------------------------------------

_CEL = celpy.Environment()


def _is_sorted(items: celtypes.ListType) -> celtypes.BoolType:
    """Kubernetes' CEL list library isSorted(), which cel-python lacks."""
    return celtypes.BoolType(all(a <= b for a, b in itertools.pairwise(items)))


@functools.cache
def _program(rule: str) -> Any:
    return _CEL.program(_CEL.compile(rule), functions={"isSorted": _is_sorted})


def _cel_value(schema: dict[str, Any], value: Any) -> Any:
    """The value as the API server hands it to CEL: numbers of a number field are doubles,
    and a null property counts as absent (``has()`` is false)."""
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        return {k: _cel_value(props.get(k, {}), v) for k, v in value.items() if v is not None}
    if isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        return {k: _cel_value(schema["additionalProperties"], v) for k, v in value.items()}
    if isinstance(value, list) and "items" in schema:
        return [_cel_value(schema["items"], v) for v in value]
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _walk_rules(schema: dict[str, Any], value: Any, path: str) -> Iterator[tuple[str, str]]:
    if value is None:
        return
    for v in schema.get("x-kubernetes-validations", []):
        self = celpy.json_to_cel(_cel_value(schema, value))
        if not _program(v["rule"]).evaluate({"self": self}):
            yield path + v.get("fieldPath", ""), v["message"]
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                yield from _walk_rules(sub, value[name], f"{path}.{name}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            yield from _walk_rules(schema["items"], item, f"{path}[{i}]")


def cel_failures(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(field path, message) of each CEL rule the defaulted document fails."""
    return [
        (path.lstrip("."), message)
        for path, message in _walk_rules(SCHEMA, defaulted(SCHEMA, doc), "")
    ]


def test_rules_compile_and_point_at_real_fields() -> None:
    for rule in RULES:
        _program(rule.rule)  # raises on a syntax error
        assert "\n" not in rule.message
        node = SCHEMA
        for name in rule.at:
            node = node["properties"][name]
        assert rule.validation() in node["x-kubernetes-validations"]
        for name in (rule.field_path or "").split(".")[1:]:
            node = node["properties"][name]


def _spec(**changes: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        for path, value in changes.items():
            _set("spec." + path.replace("__", "."), value)(doc)

    return change


CANARY = "spec.strategy.canary.steps"
SERVING = "spec.serving"

# Documents the OpenAPI schema accepts but the models' validators reject (or accept).
CEL_CASES = [
    pytest.param(
        _spec(candidate__version="v3"),
        [("spec.candidate.version", "candidate.version must differ from stable.version")],
        id="candidate-is-stable",
    ),
    pytest.param(_spec(candidate=None), [], id="no-candidate"),
    pytest.param(
        _spec(strategy__canary__steps=[5, 50, 25]),
        [(CANARY, "steps must increase")],
        id="steps-decrease",
    ),
    pytest.param(
        _spec(strategy__canary__steps=[5, 25, 25]),
        [(CANARY, "steps must increase")],
        id="steps-repeat",
    ),
    pytest.param(_spec(strategy__canary__steps=[1, 2.5, 100]), [], id="steps-increase"),
    pytest.param(
        _spec(strategy__abTest__minSamplesPerArm=5000, strategy__abTest__maxSamplesPerArm=1000),
        [
            (
                "spec.strategy.abTest.maxSamplesPerArm",
                "maxSamplesPerArm must be at least minSamplesPerArm",
            )
        ],
        id="ab-max-below-min",
    ),
    pytest.param(
        _spec(strategy__abTest__minSamplesPerArm=500, strategy__abTest__maxSamplesPerArm=500),
        [],
        id="ab-max-is-min",
    ),
    pytest.param(_spec(serving__minReplicas=2, serving__maxReplicas=2), [], id="fixed-replicas"),
    pytest.param(
        _spec(serving__minReplicas=3, serving__maxReplicas=2),
        [(f"{SERVING}.maxReplicas", "maxReplicas must be at least minReplicas")],
        id="max-below-min-replicas",
    ),
    pytest.param(
        _spec(serving__deploymentMode="Standard", serving__scaleMetric="cpu"),
        [(f"{SERVING}.minReplicas", "minReplicas 0 (scale to zero) needs deploymentMode Knative")],
        id="standard-scale-to-zero",
    ),
    pytest.param(
        _spec(serving__scaleMetric="cpu"),
        [
            (
                f"{SERVING}.scaleMetric",
                "deploymentMode Knative scales on scaleMetric concurrency or rps",
            )
        ],
        id="knative-on-cpu",
    ),
    pytest.param(
        _spec(
            serving__deploymentMode="Standard", serving__minReplicas=1, serving__scaleMetric="rps"
        ),
        [
            (
                f"{SERVING}.autoscalerClass",
                "scaleMetric concurrency or rps in Standard mode needs autoscalerClass keda",
            )
        ],
        id="standard-rps-on-hpa",
    ),
    pytest.param(
        _spec(
            serving__deploymentMode="Standard",
            serving__minReplicas=1,
            serving__scaleMetric="rps",
            serving__autoscalerClass="keda",
        ),
        [],
        id="standard-rps-on-keda",
    ),
    pytest.param(
        _spec(fallback__probability=_DELETE),
        [("spec.fallback.probability", "fallback mode 'static' needs 'probability'")],
        id="static-without-probability",
    ),
    pytest.param(
        _spec(fallback__probability=None),
        [("spec.fallback.probability", "fallback mode 'static' needs 'probability'")],
        id="static-with-null-probability",
    ),
    pytest.param(_spec(fallback={"mode": "error"}), [], id="error-fallback"),
]


@pytest.mark.parametrize(("change", "failures"), CEL_CASES)
def test_cel_rules_reject_what_the_models_reject(
    change: Callable[[dict[str, Any]], None], failures: list[tuple[str, str]]
) -> None:
    doc = full_deployment()
    change(doc)
    assert crd_errors(doc) == []  # only the CEL rule can catch these
    assert cel_failures(doc) == failures
    if failures:
        with pytest.raises(SpecError):
            parse_deployment(doc)
    else:
        parse_deployment(doc)


def test_every_rule_has_a_failing_case() -> None:
    messages = {m for case in CEL_CASES for _, m in case.values[1]}
    assert {rule.message for rule in RULES} <= messages
