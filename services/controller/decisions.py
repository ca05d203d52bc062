"""Deciding and telling one pass: what both controllers do the same way.

The operator (cluster.py) and the laptop's loop (local.py) fetch and apply differently — the
Kubernetes API, files — but in between they do one thing: read metrics when an analysis is
due, call the pure ``decide()`` with what the ``turnout.dev/action`` annotation asks for, and
say what was decided. Both call the functions here, so a promote or abort, and the line it
leaves in the log, mean the same in both.

The process log is for someone reading ``kubectl logs`` or ``$TURNOUT_HOME/logs/
controller.log``: one line per decision (phase, weight, failed check, rollback, promotion)
with its reason and numbers. httpx logs every request at INFO — each PromQL query, scrape and
readiness probe — so the controller processes raise it to WARNING (``configure_logging``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime

from turnout.core import ab_ledger, rollout
from turnout.core.ab_ledger import LedgerKeeper, LedgerUnavailable
from turnout.core.observation import MetricsProvider, observe
from turnout.core.rollout import Decision
from turnout.core.spec import (
    ACTION_ANNOTATION,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    action_of,
)

#: Loggers that write a line per HTTP request at INFO.
REQUEST_LOGGERS = ("httpx", "httpcore")


def configure_logging(*, fmt: str, quiet: Iterable[str] = ()) -> None:
    """INFO to stdout for a controller process, without a line per HTTP request (and without
    the other ``quiet`` loggers' INFO lines)."""
    logging.basicConfig(level=logging.INFO, format=fmt, stream=sys.stdout)
    for name in (*REQUEST_LOGGERS, *quiet):
        logging.getLogger(name).setLevel(logging.WARNING)


def decide(
    metrics: MetricsProvider,
    *,
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    endpoints: Mapping[str, str],
    now: datetime,
    generation: int,
    annotation: str | None,
) -> Decision:
    """The decision for one deployment: metrics are read only when an analysis is due, and an
    annotation that names no action is decided as none (``rollout.clears_action`` removes it)."""
    query = rollout.analysis_due(spec, status, now)
    observation = observe(metrics, query, endpoints=endpoints)
    return rollout.decide(
        spec, status, observation, now, generation=generation, action=action_of(annotation)
    )


def log_decision(
    log: logging.Logger,
    name: str,
    *,
    before: ModelDeploymentStatus,
    decision: Decision,
    annotation: str | None,
) -> None:
    """The decision's lines (``rollout.narrate``), after a refused annotation if any."""
    if annotation is not None and action_of(annotation) is None:
        log.error(
            "%s: ignoring %s=%r: expected promote or abort", name, ACTION_ANNOTATION, annotation
        )
    for type_, label, message in rollout.narrate(before, decision):
        log_event(log, name, type=type_, reason=label, message=message)


def log_event(log: logging.Logger, name: str, *, type: str, reason: str, message: str) -> None:
    """One line: ``fraud: StepPassed v2 5% -> 25%: errorRate 0 <= 0.01``; Warnings as such."""
    (log.warning if type == "Warning" else log.info)("%s: %s %s", name, reason, message)


def forget_finished_experiments(
    keeper: LedgerKeeper | None,
    log: logging.Logger,
    model: str,
    *,
    before: ModelDeploymentStatus,
    after: ModelDeploymentStatus,
) -> None:
    """When a pass starts an A/B test, the model's older ledgers go: the finished
    experiments' numbers are in status and events, and the last one's ledger was kept for an
    audit until now. A failure is logged; the next experiment's start tries again."""
    experiment = ab_ledger.started(model, before, after)
    if keeper is None or experiment is None:
        return
    try:
        gone = keeper.forget(model=model, keep=experiment)
    except LedgerUnavailable as exc:
        log.warning("%s: old A/B ledgers kept: %s", model, exc)
        return
    if gone:
        log.info("%s: removed the A/B ledgers of %d finished experiment(s)", model, len(gone))
