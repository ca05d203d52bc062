"""The router's Prometheus metrics (DESIGN §5), in their own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
DIFF_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


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
            "Mirrored requests by result (ok, error, timeout, dropped when in-flight is full)",
            ["model", "result"],
            registry=r,
        )
        self.shadow_agreement = Counter(
            "turnout_shadow_agreement",
            "Rows whose shadow decision (score >= threshold) agreed with the primary's",
            ["model", "agree"],
            registry=r,
        )
        self.shadow_abs_diff = Histogram(
            "turnout_shadow_abs_diff",
            "Absolute difference between shadow and primary scores, per row",
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
