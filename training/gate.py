"""The validation gate: the checks a candidate model must pass before it may be proposed.

A retrained model is only worth rolling out if it is at least as good as what serves now and
cannot hurt anyone in ways an average hides. Each check reports its number, its threshold and
one line a human reads, so a blocked retrain says exactly why.

Every model's gate (:func:`judge`) runs the same checks, set per model by a
:class:`GateConfig`:

- finite outputs on the newest data;
- metric floors: each named metric on the newest data at least its minimum;
- no regression: one metric of the candidate at most ``max_drop`` below the stable model's,
  both scored on the same newest data;
- the model's own checks, if it has any (below);
- single-row latency p99, measured in-process;
- a serving smoke test over the v2 protocol, and reproducibility (retraining with the same seed
  gives the same weights hash).

The fraud model's gate (:func:`run_gate`) is one configuration of it (:class:`GateThresholds`:
floors on ROC-AUC and PR-AUC, no regression in ROC-AUC) plus checks of its own: finite
weights, scores in [0, 1] and not constant, beating a logistic-regression baseline trained on
the same split, and ROC-AUC per merchant category (slices too small or with one class are
skipped).

The smoke test and the reproduction need processes and minutes, so they are passed in as
callables (workflows/smoke.py is the real smoke test); everything else is computed from
numbers the caller hands over. Only the latency check reads a clock. A check that cannot even
run (NaN weights make metrics meaningless, a callable raises) fails with a detail saying so;
the gate itself never raises on a bad model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from training import evaluate
from training.data import FRAUD_SCHEMA, Schema, features_matrix, split
from training.model import FraudNet, predict_proba, state_hash

#: Comparison a check's value must satisfy against its threshold (shown in the report).
AT_LEAST, AT_MOST, EQUALS = ">=", "<=", "=="
#: Single-row calls made before latency is measured (first calls allocate and warm caches).
_LATENCY_WARMUP = 10
#: Slack in metric comparisons so a difference landing on its tolerance (0.95 - 0.96 is
#: -0.01000000000000001 in floating point) counts as on it, as the report shows it.
_EPS = 1e-12
#: What the serving smoke test checks, as the report's threshold column says it.
SMOKE_WHAT = "v2 infer answers 200 with every declared output, equal to in-process"
_FRAUD_SMOKE_WHAT = "v2 infer answers 200 with [N] probabilities in [0, 1]"

Setting = float | int | bool


# --- what a model's gate asks ---------------------------------------------------------------


@dataclass(frozen=True)
class Regression:
    """The candidate's ``metric`` on the newest data may be at most ``max_drop`` below the
    stable model's on the same rows (higher is better)."""

    metric: str
    max_drop: float = 0.01


@dataclass(frozen=True)
class GateConfig:
    """One model's gate. ``floors``: metric name -> minimum on the newest data (higher is
    better; the names are those the model's evaluate returns). ``extra``: thresholds of the
    model's own checks, changeable like the others.

    :meth:`settings` spells it flat, as ``-p gate=min_accuracy=0.95,max_latency_ms=50``
    changes it: ``min_<metric>`` per floor, ``max_regression``, the fields below, the extras.
    """

    floors: Mapping[str, float] = field(default_factory=dict)
    regression: Regression | None = None
    #: Single-row predict p99 over ``latency_rows`` in-process calls, in milliseconds.
    max_latency_ms: float = 20.0
    latency_rows: int = 200
    #: A check whose callable was not given fails (True) or is reported as skipped (False).
    require_serving_smoke: bool = True
    require_reproducible: bool = True
    extra: Mapping[str, Setting] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "floors", {k: float(v) for k, v in self.floors.items()})
        object.__setattr__(self, "extra", dict(self.extra))
        clash = {f"min_{m}" for m in self.floors} & set(self.extra)
        if clash:
            raise ValueError(f"gate extra thresholds {sorted(clash)} clash with metric floors")

    def settings(self) -> dict[str, Setting]:
        """Every threshold by its flat name (see the class docstring)."""
        out: dict[str, Setting] = {f"min_{m}": v for m, v in self.floors.items()}
        if self.regression is not None:
            out["max_regression"] = self.regression.max_drop
        out |= {
            "max_latency_ms": self.max_latency_ms,
            "latency_rows": self.latency_rows,
            "require_serving_smoke": self.require_serving_smoke,
            "require_reproducible": self.require_reproducible,
        }
        return out | dict(self.extra)

    def with_settings(self, changes: Mapping[str, Setting]) -> GateConfig:
        """This gate with some thresholds changed, by their flat names."""
        unknown = set(changes) - set(self.settings())
        if unknown:
            raise ValueError(f"unknown gate threshold(s): {', '.join(sorted(unknown))}")
        floors, extra = dict(self.floors), dict(self.extra)
        direct: dict[str, Any] = {}
        for key, value in changes.items():
            if key in extra:
                extra[key] = value
            elif key == "max_regression" and self.regression is not None:
                direct["regression"] = replace(self.regression, max_drop=float(value))
            elif key.startswith("min_") and key[4:] in floors:
                floors[key[4:]] = float(value)
            else:
                direct[key] = value
        return replace(self, floors=floors, extra=extra, **direct)

    def to_dict(self) -> dict[str, Any]:
        regression = self.regression
        return {
            "floors": dict(self.floors),
            "regression": None
            if regression is None
            else {"metric": regression.metric, "max_drop": regression.max_drop},
            "max_latency_ms": self.max_latency_ms,
            "latency_rows": self.latency_rows,
            "require_serving_smoke": self.require_serving_smoke,
            "require_reproducible": self.require_reproducible,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateConfig:
        """From :meth:`to_dict`; a report written before gates were per model holds the
        fraud gate's flat thresholds instead."""
        if "floors" not in data:
            return GateThresholds.from_dict(data).config()
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown gate setting(s): {', '.join(sorted(unknown))}")
        raw = data.get("regression")
        regression = None if raw is None else Regression(str(raw["metric"]), raw["max_drop"])
        return cls(**{**data, "regression": regression})


def check_name(metric: str) -> str:
    """A metric's check in the report, in the report's camelCase: roc_auc -> rocAuc."""
    head, *rest = metric.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


@dataclass(frozen=True)
class GateThresholds:
    """The fraud model's gate, flat: its :class:`GateConfig` is :meth:`config`."""

    min_roc_auc: float = 0.80
    min_pr_auc: float = 0.30
    #: Candidate ROC-AUC may be at most this below the stable model's, on the newest window.
    max_regression: float = 0.01
    #: Candidate ROC-AUC minus the logistic-regression baseline's must be at least this.
    min_baseline_margin: float = 0.0
    #: Floor for every merchant-category slice with at least ``min_slice_rows`` rows.
    min_slice_roc_auc: float = 0.70
    min_slice_rows: int = 200
    #: Single-row predict p99 over ``latency_rows`` in-process calls, in milliseconds.
    max_latency_ms: float = 20.0
    latency_rows: int = 200
    #: Outputs with a standard deviation at or below this are "constant".
    min_output_std: float = 1e-6
    #: A check whose callable was not given fails (True) or is reported as skipped (False).
    require_serving_smoke: bool = True
    require_reproducible: bool = True

    def config(self) -> GateConfig:
        return GateConfig(
            floors={"roc_auc": self.min_roc_auc, "pr_auc": self.min_pr_auc},
            regression=Regression("roc_auc", self.max_regression),
            max_latency_ms=self.max_latency_ms,
            latency_rows=self.latency_rows,
            require_serving_smoke=self.require_serving_smoke,
            require_reproducible=self.require_reproducible,
            extra={
                "min_baseline_margin": self.min_baseline_margin,
                "min_slice_roc_auc": self.min_slice_roc_auc,
                "min_slice_rows": self.min_slice_rows,
                "min_output_std": self.min_output_std,
            },
        )

    @classmethod
    def from_config(cls, config: GateConfig) -> GateThresholds:
        return cls.from_dict(config.settings())

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateThresholds:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown gate threshold(s): {', '.join(sorted(unknown))}")
        return cls(**data)


# --- what it says -----------------------------------------------------------------------------


@dataclass(frozen=True)
class GateCheck:
    #: e.g. "rocAuc", "noRegression", "slice[grocery].rocAuc", "latencyP99Ms", "reproducible".
    name: str
    value: float | str | None
    threshold: float | str | None
    passed: bool
    #: One line a human reads, with the numbers.
    detail: str = ""
    #: How value compares with threshold: ">=", "<=", "==" (or "" when it does not apply).
    op: str = ""
    #: Not evaluated (slice too small, optional callable not given); a skipped check passes.
    skipped: bool = False

    @property
    def result(self) -> str:
        if self.skipped:
            return "skipped"
        return "pass" if self.passed else "FAIL"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": _json_value(self.value),
            "threshold": _json_value(self.threshold),
            "op": self.op,
            "passed": self.passed,
            "skipped": self.skipped,
            "detail": self.detail,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateCheck:
        return cls(
            name=str(data["name"]),
            value=data.get("value"),
            threshold=data.get("threshold"),
            passed=bool(data["passed"]),
            detail=str(data.get("detail", "")),
            op=str(data.get("op", "")),
            skipped=bool(data.get("skipped", False)),
        )


@dataclass(frozen=True)
class GateReport:
    #: Tag or staging name of the candidate.
    model: str
    checks: tuple[GateCheck, ...]
    thresholds: GateConfig = field(default_factory=GateConfig)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def failed(self) -> tuple[GateCheck, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def check(self, name: str) -> GateCheck:
        """The check called ``name`` (KeyError when the report has none)."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"gate report for {self.model} has no check {name!r}")

    def summary(self) -> str:
        """One line: passed, or which checks failed."""
        if self.passed:
            return f"gate passed for {self.model}: {len(self.checks)} checks"
        names = ", ".join(c.name for c in self.failed())
        return f"gate FAILED for {self.model}: {len(self.failed())} of {len(self.checks)} ({names})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (no NaN or infinity: a number that is not finite is written as null)."""
        return {
            "model": self.model,
            "passed": self.passed,
            "failed": [c.name for c in self.failed()],
            "thresholds": self.thresholds.to_dict(),
            "checks": [c.to_dict() for c in self.checks],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateReport:
        return cls(
            model=str(data["model"]),
            checks=tuple(GateCheck.from_dict(c) for c in data["checks"]),
            thresholds=GateConfig.from_dict(data.get("thresholds") or {"floors": {}}),
        )

    def to_markdown(self) -> str:
        verdict = "passed" if self.passed else f"FAILED ({len(self.failed())} failed)"
        lines = [
            f"## Validation gate for {self.model}: {verdict}",
            "",
            "| check | value | threshold | result | detail |",
            "|---|---:|---:|---|---|",
        ]
        for c in self.checks:
            threshold = _fmt(c.threshold)
            if c.op and c.threshold is not None:
                threshold = f"{c.op} {threshold}"
            cells = (c.name, _fmt(c.value), threshold, c.result, c.detail)
            lines.append("| " + " | ".join(_cell(x) for x in cells) + " |")
        return "\n".join(lines) + "\n"


# --- any model's gate -------------------------------------------------------------------------

#: A model's metrics (name -> value), or one line saying why there are none.
Metrics = Mapping[str, float] | str


def judge(
    *,
    model: str,
    config: GateConfig,
    outputs: Mapping[str, np.ndarray] | str,
    metrics: Metrics,
    stable_metrics: Callable[[], Metrics | None],
    latency_ms: Callable[[int], np.ndarray],
    serve_smoke: Callable[[], tuple[bool, str]] | None,
    reproduce: Callable[[], str] | None,
    weights_sha256: str | None,
    first: Sequence[GateCheck] = (),
    then: Callable[[], Sequence[GateCheck]] | None = None,
    smoke_what: str = SMOKE_WHAT,
) -> GateReport:
    """Every check of ``config`` for the candidate ``model``; never raises for a bad model.

    ``outputs`` and ``metrics``: the candidate's on the newest data (or why there are none).
    ``stable_metrics``: the stable model's on the same rows (None: no stable model).
    ``latency_ms(n)``: the times of n single-row predictions. ``reproduce`` retrains with the
    same seed and returns the weights' sha256, compared with ``weights_sha256``. The model's
    own checks go right after finiteOutputs (``first``) and after noRegression (``then``).
    """
    checks = [finite_outputs_check(outputs), *first]
    checks += metric_floors(metrics, config.floors)
    rule = config.regression
    if rule is not None:
        checks.append(
            _guarded(
                "noRegression",
                lambda: _regression(metrics, stable_metrics, rule),
                threshold=-rule.max_drop,
                op=AT_LEAST,
            )
        )
    if then is not None:
        try:
            checks += then()
        except Exception as exc:
            why = f"the model's own checks raised {type(exc).__name__}: {exc}"
            checks.append(_cannot("modelChecks", why, threshold=None))
    checks.append(
        _guarded(
            "latencyP99Ms",
            lambda: latency_check(latency_ms(config.latency_rows), max_ms=config.max_latency_ms),
            threshold=config.max_latency_ms,
            op=AT_MOST,
        )
    )
    checks.append(smoke_check(serve_smoke, required=config.require_serving_smoke, what=smoke_what))
    checks.append(
        reproducibility_check(
            reproduce, expected=weights_sha256, required=config.require_reproducible
        )
    )
    return GateReport(model=model, checks=tuple(checks), thresholds=config)


def _regression(
    metrics: Metrics, stable_metrics: Callable[[], Metrics | None], rule: Regression
) -> GateCheck:
    name, threshold = "noRegression", -rule.max_drop
    if isinstance(metrics, str):
        return _cannot(name, metrics, threshold=threshold, op=AT_LEAST)
    if rule.metric not in metrics:
        return _cannot(name, _missing(rule.metric, metrics), threshold=threshold, op=AT_LEAST)
    stable = stable_metrics()
    value: float | str | None = stable if stable is None or isinstance(stable, str) else None
    if isinstance(stable, Mapping):
        got = stable.get(rule.metric)
        value = (
            float(got)
            if got is not None and math.isfinite(got)
            else f"the stable model has no {rule.metric} on the window: nothing to compare with"
        )
    return regression_check(
        float(metrics[rule.metric]), value, max_regression=rule.max_drop, metric=rule.metric
    )


# --- the fraud model's gate -----------------------------------------------------------------


def run_gate(
    candidate: FraudNet,
    *,
    candidate_name: str,
    data: pd.DataFrame,
    stable: FraudNet | None,
    baseline_roc_auc: float | None = None,
    train_data: pd.DataFrame | None = None,
    thresholds: GateThresholds = GateThresholds(),  # frozen: safe to share
    serve_smoke: Callable[[], tuple[bool, str]] | None = None,
    reproduce: Callable[[], str] | None = None,
    weights_sha256: str | None = None,
    seed: int = 0,
    schema: Schema = FRAUD_SCHEMA,
) -> GateReport:
    """Run every check of the fraud gate on ``candidate``; never raises for a bad model.

    ``data`` is the newest labelled window: candidate, stable model and baseline are all
    scored on it. The baseline is trained on ``train_data`` with the split and ``seed`` that
    training used, unless ``baseline_roc_auc`` is given. ``reproduce`` retrains with the same
    seed and returns the weights' sha256, compared with ``weights_sha256`` (default: the hash
    of ``candidate`` itself).
    """
    fraud = _FraudScores.of(candidate, data, schema=schema)
    return judge(
        model=candidate_name,
        config=thresholds.config(),
        outputs=fraud.outputs(),
        metrics=fraud.metrics(),
        stable_metrics=lambda: _stable_metrics(stable, data=data, y=fraud.y, schema=schema),
        latency_ms=lambda rows: single_row_latency_ms(candidate, data, rows=rows, schema=schema),
        serve_smoke=serve_smoke,
        reproduce=reproduce,
        weights_sha256=weights_sha256 or _safe_hash(candidate),
        first=fraud.model_checks(thresholds),
        then=lambda: fraud.metric_checks(
            thresholds,
            train_data=train_data,
            baseline_roc_auc=baseline_roc_auc,
            seed=seed,
        ),
        smoke_what=_FRAUD_SMOKE_WHAT,
    )


def fraud_checks(
    candidate: FraudNet,
    *,
    data: pd.DataFrame,
    thresholds: GateThresholds,
    train_data: pd.DataFrame | None,
    seed: int,
    schema: Schema = FRAUD_SCHEMA,
) -> list[GateCheck]:
    """The fraud model's own checks (finite weights, scores in [0, 1] and not constant, the
    baseline, the slices) on the newest window ``data``, for the retrain pipeline's gate."""
    fraud = _FraudScores.of(candidate, data, schema=schema)
    return [
        *fraud.model_checks(thresholds),
        *fraud.metric_checks(thresholds, train_data=train_data, baseline_roc_auc=None, seed=seed),
    ]


@dataclass(frozen=True)
class _FraudScores:
    """A fraud model's scores on a window, its ranking metrics, and what follows from them."""

    net: FraudNet
    data: pd.DataFrame
    schema: Schema
    #: The scores, or why there are none.
    scored: np.ndarray | str
    y: np.ndarray | None
    ranking: evaluate.Metrics | str

    @classmethod
    def of(cls, net: FraudNet, data: pd.DataFrame, *, schema: Schema) -> _FraudScores:
        scored = _score(net, data, schema=schema)
        y = data[schema.label].to_numpy() if schema.label in data.columns else None
        ranking = _ranking(y, None if isinstance(scored, str) else scored)
        return cls(net, data, schema, scored, y, ranking)

    def outputs(self) -> dict[str, np.ndarray] | str:
        return self.scored if isinstance(self.scored, str) else {"probability": self.scored}

    def metrics(self) -> Metrics:
        return self.ranking if isinstance(self.ranking, str) else self.ranking.to_dict()

    def model_checks(self, t: GateThresholds) -> list[GateCheck]:
        """finiteWeights, outputsInRange, notConstant."""
        net = self.net
        checks = [_guarded("finiteWeights", lambda: finite_weights(net), threshold=0, op=AT_MOST)]
        if isinstance(self.scored, str):
            return [
                *checks,
                _cannot("outputsInRange", self.scored, threshold="[0, 1]"),
                _cannot("notConstant", self.scored, threshold=t.min_output_std, op=">"),
            ]
        return checks + output_checks(self.scored, min_std=t.min_output_std)[1:]

    def metric_checks(
        self,
        t: GateThresholds,
        *,
        train_data: pd.DataFrame | None,
        baseline_roc_auc: float | None,
        seed: int,
    ) -> list[GateCheck]:
        """beatsBaseline and the slices."""
        m, data, y, schema = self.ranking, self.data, self.y, self.schema
        if isinstance(m, str):
            return [
                _cannot("beatsBaseline", m, threshold=t.min_baseline_margin, op=AT_LEAST),
                _cannot("slices", f"slice metrics not computed: {m}", threshold=None),
            ]
        roc = m.roc_auc
        checks = [
            _guarded(
                "beatsBaseline",
                lambda: baseline_check(
                    roc,
                    _baseline_roc_auc(
                        baseline_roc_auc,
                        train_data=train_data,
                        data=data,
                        y=y,
                        seed=seed,
                        schema=schema,
                    ),
                    min_margin=t.min_baseline_margin,
                ),
                threshold=t.min_baseline_margin,
                op=AT_LEAST,
            )
        ]
        assert not isinstance(self.scored, str)  # metrics exist only for scores
        try:
            checks += slice_checks(data, self.scored, thresholds=t, schema=schema)
        except Exception as exc:
            checks.append(_cannot("slices", f"cannot compute slice metrics: {exc}", threshold=None))
        return checks


# --- the checks, each a function of numbers (or a callable) -------------------------------


def finite_weights(net: torch.nn.Module) -> GateCheck:
    """Every parameter and buffer finite; names the first tensor that is not."""
    bad: dict[str, int] = {}
    for name, tensor in net.state_dict().items():
        if tensor.is_floating_point():
            count = int((~torch.isfinite(tensor)).sum())
            if count:
                bad[name] = count
    total = sum(bad.values())
    if total:
        first = next(iter(bad))
        detail = f"{total} non-finite weight value(s) in {len(bad)} tensor(s), first {first!r}"
    else:
        detail = "all weights finite"
    return GateCheck(
        name="finiteWeights", value=total, threshold=0, op=AT_MOST, passed=total == 0, detail=detail
    )


def finite_outputs_check(outputs: Mapping[str, np.ndarray] | str) -> GateCheck:
    """finiteOutputs: every value of every output on the newest data is a number."""
    if isinstance(outputs, str):
        return _cannot("finiteOutputs", outputs, threshold=0, op=AT_MOST)
    total = sum(int(np.size(v)) for v in outputs.values())
    n_bad = sum(int((~np.isfinite(np.asarray(v, dtype=float))).sum()) for v in outputs.values())
    return GateCheck(
        name="finiteOutputs",
        value=n_bad,
        threshold=0,
        op=AT_MOST,
        passed=n_bad == 0,
        detail=f"{n_bad} of {total} outputs are NaN or infinite"
        if n_bad
        else f"all {total} outputs finite",
    )


def output_checks(p: np.ndarray, *, min_std: float) -> list[GateCheck]:
    """finiteOutputs, outputsInRange, notConstant for the scores ``p`` of the newest window."""
    p = np.asarray(p, dtype=np.float64).ravel()
    checks = [finite_outputs_check({"probability": p})]
    ok = p[np.isfinite(p)]
    if not len(ok):
        checks += [
            _cannot("outputsInRange", "no finite outputs", threshold="[0, 1]"),
            _cannot("notConstant", "no finite outputs", threshold=min_std, op=">"),
        ]
        return checks
    outside = int(((ok < 0) | (ok > 1)).sum())
    lo, hi = float(ok.min()), float(ok.max())
    checks.append(
        GateCheck(
            name="outputsInRange",
            value=outside,
            threshold="[0, 1]",
            passed=outside == 0,
            detail=f"{outside} of {len(ok)} finite outputs outside [0, 1]; "
            f"range {lo:.6g}..{hi:.6g}",
        )
    )
    std = float(ok.std())
    checks.append(
        GateCheck(
            name="notConstant",
            value=std,
            threshold=min_std,
            op=">",
            passed=std > min_std,
            detail=f"output std {std:.3g} over {len(ok)} rows (range {lo:.6g}..{hi:.6g})",
        )
    )
    return checks


def metric_floors(metrics: Metrics, floors: Mapping[str, float]) -> list[GateCheck]:
    """One check per floor, named after its metric (roc_auc -> rocAuc)."""
    checks = []
    for metric, floor in floors.items():
        name = check_name(metric)
        if isinstance(metrics, str):
            checks.append(_cannot(name, metrics, threshold=floor, op=AT_LEAST))
        elif metric not in metrics:
            checks.append(_cannot(name, _missing(metric, metrics), threshold=floor, op=AT_LEAST))
        else:
            what = f"{metric} on the newest data"
            checks.append(floor_check(name, float(metrics[metric]), floor=floor, what=what))
    return checks


def floor_check(name: str, value: float, *, floor: float, what: str) -> GateCheck:
    if not math.isfinite(value):
        why = f"{what} is undefined ({value}): the rows do not allow it (one class only?)"
        return _cannot(name, why, threshold=floor, op=AT_LEAST)
    ok = value >= floor
    return GateCheck(
        name=name,
        value=value,
        threshold=floor,
        op=AT_LEAST,
        passed=ok,
        detail=f"{what} {value:.4f} {'>=' if ok else '<'} floor {floor:.4f}",
    )


def regression_check(
    candidate: float,
    stable: float | str | None,
    *,
    max_regression: float,
    metric: str = "ROC-AUC",
) -> GateCheck:
    """Pass when the candidate's ``metric`` >= the stable model's - max_regression (same rows).

    ``stable`` is None when there is no stable model yet, or a string saying why the stable
    model could not be scored; neither blocks the candidate.
    """
    if stable is None or isinstance(stable, str):
        why = stable or "no stable model: nothing to regress from"
        return GateCheck(
            name="noRegression",
            value=None,
            threshold=-max_regression,
            op=AT_LEAST,
            passed=True,
            detail=why,
        )
    delta = candidate - stable
    ok = delta >= -max_regression - _EPS
    return GateCheck(
        name="noRegression",
        value=delta,
        threshold=-max_regression,
        op=AT_LEAST,
        passed=ok,
        detail=f"{metric} candidate {candidate:.4f} vs stable {stable:.4f} on the same "
        f"window: change {delta:+.4f}, tolerance {max_regression:.4f}",
    )


def baseline_check(
    candidate_roc: float, baseline_roc: float | str, *, min_margin: float
) -> GateCheck:
    if isinstance(baseline_roc, str):
        return _cannot("beatsBaseline", baseline_roc, threshold=min_margin, op=AT_LEAST)
    margin = candidate_roc - baseline_roc
    ok = margin >= min_margin - _EPS
    return GateCheck(
        name="beatsBaseline",
        value=margin,
        threshold=min_margin,
        op=AT_LEAST,
        passed=ok,
        detail=f"ROC-AUC candidate {candidate_roc:.4f} vs logistic-regression baseline "
        f"{baseline_roc:.4f}: margin {margin:+.4f}",
    )


def slice_checks(
    data: pd.DataFrame,
    p: np.ndarray,
    *,
    thresholds: GateThresholds,
    schema: Schema = FRAUD_SCHEMA,
    by: str = "merchant_category",
) -> list[GateCheck]:
    """``slice[<category>].rocAuc`` for each category present in ``data``."""
    floor, min_rows = thresholds.min_slice_roc_auc, thresholds.min_slice_rows
    out = []
    for name, m in evaluate.slice_metrics(data, p, schema=schema, by=by).items():
        n, positives = int(m["n"]), int(m["positives"])
        roc = m.get("roc_auc")
        check = GateCheck(
            name=f"slice[{name}].rocAuc",
            value=None,
            threshold=floor,
            op=AT_LEAST,
            passed=True,
            detail=f"{by}={name}: {n} rows, {positives} fraud",
            skipped=True,
        )
        if n < min_rows:
            check = replace(check, detail=f"skipped: {check.detail}; fewer than {min_rows} rows")
        elif roc is None or not math.isfinite(roc):
            need = f"needs both classes and >= {evaluate.MIN_SLICE_POSITIVES} fraud"
            check = replace(check, detail=f"skipped: {check.detail}; {need}")
        else:
            check = replace(
                check,
                value=float(roc),
                passed=roc >= floor,
                detail=f"{check.detail}; ROC-AUC {roc:.4f}",
                skipped=False,
            )
        out.append(check)
    return out


def single_row_latency_ms(
    net: FraudNet, data: pd.DataFrame, *, rows: int, schema: Schema = FRAUD_SCHEMA
) -> np.ndarray:
    """Wall time in ms of ``rows`` single-row ``predict_proba`` calls on rows of ``data``."""
    if data.empty:
        raise ValueError("latency needs at least one row and one call")
    x = features_matrix(data, schema)
    return time_calls(lambda i: predict_proba(net, x[i % len(x) : i % len(x) + 1]), calls=rows)


def time_calls(call: Callable[[int], object], *, calls: int) -> np.ndarray:
    """Wall time in ms of ``call(0)``, ``call(1)``, ... ``calls`` times, after a warm-up."""
    if calls <= 0:
        raise ValueError("latency needs at least one row and one call")
    for i in range(_LATENCY_WARMUP):
        call(i)
    times = np.empty(calls)
    for i in range(calls):
        start = time.perf_counter()
        call(i)
        times[i] = (time.perf_counter() - start) * 1000
    return times


def latency_check(times_ms: np.ndarray, *, max_ms: float) -> GateCheck:
    p99, p50 = float(np.percentile(times_ms, 99)), float(np.percentile(times_ms, 50))
    ok = p99 <= max_ms
    return GateCheck(
        name="latencyP99Ms",
        value=p99,
        threshold=max_ms,
        op=AT_MOST,
        passed=ok,
        detail=f"single-row predict p99 {p99:.3f} ms (p50 {p50:.3f} ms) over {len(times_ms)} "
        f"in-process calls, budget {max_ms:g} ms",
    )


def smoke_check(
    smoke: Callable[[], tuple[bool, str]] | None, *, required: bool, what: str = SMOKE_WHAT
) -> GateCheck:
    """Run the serving smoke test (v2 infer against a real server) if one is given."""
    if smoke is None:
        return _not_run("servingSmoke", what, required=required, why="no smoke test given")
    try:
        ok, message = smoke()
    except Exception as exc:
        ok, message = False, f"smoke test raised {type(exc).__name__}: {exc}"
    return GateCheck(
        name="servingSmoke",
        value="ok" if ok else "failed",
        threshold=what,
        passed=bool(ok),
        detail=_one_line(message),
    )


def reproducibility_check(
    reproduce: Callable[[], str] | None, *, expected: str | None, required: bool
) -> GateCheck:
    """Retraining with the same data and seed must give bit-identical weights."""
    if reproduce is None:
        return _not_run(
            "reproducible", expected, required=required, why="no reproduction run given"
        )
    if expected is None:
        return _cannot("reproducible", "no weights hash to compare with", threshold=None)
    try:
        got = reproduce()
    except Exception as exc:
        why = f"retraining raised {type(exc).__name__}: {exc}"
        return _cannot("reproducible", why, threshold=expected, op=EQUALS)
    ok = got == expected
    detail = (
        f"retrained weights sha256 {got[:12]} == {expected[:12]}"
        if ok
        else f"retraining with the same seed gave weights {got[:12]}, not {expected[:12]}"
    )
    return GateCheck(
        name="reproducible", value=got, threshold=expected, op=EQUALS, passed=ok, detail=detail
    )


# --- helpers --------------------------------------------------------------------------------


def _score(net: FraudNet, data: pd.DataFrame, *, schema: Schema) -> np.ndarray | str:
    try:
        return predict_proba(net, features_matrix(data, schema)).astype(np.float64)
    except Exception as exc:
        return f"cannot score the window: {type(exc).__name__}: {exc}"


def _ranking(y: np.ndarray | None, p: np.ndarray | None) -> evaluate.Metrics | str:
    if y is None:
        return "the window has no labels"
    if p is None:
        return "the candidate could not score the window"
    bad = int((~np.isfinite(p)).sum())
    if bad:
        return f"cannot rank: {bad} of {len(p)} outputs are NaN or infinite"
    if len(np.unique(y)) < 2:
        return "cannot rank: the window holds only one class"
    try:
        return evaluate.metrics(y, p)
    except Exception as exc:
        return f"cannot compute metrics: {exc}"


def _stable_metrics(
    stable: FraudNet | None, *, data: pd.DataFrame, y: np.ndarray | None, schema: Schema
) -> Metrics | None:
    if stable is None:
        return None
    scored = _score(stable, data, schema=schema)
    if isinstance(scored, str) or not np.isfinite(scored).all() or y is None:
        return "the stable model cannot be scored on the window: nothing to compare with"
    return evaluate.metrics(y, scored).to_dict()


def _missing(metric: str, metrics: Mapping[str, float]) -> str:
    returned = ", ".join(metrics) or "nothing"
    return f"evaluate returned no {metric!r} (it returned {returned})"


def _baseline_roc_auc(
    given: float | None,
    *,
    train_data: pd.DataFrame | None,
    data: pd.DataFrame,
    y: np.ndarray | None,
    seed: int,
    schema: Schema,
) -> float | str:
    if given is not None:
        return given
    if train_data is None or y is None:
        return "no baseline: give baseline_roc_auc or train_data"
    # The same split training uses: the baseline learns from exactly the model's training rows.
    train_rows = split(train_data, seed=seed)[0]
    base = evaluate.baseline(train_rows, schema=schema, seed=seed)
    return evaluate.metrics(y, evaluate.baseline_proba(base, data, schema)).roc_auc


def _safe_hash(net: torch.nn.Module) -> str | None:
    try:
        return state_hash(net)
    except Exception:
        return None


def _guarded(
    name: str, check: Callable[[], GateCheck], *, threshold: float | str | None, op: str = ""
) -> GateCheck:
    """Run one check; if it raises, it fails with the reason instead of stopping the gate."""
    try:
        return check()
    except Exception as exc:
        why = f"check could not run: {type(exc).__name__}: {exc}"
        return _cannot(name, why, threshold=threshold, op=op)


def _cannot(name: str, why: str, *, threshold: float | str | None, op: str = "") -> GateCheck:
    return GateCheck(
        name=name, value=None, threshold=threshold, passed=False, detail=_one_line(why), op=op
    )


def _not_run(name: str, threshold: float | str | None, *, required: bool, why: str) -> GateCheck:
    return GateCheck(
        name=name,
        value=None,
        threshold=threshold,
        passed=not required,
        detail=f"not run: {why} ({'required' if required else 'optional'})",
        skipped=not required,
    )


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _json_value(v: float | str | None) -> float | str | None:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _fmt(v: float | str | None) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4f}" if v == 0 or 1e-3 <= abs(v) < 1e4 else f"{v:.3g}"
    if len(v) == 64 and all(ch in "0123456789abcdef" for ch in v):
        return v[:12]  # a sha256: the prefix is enough to tell two apart in a table
    return v


def _cell(text: str) -> str:
    return _one_line(text).replace("|", "\\|")
