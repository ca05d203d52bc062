"""The chart's alerts and dashboard, checked with promtool (Debian package `prometheus`).

The PrometheusRule's groups go to a rules file: `promtool check rules` parses every
expression and annotation template, and `promtool test rules` (alerts_test.yaml) shows each
alert firing on a bad series and staying quiet on a healthy one. Every metric the alerts and
the dashboard query must be one the router, the model servers or the operator exports.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.router.metrics import RouterMetrics
from tests.k8s.conftest import CHART, ROOT, Render, run

HERE = Path(__file__).parent
ALERT_TESTS = HERE / "alerts_test.yaml"
ENABLED = ("--set", "metrics.prometheusRule.enabled=true")
ALERTS = {
    "TurnoutCandidateErrorRateHigh",
    "TurnoutLatencyP99High",
    "TurnoutPredictionDrift",
    "TurnoutFeatureDrift",
    "TurnoutRolloutFailed",
}
#: The operator's metrics (services/controller): the alerts and the dashboard rely on them.
OPERATOR_METRICS = {
    "turnout_rollouts_total",
    "turnout_modeldeployment_phase",
    "turnout_modeldeployment_candidate_weight",
}


@pytest.fixture(scope="session")
def promtool() -> Path:
    found = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(found).is_file():
        pytest.fail("promtool is missing: run `make prometheus`", pytrace=False)
    return Path(found)


def prometheus_rule(render: Render, *args: str) -> dict[str, Any]:
    [rule] = [o for o in render(*ENABLED, *args) if o["kind"] == "PrometheusRule"]
    return rule


def rules_of(rule: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def write_rules(path: Path, rule: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


def exported_metrics() -> set[str]:
    """Series names the router, the model servers and the operator export."""
    names = set(OPERATOR_METRICS)
    for family in RouterMetrics().registry.collect():
        suffixes = {
            "counter": ["_total"],
            "histogram": ["_bucket", "_sum", "_count"],
        }.get(family.type, [""])
        names |= {family.name + s for s in suffixes}
    monitor = (ROOT / "sdk" / "turnout_sdk" / "monitor.py").read_text()
    names |= set(re.findall(r'name="(turnout_model_[a-z_]+)"', monitor))
    return names


def queried_metrics(expr: str) -> set[str]:
    return set(re.findall(r"\bturnout_[a-z0-9_]+\b", expr))


# --- the alerts -----------------------------------------------------------------------------


@pytest.mark.parametrize("values_file", [None, "monitoring-values.yaml"], ids=str)
def test_rules_pass_promtool_check(
    render: Render, promtool: Path, tmp_path: Path, values_file: str | None
) -> None:
    args = [] if values_file is None else ["-f", str(CHART / "ci" / values_file)]
    path = write_rules(tmp_path / "rules.yaml", prometheus_rule(render, *args))
    out = run(promtool, "check", "rules", path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 5 rules found" in out.stdout


def test_each_alert_fires_on_bad_series_and_not_on_healthy_ones(
    render: Render, promtool: Path, tmp_path: Path
) -> None:
    rule = copy.deepcopy(prometheus_rule(render))
    for r in rules_of(rule):
        del r["annotations"]["description"]  # long prose; its templating is checked above
    write_rules(tmp_path / "rules.yaml", rule)
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
    out = run(promtool, "test", "rules", tmp_path / ALERT_TESTS.name)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_firing_and_a_quiet_case(render: Render) -> None:
    alerts = {r["alert"] for r in rules_of(prometheus_rule(render))}
    assert alerts == ALERTS
    cases = [
        case
        for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    assert {c["alertname"] for c in cases if c["exp_alerts"]} == alerts
    assert {c["alertname"] for c in cases if not c["exp_alerts"]} == alerts


def test_alerts_say_what_is_wrong_and_how_bad(render: Render) -> None:
    for r in rules_of(prometheus_rule(render)):
        labels = r["annotations"]["summary"] + r["annotations"]["description"]
        subject = (
            ("$labels.namespace", "$labels.name")
            if "rollouts" in r["expr"]
            else (
                "$labels.model",
                "$labels.version",
            )
        )
        assert all(s in labels for s in subject), r["alert"]
        if "rollouts" not in r["expr"]:
            assert "$value" in r["annotations"]["summary"], r["alert"]
            assert re.fullmatch(r"\d+m", r["for"]), r["alert"]
        assert r["labels"]["severity"] in ("critical", "warning"), r["alert"]


def test_thresholds_and_durations_come_from_values(render: Render) -> None:
    base = "metrics.prometheusRule.alerts"
    rule = prometheus_rule(
        render,
        "--set",
        f"{base}.candidateErrorRate.threshold=0.1",
        "--set",
        f"{base}.candidateErrorRate.for=7m",
        "--set",
        f"{base}.latencyP99.thresholdMs=400",
        "--set",
        f"{base}.featureDrift.severity=critical",
        "--set",
        f"{base}.rolloutFailed.window=1h",
    )
    by_name = {r["alert"]: r for r in rules_of(rule)}
    errors = by_name["TurnoutCandidateErrorRateHigh"]
    assert errors["expr"].endswith("> 0.1") and errors["for"] == "7m"
    assert by_name["TurnoutLatencyP99High"]["expr"].endswith("> 400")
    assert by_name["TurnoutFeatureDrift"]["labels"]["severity"] == "critical"
    assert "[1h]" in by_name["TurnoutRolloutFailed"]["expr"]


def test_alerts_query_metrics_that_exist(render: Render) -> None:
    exported = exported_metrics()
    for r in rules_of(prometheus_rule(render)):
        assert queried_metrics(r["expr"]) <= exported, r["alert"]


# --- the dashboard --------------------------------------------------------------------------

DASHBOARD = CHART / "files" / "dashboard.json"
# Grafana variables, replaced by values promtool can parse.
VARIABLES = {"$__rate_interval": "5m", "$model": ".*", "$deployment": ".*"}


def dashboard_targets() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def test_dashboard_has_the_panels_an_operator_looks_for() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = {p["title"] for p in dashboard["panels"]}
    assert {
        "Requests/s by version and variant",
        "Error rate by version",
        "p99 latency by version",
        "Candidate weight",
        "Rollout phase",
        "Shadow agreement",
        "Prediction PSI",
        "Feature PSI",
    } <= titles
    assert dashboard["uid"] == "turnout"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_every_dashboard_query_parses(promtool: Path, tmp_path: Path) -> None:
    rules = []
    for i, (title, expr) in enumerate(dashboard_targets()):
        for variable, value in VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"{title}: unknown variable in {expr}"
        rules.append({"record": f"turnout:dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = run(promtool, "check", "rules", path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dashboard_queries_metrics_that_exist() -> None:
    exported = exported_metrics()
    for title, expr in dashboard_targets():
        assert queried_metrics(expr) <= exported, title
