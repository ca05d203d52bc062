"""Schemas turnout agrees on: the router's route table and the ModelDeployment.

Pure pydantic models: validation messages name the field, so a bad file is rejected with a
reason an operator can act on. Field names are camelCase on the wire, as in Kubernetes. The
ModelDeployment CRD's schema is generated from these models, so they are the single source.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel


class _Spec(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class Upstream(_Spec):
    """One model version behind the router."""

    version: str = Field(min_length=1)
    url: str = Field(description="base URL of the version's model server, e.g. http://host:3000")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or len(value) < 10:
            raise ValueError("must be an http:// or https:// base URL")
        return value.rstrip("/")


class Candidate(Upstream):
    #: Percent of traffic (and of sticky keys) sent to the candidate, 0-100.
    weight: float = Field(default=0.0, ge=0, le=100)


class Shadow(Upstream):
    #: Percent of requests mirrored to the shadow, 0-100.
    percent: float = Field(default=100.0, ge=0, le=100)


class Fallback(_Spec):
    """What answers when every version failed: an error body, or a fixed prediction."""

    mode: Literal["error", "static"] = "error"
    message: str = "the model is unavailable; try again shortly"
    #: The probability returned for every row in static mode.
    probability: float | None = Field(default=None, ge=0, le=1)

    @model_validator(mode="after")
    def _static_needs_value(self) -> Fallback:
        if self.mode == "static" and self.probability is None:
            raise ValueError("fallback mode 'static' needs 'probability'")
        return self


class ComparisonType(StrEnum):
    BINARY = "Binary"  # a score per row: agree when both are on the same side of threshold
    MULTI_CLASS = "MultiClass"  # class scores per row: agree when the top class is the same
    REGRESSION = "Regression"  # a value per row: agree when within the tolerance
    EXACT = "Exact"  # anything else: agree when a row's values are identical


class Comparison(_Spec):
    """How a shadow's replies are compared with the primary's, row by row.

    Binary: both scores on the same side of threshold. MultiClass: the same top class.
    Regression: within tolerance, or within relativeTolerance times the primary's value.
    Exact: identical. analysis.minShadowAgreement gates the share of rows that agree.
    """

    type: ComparisonType = ComparisonType.BINARY
    #: Binary: the score from which a row counts as positive (score >= threshold).
    threshold: float = Field(default=0.5, allow_inf_nan=False)
    #: Regression: two values agree when they differ by at most this much.
    tolerance: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    #: Regression: ... or by at most this share of the primary's value (0.01 is 1%).
    relative_tolerance: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    #: The output compared (absent: the reply's first).
    output: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _parameters_fit_type(self) -> Comparison:
        regression = self.type is ComparisonType.REGRESSION
        if regression and self.tolerance is None and self.relative_tolerance is None:
            raise ValueError("type Regression needs tolerance or relativeTolerance")
        if not regression:
            for name, value in (
                ("tolerance", self.tolerance),
                ("relativeTolerance", self.relative_tolerance),
            ):
                if value is not None:
                    raise ValueError(f"{name} applies to type Regression, not {self.type.value}")
        return self

    @property
    def measure(self) -> str:
        """What agreement means, in words: ``top class``, ``within 0.05``, ``exact``."""
        if self.type is ComparisonType.BINARY:
            words = f"same side of {self.threshold:g}"
        elif self.type is ComparisonType.MULTI_CLASS:
            words = "top class"
        elif self.type is ComparisonType.EXACT:
            words = "exact"
        else:
            bounds = []
            if self.tolerance is not None:
                bounds.append(f"{self.tolerance:g}")
            if self.relative_tolerance is not None:
                bounds.append(f"{self.relative_tolerance * 100:g}%")
            words = "within " + " or ".join(bounds)
        return words if self.output is None else f"{words}, output {self.output}"


class ModelRoute(_Spec):
    stable: Upstream
    candidate: Candidate | None = None
    shadow: Shadow | None = None
    #: Request header whose value pins a caller to one arm (absent: uniform random).
    sticky_header: str = "x-user-id"
    #: Hash salt: a new salt reshuffles which keys land on which arm.
    salt: str = ""
    #: Per-attempt upstream timeout.
    timeout_ms: float = Field(default=1000, gt=0, le=600_000)
    shadow_timeout_ms: float = Field(default=1000, gt=0, le=600_000)
    #: What counts as the shadow agreeing with the primary.
    comparison: Comparison = Comparison()
    #: Retry a failed candidate call on stable (inference is idempotent).
    retry_on_stable: bool = True
    fallback: Fallback = Fallback()

    @model_validator(mode="before")
    @classmethod
    def _agreement_threshold(cls, data: Any) -> Any:
        """A table written before comparisons had ``agreementThreshold``: a Binary one."""
        if isinstance(data, dict) and "agreementThreshold" in data and "comparison" not in data:
            data = dict(data)
            threshold = data.pop("agreementThreshold")
            data["comparison"] = {"type": ComparisonType.BINARY.value, "threshold": threshold}
        return data

    @field_validator("sticky_header")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


class RouteTable(_Spec):
    models: dict[str, ModelRoute] = Field(min_length=1)


API_VERSION = "turnout.dev/v1alpha1"
KIND = "ModelDeployment"

# --- durations --------------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def seconds(duration: str) -> float:
    """Seconds in a duration such as ``500ms``, ``30s``, ``5m``, ``1h`` or ``7d``."""
    match = _DURATION.match(duration.strip())
    if match is None:
        raise ValueError(f"{duration!r} is not a duration like 30s, 5m or 1h")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _positive_duration(value: str) -> str:
    if seconds(value) <= 0:
        raise ValueError("must be longer than zero")
    return value


#: A duration written as Kubernetes and Flagger users write it: 500ms, 30s, 5m, 1h, 7d.
Duration = Annotated[str, AfterValidator(_positive_duration)]

#: Versions name InferenceServices (``<model>-<version>``), so they are DNS labels.
_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

# --- ModelDeployment spec ---------------------------------------------------------------


class VersionRef(_Spec):
    """One model version: what to serve and how to find its image."""

    version: str = Field(min_length=1, max_length=40, pattern=_NAME)
    #: Container image of the version's Bento (required in a cluster; local runs need none).
    image: str | None = None
    #: Extra environment for the version's model server (e.g. TURNOUT_TORCH_THREADS).
    env: dict[str, str] = Field(default_factory=dict)
    service: str | None = Field(
        default=None,
        min_length=1,
        pattern=r"^\S+$",
        description=(
            "What `bentoml serve` runs for this version on a laptop (in a cluster the image "
            "counts): a Bento tag in the local store (digits_service:abc123), a directory "
            "holding a bentofile.yaml (examples/digits; relative paths are taken from the "
            "project root), or module:Class importable from the project root. It must be a "
            "turnout model server (@turnout_sdk.model_server); it loads the model version "
            "<spec.model>:<version> (TURNOUT_MODEL). Absent: the built-in fraud server, "
            "services.model.service:FraudModel."
        ),
    )


class StrategyType(StrEnum):
    CANARY = "Canary"  # stepped traffic weights, each step gated by the analysis checks
    SHADOW = "Shadow"  # mirrored traffic, replies compared and never returned
    AB_TEST = "ABTest"  # sticky split, sequential test on a business outcome


class CanaryStrategy(_Spec):
    #: Candidate weight (percent) at each step; promotion follows the last step.
    steps: list[float] = Field(default=[5, 25, 50], min_length=1, max_length=20)
    #: Time at each step before its analysis decides.
    interval: Duration = "60s"
    #: Failed analyses (not necessarily in a row) that roll the candidate back.
    max_failed_checks: int = Field(default=2, ge=1, le=100)

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[float]) -> list[float]:
        for i, w in enumerate(steps):
            if not 0 < w <= 100:
                raise ValueError(f"step {i} is {w:g}: each weight must be above 0 and at most 100")
        for i in range(1, len(steps)):
            if steps[i] <= steps[i - 1]:
                raise ValueError(
                    f"steps must increase: step {i} ({steps[i]:g}) is not above "
                    f"step {i - 1} ({steps[i - 1]:g})"
                )
        return steps


class ShadowStrategy(_Spec):
    #: Percent of requests mirrored to the candidate.
    percent: float = Field(default=100, gt=0, le=100)
    #: How long to mirror before the gate decides.
    duration: Duration = "30m"
    #: After a passing gate: start a canary, promote at once, or stop (candidate removed).
    then: Literal["Canary", "Promote", "Stop"] = "Canary"


class ABTestStrategy(_Spec):
    #: Percent of sticky keys assigned to the candidate.
    split: float = Field(default=50, gt=0, lt=100)
    #: Header whose value pins a user to one arm (the same key, the same arm).
    sticky_header: str = "x-user-id"
    #: Name of the outcome fed back (shown in status and reports).
    metric: str = "conversion"
    #: Larger outcomes are better (conversion); false for e.g. chargebacks.
    higher_is_better: bool = True
    #: False-positive rate of the sequential test, valid under continuous monitoring.
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    #: Outcomes per arm before the test is evaluated at all.
    min_samples_per_arm: int = Field(default=1000, ge=10)
    #: Outcomes per arm after which, without a decision, the test ends Inconclusive.
    max_samples_per_arm: int = Field(default=100_000, ge=10)
    #: Smallest difference in means worth detecting; tunes the test's mixture (tau^2).
    min_detectable_effect: float = Field(default=0.01, gt=0)
    #: How often the test is evaluated.
    interval: Duration = "60s"
    #: Promote a winning candidate; otherwise it waits in Experimenting for an operator.
    auto_promote: bool = True

    @field_validator("sticky_header")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()

    @model_validator(mode="after")
    def _min_below_max(self) -> ABTestStrategy:
        if self.max_samples_per_arm < self.min_samples_per_arm:
            raise ValueError("maxSamplesPerArm must be at least minSamplesPerArm")
        return self


class Strategy(_Spec):
    type: StrategyType = StrategyType.CANARY
    canary: CanaryStrategy = CanaryStrategy()
    shadow: ShadowStrategy = ShadowStrategy()
    ab_test: ABTestStrategy = ABTestStrategy()


class Analysis(_Spec):
    """Thresholds each analysis checks; ratios compare the candidate with stable."""

    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    max_latency_p99_ms: float = Field(default=100, gt=0)
    max_latency_ratio: float = Field(default=1.5, gt=0)
    #: A candidate at most this many ms slower (p99) than stable passes the ratio check.
    latency_tolerance_ms: float = Field(default=5.0, ge=0)
    max_prediction_psi: float = Field(default=0.25, gt=0)
    min_shadow_agreement: float = Field(default=0.95, ge=0, le=1)
    #: Candidate requests an analysis needs; with fewer the step waits instead of judging.
    min_requests: int = Field(default=20, ge=1)
    #: Metrics window (PromQL range) of each analysis; defaults to the step interval.
    window: Duration | None = None


class Resources(_Spec):
    requests: dict[str, str] = Field(default_factory=lambda: {"cpu": "500m", "memory": "1Gi"})
    limits: dict[str, str] = Field(default_factory=lambda: {"cpu": "2", "memory": "2Gi"})


class Serving(_Spec):
    """How each version's InferenceService scales (cluster only)."""

    deployment_mode: Literal["Standard", "Knative"] = "Standard"
    #: Standard mode: which autoscaler KServe configures.
    autoscaler_class: Literal["hpa", "keda"] = "hpa"
    min_replicas: int = Field(default=1, ge=0, le=1000)
    max_replicas: int = Field(default=5, ge=1, le=1000)
    scale_metric: Literal["cpu", "memory", "concurrency", "rps"] = "cpu"
    scale_target: int = Field(default=70, ge=1)
    resources: Resources = Resources()

    @model_validator(mode="after")
    def _consistent(self) -> Serving:
        if self.max_replicas < self.min_replicas:
            raise ValueError("maxReplicas must be at least minReplicas")
        if self.deployment_mode == "Standard" and self.min_replicas == 0:
            raise ValueError("minReplicas 0 (scale to zero) needs deploymentMode Knative")
        if self.deployment_mode == "Knative" and self.scale_metric not in ("concurrency", "rps"):
            raise ValueError("deploymentMode Knative scales on scaleMetric concurrency or rps")
        standard_rate = self.deployment_mode == "Standard" and self.scale_metric in (
            "concurrency",
            "rps",
        )
        if standard_rate and self.autoscaler_class != "keda":
            raise ValueError(
                f"scaleMetric {self.scale_metric} in Standard mode needs autoscalerClass keda"
            )
        return self


class ModelDeploymentSpec(_Spec):
    model: str = Field(min_length=1, max_length=40, pattern=_NAME)
    stable: VersionRef
    #: The version being rolled out; absent means only stable serves (removing it rolls back).
    candidate: VersionRef | None = None
    strategy: Strategy = Strategy()
    analysis: Analysis = Analysis()
    serving: Serving = Serving()
    fallback: Fallback = Fallback()
    #: What counts as the candidate agreeing with stable when shadowing.
    comparison: Comparison = Comparison()
    #: Freeze weights where they are; analyses stop until resumed.
    paused: bool = False

    @model_validator(mode="after")
    def _distinct(self) -> ModelDeploymentSpec:
        if self.candidate is not None and self.candidate.version == self.stable.version:
            raise ValueError(
                f"candidate.version {self.candidate.version!r} is the stable version already"
            )
        return self


# --- ModelDeployment status -------------------------------------------------------------


class Phase(StrEnum):
    IDLE = "Idle"  # only stable serves; nothing in flight
    SHADOWING = "Shadowing"  # candidate receives mirrored traffic only
    PROGRESSING = "Progressing"  # canary steps under way
    EXPERIMENTING = "Experimenting"  # A/B test collecting outcomes
    PROMOTED = "Promoted"  # the last candidate became stable
    ROLLED_BACK = "RolledBack"  # the last candidate was removed (checks failed or by hand)
    PAUSED = "Paused"  # spec.paused: weights frozen, no analysis
    FAILED = "Failed"  # the spec cannot be acted on (see conditions)


class Reason(StrEnum):
    STABLE_ONLY = "StableOnly"  # no candidate in the spec
    WAITING_FOR_READY = "WaitingForReady"  # a version's server is not ready yet
    STARTED = "Started"  # a rollout of a new candidate began
    STEP_PASSED = "StepPassed"  # an analysis passed and the weight moved up
    CHECKS_FAILED = "ChecksFailed"  # an analysis failed, below maxFailedChecks
    INSUFFICIENT_DATA = "InsufficientData"  # too few requests to judge; the step waits
    METRICS_UNAVAILABLE = "MetricsUnavailable"  # the metrics provider failed; the step waits
    PROMOTED = "Promoted"  # the candidate passed every step and became stable
    ROLLED_BACK = "RolledBack"  # checks failed maxFailedChecks times
    ABORTED = "Aborted"  # an operator aborted, or removed spec.candidate
    MANUAL_PROMOTE = "ManualPromote"  # an operator forced promotion
    SHADOW_PASSED = "ShadowPassed"  # the shadow gate passed
    SHADOW_BLOCKED = "ShadowBlocked"  # the shadow gate failed; candidate never served
    SRM = "SampleRatioMismatch"  # arm counts do not match the split; the test cannot be trusted
    EXPERIMENT_WON = "CandidateWon"  # the sequential test favours the candidate
    EXPERIMENT_LOST = "StableWon"  # the sequential test favours stable
    INCONCLUSIVE = "Inconclusive"  # the test reached its sample limit with no decision
    PAUSED = "Paused"  # spec.paused is true
    RESUMED = "Resumed"  # spec.paused went back to false
    STABLE_CHANGED = "StableChanged"  # spec.stable was edited (rollback or redeploy)
    INVALID_SPEC = "InvalidSpec"  # the spec was rejected; the last good one keeps running
    ACCEPTED = "Accepted"  # the spec is valid (again) and runs
    SYNCED = "Synced"  # every served version's InferenceService is as the spec says
    SYNC_FAILED = "SyncFailed"  # an InferenceService could not be created, changed or removed
    SERVER_FAILED = "ServerFailed"  # a version's server failed every start; no more restarts


class Target(_Spec):
    version: str
    url: str


class WeightedTarget(Target):
    weight: float = 0.0


class ShadowTarget(Target):
    percent: float = 100.0


class Routing(_Spec):
    """Where traffic goes now; the router's table is derived from this."""

    stable: Target | None = None
    candidate: WeightedTarget | None = None
    shadow: ShadowTarget | None = None
    sticky_header: str = "x-user-id"
    #: Changes per rollout, so each experiment hashes keys afresh.
    salt: str = ""


class Check(_Spec):
    name: str
    #: None when there was no data to compute it.
    value: float | None = None
    threshold: float
    #: "max" (value must not exceed threshold) or "min".
    kind: Literal["max", "min"] = "max"
    passed: bool
    at: datetime

    @property
    def value_text(self) -> str:
        """The value as every view shows it: four significant digits, or "no data"."""
        return "no data" if self.value is None else f"{self.value:.4g}"

    @property
    def bound(self) -> str:
        """What the value must meet, e.g. ``<= 0.01``."""
        return f"{'<=' if self.kind == 'max' else '>='} {self.threshold:g}"

    def describe(self) -> str:
        """One line for events and logs: ``errorRate 0.2 > 0.01`` (failed), ``<=`` (passed)."""
        if self.passed:
            op = "<=" if self.kind == "max" else ">="
        else:
            op = ">" if self.kind == "max" else "<"
        return f"{self.name} {self.value_text} {op} {self.threshold:g}"


class ArmSummary(_Spec):
    n: float = 0
    mean: float | None = None


class Experiment(_Spec):
    metric: str
    arms: dict[str, ArmSummary] = Field(default_factory=dict)
    #: Candidate mean minus stable mean.
    lift: float | None = None
    #: Lift relative to the stable mean.
    relative_lift: float | None = None
    #: Always-valid confidence sequence for the lift (narrows as data arrives).
    ci: tuple[float, float] | None = None
    #: Always-valid p-value: safe to read at every look.
    p_value: float = 1.0
    #: Sample-ratio-mismatch test p-value (tiny = broken assignment).
    srm_p_value: float | None = None
    decision: Literal["Pending", "Candidate", "Stable", "Inconclusive"] = "Pending"


class HistoryEntry(_Spec):
    version: str
    image: str | None = None
    #: What served it locally (spec.*.service), so a rollback to it serves it the same way.
    service: str | None = None
    promoted_at: datetime
    reason: str


class Condition(_Spec):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: datetime


class ModelDeploymentStatus(_Spec):
    phase: Phase = Phase.IDLE
    #: Why the phase is what it is, in words, with numbers.
    message: str = ""
    routing: Routing = Routing()
    #: The candidate this status is about (a new version restarts the rollout).
    rollout_version: str | None = None
    #: Strategy the rollout runs now (a shadow that continues as canary switches to Canary).
    rollout_strategy: StrategyType | None = None
    #: Index of the current canary step (into strategy.canary.steps).
    step: int = 0
    step_started_at: datetime | None = None
    rollout_started_at: datetime | None = None
    last_analysis_at: datetime | None = None
    checks: list[Check] = Field(default_factory=list)
    failed_checks: int = 0
    experiment: Experiment | None = None
    #: Stable versions that served before, newest first: rollback targets.
    history: list[HistoryEntry] = Field(default_factory=list)
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int = 0


class Metadata(_Spec):
    # A live object also carries uid, resourceVersion, managedFields ...: not ours to judge.
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )

    name: str = Field(min_length=1, max_length=63, pattern=_NAME)
    namespace: str = "default"
    annotations: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    generation: int = 1


class ModelDeployment(_Spec):
    api_version: Literal["turnout.dev/v1alpha1"] = Field(
        default="turnout.dev/v1alpha1", alias="apiVersion"
    )
    kind: Literal["ModelDeployment"] = "ModelDeployment"
    metadata: Metadata
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus = ModelDeploymentStatus()


#: Annotation an operator sets to force a decision; the controller clears it once acted on.
ACTION_ANNOTATION = "turnout.dev/action"


class Action(StrEnum):
    PROMOTE = "promote"  # promote the candidate now, skipping remaining steps
    ABORT = "abort"  # roll the candidate back now


def action_of(text: str | None) -> Action | None:
    """The action a ``turnout.dev/action`` value asks for; None for none or an unknown one."""
    try:
        return None if text is None else Action(text)
    except ValueError:
        return None


class SpecError(ValueError):
    """A document that is not a valid spec; the message names each bad field."""


def parse_route_table(doc: Any) -> RouteTable:
    """Validate a parsed YAML/JSON document as a route table, or raise SpecError."""
    try:
        return RouteTable.model_validate(doc)
    except ValidationError as exc:
        raise SpecError(describe(exc)) from None


def parse_deployment(doc: Any) -> ModelDeployment:
    """Validate a parsed document as a ModelDeployment, or raise SpecError naming each field."""
    if not isinstance(doc, dict):
        raise SpecError("(document): a ModelDeployment must be a mapping")
    try:
        return ModelDeployment.model_validate(doc)
    except ValidationError as exc:
        raise SpecError(describe(exc)) from None


def dump(model: BaseModel) -> dict[str, Any]:
    """The wire form: camelCase, JSON types, defaults included."""
    return model.model_dump(mode="json", by_alias=True)


def route_for(spec: ModelDeploymentSpec, routing: Routing) -> ModelRoute | None:
    """The router's entry for one model, derived from ``status.routing``."""
    return route_from(routing, spec.fallback, comparison=spec.comparison)


def route_from(
    routing: Routing, fallback: Fallback, *, comparison: Comparison | None = None
) -> ModelRoute | None:
    """The router's entry from ``status.routing``, the fallback and the shadow comparison
    (default Binary at 0.5); None before stable routes."""
    if routing.stable is None:
        return None
    candidate = shadow = None
    if routing.candidate is not None:
        candidate = Candidate(
            version=routing.candidate.version,
            url=routing.candidate.url,
            weight=routing.candidate.weight,
        )
    if routing.shadow is not None:
        shadow = Shadow(
            version=routing.shadow.version, url=routing.shadow.url, percent=routing.shadow.percent
        )
    return ModelRoute(
        stable=Upstream(version=routing.stable.version, url=routing.stable.url),
        candidate=candidate,
        shadow=shadow,
        sticky_header=routing.sticky_header,
        salt=routing.salt,
        fallback=fallback,
        comparison=comparison or Comparison(),
    )


def describe(exc: ValidationError) -> str:
    """One line per problem, each starting with the field's dotted path."""
    lines = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"]) or "(document)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {msg}")
    return "; ".join(lines)
