"""The validation gate: a good model passes every check, and each check catches its own failure.

Bad models are real networks: NaN weights, one trained on shuffled labels, an under-trained
one, and FraudNet subclasses sharing the good model's weights but inverting one merchant
category, sleeping on every call, or answering a constant.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from training.data import FRAUD_SCHEMA, MERCHANT_CATEGORIES, generate
from training.gate import (
    GateCheck,
    GateReport,
    GateThresholds,
    output_checks,
    regression_check,
    run_gate,
)
from training.model import FraudNet
from training.train import TrainParams, train

CATEGORY_COL = FRAUD_SCHEMA.names.index("merchant_category")
#: Checks a reasonable model passes whatever else is wrong with it.
STABILITY = ("finiteWeights", "finiteOutputs", "outputsInRange", "notConstant")
#: The default thresholds with a latency budget a busy test machine always meets: latency has
#: its own tests, and a scheduling hiccup must not fail the others.
RELAXED = GateThresholds(max_latency_ms=250.0)


@pytest.fixture(scope="module")
def good(trained):
    return trained[0]


@pytest.fixture(scope="module")
def window():
    """The newest labelled window: a day later, another seed."""
    return generate(5000, seed=1, day=1)


def gate(net, *, data, good, stable=None, thresholds=None, **kw):
    """run_gate with a passing smoke test and reproduction unless a test says otherwise."""
    kw.setdefault("serve_smoke", lambda: (True, "v2 infer ok"))
    kw.setdefault("reproduce", lambda: good.weights_sha256)
    kw.setdefault("weights_sha256", good.weights_sha256)
    kw.setdefault("baseline_roc_auc", good.baseline_metrics["roc_auc"])
    return run_gate(
        net,
        candidate_name="fraud:v2",
        data=data,
        stable=stable,
        thresholds=thresholds or RELAXED,
        **kw,
    )


def failed(report: GateReport) -> set[str]:
    return {c.name for c in report.failed()}


class SharedWeights(FraudNet):
    """The good model's weights behind a different forward."""

    def __init__(self, good) -> None:
        super().__init__(good.arch)
        self.load_state_dict(good.net.state_dict())
        self.eval()


class InvertedOnSlice(SharedWeights):
    """Ranks one merchant category upside down; every other category as the good model."""

    def __init__(self, good, category: str) -> None:
        super().__init__(good)
        self.code = MERCHANT_CATEGORIES.index(category)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        return torch.where(x[:, CATEGORY_COL] == self.code, -logits, logits)


class Slow(SharedWeights):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.03)
        return super().forward(x)


class Constant(SharedWeights):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(x))


# --- the good model ----------------------------------------------------------------------


def test_good_model_passes_every_check(good, window, fraud_data) -> None:
    report = gate(
        good.net,
        data=window,
        good=good,
        stable=good.net,
        train_data=fraud_data,
        baseline_roc_auc=None,
        thresholds=GateThresholds(),
    )
    assert report.passed, report.to_markdown()
    names = [c.name for c in report.checks]
    for name in (
        *STABILITY,
        "rocAuc",
        "prAuc",
        "noRegression",
        "beatsBaseline",
        "latencyP99Ms",
        "servingSmoke",
        "reproducible",
    ):
        assert name in names
    slices = [c for c in report.checks if c.name.startswith("slice[")]
    assert {c.name for c in slices} == {f"slice[{n}].rocAuc" for n in MERCHANT_CATEGORIES}
    # The baseline was trained inside the gate on the same split as the model.
    margin = report.check("beatsBaseline")
    assert 0 < margin.value < 0.1 and "logistic-regression baseline" in margin.detail


def test_small_or_one_class_slices_are_skipped_not_failed(good, window) -> None:
    report = gate(good.net, data=window, good=good)
    gambling = report.check("slice[gambling].rocAuc")  # 137 rows in this window
    assert gambling.skipped and gambling.passed and "fewer than 200 rows" in gambling.detail
    atm = report.check("slice[atm_cash].rocAuc")  # 436 rows, 2 fraud
    assert atm.skipped and atm.passed and "2 fraud" in atm.detail
    assert report.check("slice[grocery].rocAuc").skipped is False


# --- each check catches its own failure --------------------------------------------------


def test_nan_weights_fail_stability_and_every_metric_without_raising(good, window) -> None:
    broken = copy.deepcopy(good.net)
    with torch.no_grad():
        broken.mlp[0].weight[0, 0] = float("nan")
    report = gate(broken, data=window, good=good, stable=good.net)
    assert {"finiteWeights", "finiteOutputs", "rocAuc", "prAuc"} <= failed(report)
    weights = report.check("finiteWeights")
    assert weights.value == 1 and "'mlp.0.weight'" in weights.detail
    assert report.check("finiteOutputs").value == len(window)
    assert "NaN or infinite" in report.check("rocAuc").detail
    assert report.check("rocAuc").value is None


def test_worse_model_fails_floors_and_regression(good, window, fraud_data) -> None:
    shuffled = fraud_data.copy()
    shuffled["is_fraud"] = np.random.default_rng(0).permutation(shuffled["is_fraud"].to_numpy())
    worse = train(shuffled, seed=0, params=TrainParams(max_epochs=3)).net
    report = gate(worse, data=window, good=good, stable=good.net)
    assert {"rocAuc", "prAuc", "noRegression"} <= failed(report)
    assert not set(STABILITY) & failed(report)
    regression = report.check("noRegression")
    assert regression.value < -0.3 and regression.threshold == -0.01
    assert "vs stable 0.97" in regression.detail


def test_model_below_the_baseline_fails_only_that(good, window, fraud_data) -> None:
    # Under-trained (tiny, 4 epochs): above the metric floors, below logistic regression.
    weak = train(fraud_data, seed=0, params=TrainParams(hidden=(8,), max_epochs=4)).net
    report = gate(weak, data=window, good=good, train_data=fraud_data, baseline_roc_auc=None)
    assert failed(report) == {"beatsBaseline"}, report.to_markdown()
    assert report.check("beatsBaseline").value < -0.01


def test_given_baseline_is_used_and_a_missing_one_fails(good, window) -> None:
    above = gate(good.net, data=window, good=good, baseline_roc_auc=0.99)
    assert failed(above) == {"beatsBaseline"}
    missing = gate(good.net, data=window, good=good, baseline_roc_auc=None)
    assert failed(missing) == {"beatsBaseline"}
    assert "give baseline_roc_auc or train_data" in missing.check("beatsBaseline").detail


def test_model_bad_on_one_slice_fails_that_slice(good, window) -> None:
    report = gate(InvertedOnSlice(good, "grocery"), data=window, good=good)
    grocery = report.check("slice[grocery].rocAuc")
    assert not grocery.passed and grocery.value < 0.1
    slices = {c.name for c in report.failed() if c.name.startswith("slice[")}
    assert slices == {"slice[grocery].rocAuc"}
    assert report.check("slice[fuel].rocAuc").passed


def test_slow_model_fails_the_latency_budget(good, window) -> None:
    thresholds = GateThresholds(latency_rows=10)
    report = gate(Slow(good), data=window, good=good, thresholds=thresholds)
    assert failed(report) == {"latencyP99Ms"}
    latency = report.check("latencyP99Ms")
    assert latency.value >= 30 and latency.threshold == 20.0
    assert "over 10 in-process calls" in latency.detail


def test_non_reproducible_training_fails(good, window) -> None:
    other = "f" * 64
    report = gate(good.net, data=window, good=good, reproduce=lambda: other)
    assert failed(report) == {"reproducible"}
    check = report.check("reproducible")
    assert check.value == other and check.threshold == good.weights_sha256
    assert f"gave weights ffffffffffff, not {good.weights_sha256[:12]}" in check.detail


def test_a_crashing_reproduction_or_smoke_test_fails_with_the_reason(good, window) -> None:
    def boom() -> str:
        raise RuntimeError("out of disk")

    def smoke() -> tuple[bool, str]:
        raise OSError("port in use")

    report = gate(good.net, data=window, good=good, reproduce=boom, serve_smoke=smoke)
    assert failed(report) == {"reproducible", "servingSmoke"}
    assert "RuntimeError: out of disk" in report.check("reproducible").detail
    assert "OSError: port in use" in report.check("servingSmoke").detail


def test_failed_smoke_test_fails_with_its_message(good, window) -> None:
    report = gate(
        good.net, data=window, good=good, serve_smoke=lambda: (False, "v2 infer answered 500")
    )
    assert failed(report) == {"servingSmoke"}
    assert report.check("servingSmoke").detail == "v2 infer answered 500"


@pytest.mark.parametrize("required", [True, False])
def test_checks_not_run_fail_only_when_required(good, window, required: bool) -> None:
    thresholds = replace(RELAXED, require_serving_smoke=required, require_reproducible=required)
    report = gate(
        good.net, data=window, good=good, thresholds=thresholds, serve_smoke=None, reproduce=None
    )
    for name in ("servingSmoke", "reproducible"):
        check = report.check(name)
        assert check.passed is not required and check.skipped is not required
        assert check.detail.startswith("not run")
    assert report.passed is not required


def test_constant_outputs_fail(good, window) -> None:
    report = gate(Constant(good), data=window, good=good)
    assert {"notConstant", "rocAuc"} <= failed(report)
    assert report.check("notConstant").value == 0.0


@pytest.mark.parametrize(
    ("scores", "bad"),
    [
        ([0.1, 0.2, 0.9], set()),
        ([0.1, 1.2, 0.9], {"outputsInRange"}),
        ([-0.1, 0.5, 0.9], {"outputsInRange"}),
        ([0.1, float("nan"), 0.9], {"finiteOutputs"}),
        ([0.1, float("inf"), 0.9], {"finiteOutputs"}),  # counted once, not as out of range
        ([0.3, 0.3, 0.3], {"notConstant"}),
        ([float("nan")] * 3, {"finiteOutputs", "outputsInRange", "notConstant"}),
    ],
)
def test_output_checks(scores: list[float], bad: set[str]) -> None:
    checks = output_checks(np.array(scores), min_std=1e-6)
    assert [c.name for c in checks] == ["finiteOutputs", "outputsInRange", "notConstant"]
    assert {c.name for c in checks if not c.passed} == bad


@pytest.mark.parametrize(
    ("candidate", "stable", "passed"),
    [(0.95, 0.955, True), (0.95, 0.96, True), (0.95, 0.9601, False), (0.97, 0.90, True)],
)
def test_regression_tolerance(candidate: float, stable: float, passed: bool) -> None:
    check = regression_check(candidate, stable, max_regression=0.01)
    assert check.passed is passed
    assert check.value == pytest.approx(candidate - stable)


def test_first_model_has_nothing_to_regress_from() -> None:
    check = regression_check(0.9, None, max_regression=0.01)
    assert check.passed and "no stable model" in check.detail


def test_window_with_one_class_fails_the_metrics_clearly(good, window) -> None:
    clean = window[window["is_fraud"] == 0]
    report = gate(good.net, data=clean, good=good, stable=good.net)
    assert {"rocAuc", "prAuc", "noRegression", "beatsBaseline"} <= failed(report)
    assert "only one class" in report.check("rocAuc").detail


# --- the report ------------------------------------------------------------------------


def test_report_json_and_markdown_carry_each_number_and_threshold(good, window) -> None:
    weak = copy.deepcopy(good.net)
    with torch.no_grad():
        weak.mlp[-1].bias.fill_(float("nan"))
    report = gate(weak, data=window, good=good, stable=good.net)
    doc = report.to_dict()
    text = json.dumps(doc, allow_nan=False)  # strict JSON: no NaN anywhere
    assert GateReport.from_dict(json.loads(text)) == report
    assert doc["passed"] is False and "finiteWeights" in doc["failed"]

    good_report = gate(good.net, data=window, good=good)
    md = good_report.to_markdown()
    assert md.startswith("## Validation gate for fraud:v2: passed\n")
    roc = good_report.check("rocAuc")
    assert f"| rocAuc | {roc.value:.4f} | >= 0.8000 | pass |" in md
    latency = good_report.check("latencyP99Ms")
    assert f"| latencyP99Ms | {latency.value:.4f} | <= 250.0000 | pass |" in md
    assert f"| notConstant | {good_report.check('notConstant').value:.4f} | > 1e-06 |" in md
    assert f"| reproducible | {good.weights_sha256[:12]} | == {good.weights_sha256[:12]} |" in md
    for check in good_report.checks:
        assert f"| {check.name} |" in md
    assert md.count("\n") == len(good_report.checks) + 4
    entry = good_report.to_dict()["checks"][4]
    assert entry == {
        "name": "rocAuc",
        "value": roc.value,
        "threshold": 0.8,
        "op": ">=",
        "passed": True,
        "skipped": False,
        "detail": roc.detail,
    }


def test_report_summary_names_the_failed_checks() -> None:
    report = GateReport(
        model="fraud:v3",
        checks=(
            GateCheck(name="rocAuc", value=0.6, threshold=0.8, passed=False, op=">="),
            GateCheck(name="prAuc", value=0.4, threshold=0.3, passed=True, op=">="),
        ),
    )
    assert report.summary() == "gate FAILED for fraud:v3: 1 of 2 (rocAuc)"
    assert "| rocAuc | 0.6000 | >= 0.8000 | FAIL |" in report.to_markdown()
    assert not GateReport(model="x", checks=()).passed


def test_thresholds_round_trip_and_reject_unknown_names() -> None:
    t = GateThresholds(min_roc_auc=0.9, latency_rows=50)
    assert GateThresholds.from_dict(t.to_dict()) == t
    with pytest.raises(ValueError, match="min_rocauc"):
        GateThresholds.from_dict({"min_rocauc": 0.9})
