"""MetricsProvider on the Prometheus HTTP API: the queries in queries.py, answered by
``GET /api/v1/query``. Used in the cluster, and locally when the platform runs a Prometheus
(turnout/cli/prometheus_server.py). A/B outcomes are not metrics: they come from the routers'
ledgers (turnout.core.observation.WithLedger).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import httpx

from services.controller import queries
from turnout.core.observation import Metrics, MetricsQuery, MetricsUnavailable, VersionMetrics


class PrometheusProvider:
    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 5.0,
        scrape_interval_s: float = 15.0,
        min_drift_rows: int = queries.MIN_DRIFT_ROWS,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``scrape_interval_s`` is the interval Prometheus scrapes the router at: windows
        shorter than four of them are widened (queries.window)."""
        self.base_url = base_url.rstrip("/")
        self.scrape_interval_s = scrape_interval_s
        self.min_drift_rows = min_drift_rows
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

    def observe(self, query: MetricsQuery) -> Metrics:
        window = queries.window(query.window_s, scrape_interval_s=self.scrape_interval_s)
        at = time.time()  # one evaluation instant: every number describes the same window
        model = query.model

        def version(variant: str, name: str) -> VersionMetrics:
            return VersionMetrics(
                requests=self._value(queries.requests(model, variant, name, window), at) or 0.0,
                error_rate=self._value(queries.error_rate(model, variant, name, window), at),
                p99_ms=self._value(queries.p99_ms(model, variant, name, window), at),
                prediction_psi=self._value(
                    queries.prediction_psi(model, name, min_rows=self.min_drift_rows), at
                ),
            )

        return Metrics(
            stable=version("stable", query.stable_version),
            candidate=version(query.candidate_variant, query.candidate_version),
            shadow_agreement=self._value(queries.shadow_agreement(model, window), at),
            shadow_compared=self._value(queries.shadow_compared(model, window), at) or 0.0,
        )

    def _value(self, expr: str, at: float) -> float | None:
        """The query's single value; None when it has none or it is not a number (NaN)."""
        result = self._query(expr, at)
        if not result:
            return None
        value = result[0][1]
        return value if math.isfinite(value) else None

    def _query(self, expr: str, at: float) -> list[tuple[Mapping[str, str], float]]:
        try:
            resp = self._client.get("/api/v1/query", params={"query": expr, "time": f"{at:.3f}"})
        except httpx.HTTPError as exc:
            raise MetricsUnavailable(
                f"Prometheus at {self.base_url} did not answer: {type(exc).__name__}: {exc}"
            ) from exc
        try:
            doc: Any = resp.json()
        except ValueError:
            doc = None
        if resp.status_code != 200 or not isinstance(doc, dict) or doc.get("status") != "success":
            why = doc.get("error") if isinstance(doc, dict) else resp.text[:200]
            raise MetricsUnavailable(
                f"Prometheus at {self.base_url} answered {resp.status_code} to {expr!r}: {why}"
            )
        data = doc["data"]
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> PrometheusProvider:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
