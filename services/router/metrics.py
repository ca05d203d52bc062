"""The router's Prometheus metrics, in a registry of their own: each Router (tests build
several in one process) exports only its own series.

``turnout_router_upstream_*`` count and time every inference attempt on a version, shadow
copies included (a candidate call retried on stable is two attempts), so the controller's
error-rate and latency checks (services/controller/queries.py) see candidate failures that the
caller never saw.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Per-attempt latency: fine from 0.5 ms to 100 ms, where p99 checks of a model server live.
UPSTREAM_BUCKETS = (
    0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
    0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
DIFF_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
AB_STATS = ("count", "sum", "sumsq")
AB_ARMS = ("stable", "candidate")


@dataclass(frozen=True)
class Upstream:
    """The labelled children for one (model, variant, version): resolved once, not per call."""

    ok: Counter
    error: Counter
    duration: Histogram


@dataclass(frozen=True)
class Answered:
    """The children for requests answered as one (model, variant, version, code)."""

    requests: Counter
    duration: Histogram


@dataclass(frozen=True)
class Comparisons:
    """One model's children for compared shadow replies: rows by agreement, differences."""

    agree: Counter
    disagree: Counter
    abs_diff: Histogram


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "turnout_router_requests",
            "Requests answered, by model, variant, version and HTTP status",
            ["model", "variant", "version", "code"],
            registry=r,
        )
        self.duration = Histogram(
            "turnout_router_request_duration_seconds",
            "Time from request to reply, including retries",
            ["model", "variant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_calls = Counter(
            "turnout_router_upstream_calls",
            "Upstream attempts by model, variant (stable, candidate, shadow), version and result"
            " (error: 5xx, timeout or unreachable; a 4xx is the caller's and counts ok)",
            ["model", "variant", "version", "result"],
            registry=r,
        )
        self.upstream_duration = Histogram(
            "turnout_router_upstream_duration_seconds",
            "Time of one upstream attempt, by model, variant and version",
            ["model", "variant", "version"],
            buckets=UPSTREAM_BUCKETS,
            registry=r,
        )
        self._upstreams: dict[tuple[str, str, str], Upstream] = {}
        self._answered: dict[tuple[str, str, str, int], Answered] = {}
        self._shadow_results: dict[tuple[str, str], Counter] = {}
        self._comparisons: dict[str, Comparisons] = {}
        self.fallbacks = Counter(
            "turnout_router_fallbacks",
            "Requests answered by the fallback after every version failed",
            ["model"],
            registry=r,
        )
        self.retries = Counter(
            "turnout_router_retries",
            "Failed candidate calls retried on stable",
            ["model", "reason"],
            registry=r,
        )
        self.shadow_requests = Counter(
            "turnout_shadow_requests",
            "Mirrored requests by result (ok, error, timeout, dropped when in-flight is full;"
            " unreadable or shape_mismatch when the replies could not be compared)",
            ["model", "result"],
            registry=r,
        )
        self.shadow_agreement = Counter(
            "turnout_shadow_agreement",
            "Rows where the shadow's reply agreed with the primary's, as the model's comparison"
            " says (Binary: same side of the threshold, MultiClass: same top class, Regression:"
            " within the tolerance, Exact: identical)",
            ["model", "agree"],
            registry=r,
        )
        self.shadow_abs_diff = Histogram(
            "turnout_shadow_abs_diff",
            "Difference between shadow and primary, per row: absolute (Binary, Regression),"
            " total variation between class scores (MultiClass), 0 or 1 (Exact)",
            ["model"],
            buckets=DIFF_BUCKETS,
            registry=r,
        )
        self.ab_outcomes = Gauge(
            "turnout_ab_outcomes",
            "A/B feedback sufficient statistics per arm: count, sum and sum of squares",
            ["model", "arm", "stat"],
            registry=r,
        )
        self.table_loaded = Gauge(
            "turnout_router_routes_loaded_timestamp_seconds",
            "When the active route table was loaded",
            registry=r,
        )
        self.table_errors = Counter(
            "turnout_router_route_errors",
            "Route tables rejected (the previous one kept serving)",
            registry=r,
        )

    def upstream(self, model: str, variant: str, version: str) -> Upstream:
        """The children for one upstream; created (at zero) on first use, then cached."""
        key = (model, variant, version)
        found = self._upstreams.get(key)
        if found is None:
            found = self._upstreams[key] = Upstream(
                ok=self.upstream_calls.labels(model, variant, version, "ok"),
                error=self.upstream_calls.labels(model, variant, version, "error"),
                duration=self.upstream_duration.labels(model, variant, version),
            )
        return found

    def answered(self, model: str, variant: str, version: str, code: int) -> Answered:
        """The children for one kind of answer; created on first use, then cached (a label
        lookup takes a lock and builds tuples: too slow for every request)."""
        key = (model, variant, version, code)
        found = self._answered.get(key)
        if found is None:
            found = self._answered[key] = Answered(
                requests=self.requests.labels(model, variant, version, str(code)),
                duration=self.duration.labels(model, variant),
            )
        return found

    def shadow_result(self, model: str, result: str) -> Counter:
        """The count of a model's mirrored requests with ``result``, cached."""
        key = (model, result)
        found = self._shadow_results.get(key)
        if found is None:
            found = self._shadow_results[key] = self.shadow_requests.labels(model, result)
        return found

    def comparisons(self, model: str) -> Comparisons:
        """A model's comparison children, cached."""
        found = self._comparisons.get(model)
        if found is None:
            found = self._comparisons[model] = Comparisons(
                agree=self.shadow_agreement.labels(model, "true"),
                disagree=self.shadow_agreement.labels(model, "false"),
                abs_diff=self.shadow_abs_diff.labels(model),
            )
        return found

    def reset_ab(self, model: str) -> None:
        """Zero a model's A/B statistics: a new experiment starts from nothing."""
        for arm in AB_ARMS:
            for stat in AB_STATS:
                self.ab_outcomes.labels(model, arm, stat).set(0)
