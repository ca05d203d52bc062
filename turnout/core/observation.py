"""What the controller measured: the input ``decide()`` judges, apart from how it was
measured, so the rollout core knows nothing of Prometheus or HTTP.

Metrics providers (Prometheus in a cluster and in integration tests, a direct scrape when no
Prometheus runs) fill these in; the rollout core only reads them. A value is ``None`` when
there was no data to compute it (no requests in the window, a drift window still filling).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from turnout.core import ab_ledger
from turnout.core.ab_ledger import LedgerReader, LedgerUnavailable
from turnout.core.stats import Moments


@dataclass(frozen=True)
class VersionMetrics:
    """One version's serving health over the analysis window."""

    #: Upstream calls the router made to this version in the window.
    requests: float = 0.0
    #: Share of those calls that failed (5xx, timeout, unreachable).
    error_rate: float | None = None
    #: 99th-percentile upstream latency, milliseconds.
    p99_ms: float | None = None
    #: PSI of the version's live predictions against its training reference.
    prediction_psi: float | None = None


@dataclass(frozen=True)
class Metrics:
    stable: VersionMetrics = field(default_factory=VersionMetrics)
    #: The candidate, whether it takes weighted traffic or mirrored (shadow) traffic.
    candidate: VersionMetrics = field(default_factory=VersionMetrics)
    #: Share of compared rows where shadow and primary made the same decision.
    shadow_agreement: float | None = None
    #: Rows compared between shadow and primary in the window.
    shadow_compared: float = 0.0
    #: A/B feedback sufficient statistics per arm ("stable", "candidate"), since the split began:
    #: every router replica's ledger merged (turnout.core.ab_ledger), each request once.
    ab: Mapping[str, Moments] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricsQuery:
    model: str
    stable_version: str
    candidate_version: str
    #: How the candidate is receiving traffic: weighted ("candidate") or mirrored ("shadow").
    candidate_variant: Literal["candidate", "shadow"]
    window_s: float
    #: The A/B experiment whose outcomes to read (turnout.core.ab_ledger.experiment_id);
    #: None when the rollout is no A/B test.
    experiment: str | None = None


class MetricsUnavailable(RuntimeError):
    """The provider could not answer (Prometheus down, a scrape failed); the step waits."""


class MetricsProvider(Protocol):
    def observe(self, query: MetricsQuery) -> Metrics: ...


@dataclass(frozen=True)
class Observation:
    """Everything ``decide()`` is told about the world at one moment."""

    #: Base URL of each version whose server is ready to take traffic.
    endpoints: Mapping[str, str] = field(default_factory=dict)
    #: Metrics for the analysis due now; None when no analysis was due or none could be read.
    metrics: Metrics | None = None
    #: Why metrics are missing when an analysis was due (the provider's error).
    metrics_error: str | None = None


def observe(
    provider: MetricsProvider, query: MetricsQuery | None, *, endpoints: Mapping[str, str]
) -> Observation:
    """What ``decide()`` is told: the ready endpoints, and the metrics when an analysis is due
    (``query``), or why they could not be read (the step then waits)."""
    if query is None:
        return Observation(endpoints=endpoints)
    try:
        return Observation(endpoints=endpoints, metrics=provider.observe(query))
    except (MetricsUnavailable, LedgerUnavailable) as exc:
        return Observation(endpoints=endpoints, metrics_error=str(exc))


class WithLedger:
    """A metrics provider whose A/B outcomes come from the routers' ledgers: ``ledger``'s
    records of the query's experiment, merged (each request once), over whatever ``metrics``
    said. The serving metrics stay the provider's (Prometheus, scrapes); the A/B verdict
    depends on the ledger only."""

    def __init__(self, metrics: MetricsProvider, ledger: LedgerReader) -> None:
        self.metrics = metrics
        self.ledger = ledger

    def observe(self, query: MetricsQuery) -> Metrics:
        found = self.metrics.observe(query)
        if query.experiment is None:
            return found
        ledgers = self.ledger.read(model=query.model, experiment=query.experiment)
        return replace(found, ab=ab_ledger.moments(ledgers))
