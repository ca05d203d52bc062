"""The validation gate: the checks a candidate model must pass before it may be proposed.

A retrained model is only worth rolling out if it is at least as good as what serves now and
cannot hurt anyone in ways an average hides. Each check reports its number, its threshold and
one line a human reads, so a blocked retrain says exactly why:

- numerical stability: finite weights; outputs on the newest window finite, in [0, 1] and
  not constant;
- metric floors: ROC-AUC and PR-AUC on the newest window;
- no regression against the stable model, both scored on the same newest window;
- beats the logistic-regression baseline (trained on the same split as the model);
- per-slice ROC-AUC (by merchant category); slices too small or with one class are skipped;
- single-row latency p99, measured in-process;
- a serving smoke test over the v2 protocol, and reproducibility (retraining with the same seed
  gives the same weights hash).

The last two need processes and minutes, so they are passed in as callables (see
``workflows/smoke.py`` for the real smoke test); everything else is computed here from the
model and the data. Only the latency check reads a clock. A check that cannot even run (NaN
weights make metrics meaningless, a callable raises) fails with a detail saying so; the gate
itself never raises on a bad model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
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


@dataclass(frozen=True)
class GateThresholds:
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

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateThresholds:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown gate threshold(s): {', '.join(sorted(unknown))}")
        return cls(**data)


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
    thresholds: GateThresholds = field(default_factory=GateThresholds)

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
            thresholds=GateThresholds.from_dict(data.get("thresholds", {})),
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
    """Run every check of the gate on ``candidate``; never raises for a bad model.

    ``data`` is the newest labelled window: candidate, stable model and baseline are all
    scored on it. The baseline is trained on ``train_data`` with the split and ``seed`` that
    training used, unless ``baseline_roc_auc`` is given. ``reproduce`` retrains with the same
    seed and returns the weights' sha256, compared with ``weights_sha256`` (default: the hash
    of ``candidate`` itself).
    """
    t = thresholds
    checks = [_guarded("finiteWeights", lambda: finite_weights(candidate), threshold=0, op=AT_MOST)]

    scored = _score(candidate, data, schema=schema)
    p = None if isinstance(scored, str) else scored
    if p is None:
        why = str(scored)
        checks += [
            _cannot("finiteOutputs", why, threshold=0, op=AT_MOST),
            _cannot("outputsInRange", why, threshold="[0, 1]"),
            _cannot("notConstant", why, threshold=t.min_output_std, op=">"),
        ]
    else:
        checks += output_checks(p, min_std=t.min_output_std)

    y = data[schema.label].to_numpy() if schema.label in data.columns else None
    m = _ranking(y, p)
    if isinstance(m, str):
        checks += [
            _cannot("rocAuc", m, threshold=t.min_roc_auc, op=AT_LEAST),
            _cannot("prAuc", m, threshold=t.min_pr_auc, op=AT_LEAST),
            _cannot("noRegression", m, threshold=-t.max_regression, op=AT_LEAST),
            _cannot("beatsBaseline", m, threshold=t.min_baseline_margin, op=AT_LEAST),
        ]
    else:
        roc = m.roc_auc
        checks += [
            floor_check("rocAuc", roc, floor=t.min_roc_auc, what="ROC-AUC on the newest window"),
            floor_check("prAuc", m.pr_auc, floor=t.min_pr_auc, what="PR-AUC on the newest window"),
            _guarded(
                "noRegression",
                lambda: regression_check(
                    roc,
                    _stable_roc_auc(stable, data=data, y=y, schema=schema),
                    max_regression=t.max_regression,
                ),
                threshold=-t.max_regression,
                op=AT_LEAST,
            ),
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
            ),
        ]

    if p is not None and not isinstance(m, str):
        try:
            checks += slice_checks(data, p, thresholds=t, schema=schema)
        except Exception as exc:
            checks.append(_cannot("slices", f"cannot compute slice metrics: {exc}", threshold=None))
    else:
        why = m if isinstance(m, str) else "no scores"
        checks.append(_cannot("slices", f"slice metrics not computed: {why}", threshold=None))

    checks.append(
        _guarded(
            "latencyP99Ms",
            lambda: latency_check(
                single_row_latency_ms(candidate, data, rows=t.latency_rows, schema=schema),
                max_ms=t.max_latency_ms,
            ),
            threshold=t.max_latency_ms,
            op=AT_MOST,
        )
    )
    checks.append(smoke_check(serve_smoke, required=t.require_serving_smoke))
    checks.append(
        reproducibility_check(
            reproduce,
            expected=weights_sha256 or _safe_hash(candidate),
            required=t.require_reproducible,
        )
    )
    return GateReport(model=candidate_name, checks=tuple(checks), thresholds=t)


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


def output_checks(p: np.ndarray, *, min_std: float) -> list[GateCheck]:
    """finiteOutputs, outputsInRange, notConstant for the scores ``p`` of the newest window."""
    p = np.asarray(p, dtype=np.float64).ravel()
    finite = np.isfinite(p)
    n_bad = int((~finite).sum())
    checks = [
        GateCheck(
            name="finiteOutputs",
            value=n_bad,
            threshold=0,
            op=AT_MOST,
            passed=n_bad == 0,
            detail=f"{n_bad} of {len(p)} outputs are NaN or infinite"
            if n_bad
            else f"all {len(p)} outputs finite",
        )
    ]
    ok = p[finite]
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


def floor_check(name: str, value: float, *, floor: float, what: str) -> GateCheck:
    if not math.isfinite(value):
        why = f"{what} undefined (the window needs both classes)"
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
    candidate_roc: float, stable_roc: float | str | None, *, max_regression: float
) -> GateCheck:
    """Pass when candidate ROC-AUC >= stable ROC-AUC - max_regression (same window).

    ``stable_roc`` is None when there is no stable model yet, or a string saying why the
    stable model could not be scored; neither blocks the candidate.
    """
    if stable_roc is None or isinstance(stable_roc, str):
        why = stable_roc or "no stable model: nothing to regress from"
        return GateCheck(
            name="noRegression",
            value=None,
            threshold=-max_regression,
            op=AT_LEAST,
            passed=True,
            detail=why,
        )
    delta = candidate_roc - stable_roc
    ok = delta >= -max_regression - _EPS
    return GateCheck(
        name="noRegression",
        value=delta,
        threshold=-max_regression,
        op=AT_LEAST,
        passed=ok,
        detail=f"ROC-AUC candidate {candidate_roc:.4f} vs stable {stable_roc:.4f} on the same "
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
    if rows <= 0 or data.empty:
        raise ValueError("latency needs at least one row and one call")
    x = features_matrix(data, schema)
    for i in range(_LATENCY_WARMUP):
        predict_proba(net, x[i % len(x) : i % len(x) + 1])
    times = np.empty(rows)
    for i in range(rows):
        row = x[i % len(x) : i % len(x) + 1]
        start = time.perf_counter()
        predict_proba(net, row)
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


def smoke_check(smoke: Callable[[], tuple[bool, str]] | None, *, required: bool) -> GateCheck:
    """Run the serving smoke test (v2 infer against a real server) if one is given."""
    what = "v2 infer answers 200 with [N] probabilities in [0, 1]"
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


def _stable_roc_auc(
    stable: FraudNet | None, *, data: pd.DataFrame, y: np.ndarray | None, schema: Schema
) -> float | str | None:
    if stable is None:
        return None
    scored = _score(stable, data, schema=schema)
    if isinstance(scored, str) or not np.isfinite(scored).all() or y is None:
        return "the stable model cannot be scored on the window: nothing to compare with"
    return evaluate.metrics(y, scored).roc_auc


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
