"""MetricsProvider without Prometheus: read the router's and the model servers' /metrics.

For a laptop running one router. Counters and histograms only mean something as increases
over a window, so the provider keeps the router scrapes it took, with their times, and answers
each query from the difference between now and the newest earlier scrape at least
``window_s`` old — or, while none is that old, the oldest one it has (a shorter window).

The first observe() has nothing earlier: it becomes the baseline and answers an empty window
(no requests, rates unknown). The rollout core holds such an analysis as "insufficient data"
and retries it; each retry's window then reaches back to that baseline. Gauges (prediction
PSI) are read as they are now; A/B outcomes come from the routers' ledgers, not from metrics
(turnout.core.observation.WithLedger). The quantile is computed from bucket increases with
the same interpolation as PromQL's histogram_quantile, so both providers agree on one histogram.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType

import httpx
from prometheus_client.parser import text_string_to_metric_families

from services.controller import queries
from turnout.core.observation import Metrics, MetricsQuery, MetricsUnavailable, VersionMetrics

log = logging.getLogger("turnout.controller")

Labels = tuple[tuple[str, str], ...]
#: (sample name, sorted labels) -> value
Samples = dict[tuple[str, Labels], float]

BUCKET = f"{queries.DURATION}_bucket"
#: The router samples whose increases the queries need; only these are kept between scrapes.
COUNTERS = frozenset({queries.CALLS, BUCKET, queries.AGREEMENT})
#: Scrapes kept at most, whatever the windows asked for.
MAX_HISTORY = 4096


def parse(text: str) -> Samples:
    """Every sample in a Prometheus text exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): float(s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def select(samples: Samples, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """The samples called ``name`` whose labels include ``labels``."""
    out = []
    for (sample, pairs), value in samples.items():
        if sample == name:
            have = dict(pairs)
            if all(have.get(k) == v for k, v in labels.items()):
                out.append((have, value))
    return out


def increase(before: Samples, after: Samples) -> Samples:
    """Per-series increase; a series that went down was reset and counts from zero."""
    out = {}
    for key, value in after.items():
        prev = before.get(key, 0.0)
        out[key] = value - prev if value >= prev else value
    return out


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """PromQL's histogram_quantile on (upper bound, cumulative count) pairs; NaN without data.

    Linear interpolation inside the bucket holding the rank, the first bucket starting at 0,
    and the upper bound of the last finite bucket when the rank falls in +Inf.
    """
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    merged: dict[float, float] = {}
    for upper, count in buckets:
        merged[upper] = merged.get(upper, 0.0) + count
    ordered = sorted(merged.items())
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return math.nan
    counts: list[float] = []
    for _, count in ordered:  # cumulative counts never go down (as Prometheus ensures)
        counts.append(max(count, counts[-1]) if counts else count)
    total = counts[-1]
    if total == 0:
        return math.nan
    rank = q * total
    b = next(i for i, c in enumerate(counts) if c >= rank)
    if b == len(ordered) - 1:
        return ordered[-2][0]
    if b == 0 and ordered[0][0] <= 0:
        return ordered[0][0]
    start, end, count = 0.0, ordered[b][0], counts[b]
    if b > 0:
        start = ordered[b - 1][0]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    if count == 0:  # q == 0 on an empty first bucket: Go's 0/0, NaN
        return math.nan
    return start + (end - start) * (rank / count)


class ScrapeProvider:
    def __init__(
        self,
        router_url: str,
        servers: Callable[[], Mapping[str, str]],
        *,
        timeout: float = 5.0,
        min_drift_rows: int = queries.MIN_DRIFT_ROWS,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``servers()`` maps each served version to its model server's base URL."""
        self.router_url = router_url.rstrip("/")
        self.servers = servers
        self.min_drift_rows = min_drift_rows
        self._clock = clock
        self._client = httpx.Client(timeout=timeout, transport=transport)
        self._history: deque[tuple[float, Samples]] = deque()
        self._longest_window = 0.0

    def observe(self, query: MetricsQuery) -> Metrics:
        now = self._clock()
        current = self._scrape(self.router_url)
        base = self._baseline(now, query.window_s)
        self._remember(now, current, query.window_s)
        delta = increase(base if base is not None else current, current)
        model = query.model
        servers = self.servers()
        scraped: dict[str, Samples | None] = {}

        def version(variant: str, name: str) -> VersionMetrics:
            calls = select(delta, queries.CALLS, model=model, variant=variant, version=name)
            total = sum(v for _, v in calls)
            failed = sum(v for labels, v in calls if labels.get("result") == "error")
            buckets = [
                (float(labels["le"]), v)
                for labels, v in select(delta, BUCKET, model=model, variant=variant, version=name)
            ]
            p99 = histogram_quantile(0.99, buckets) * 1000
            return VersionMetrics(
                requests=total,
                error_rate=failed / total if total > 0 else None,
                p99_ms=p99 if math.isfinite(p99) else None,
                prediction_psi=self._psi(model, name, servers.get(name), scraped),
            )

        agreement = select(delta, queries.AGREEMENT, model=model)
        compared = sum(v for _, v in agreement)
        agreed = sum(v for labels, v in agreement if labels.get("agree") == "true")
        return Metrics(
            stable=version("stable", query.stable_version),
            candidate=version(query.candidate_variant, query.candidate_version),
            shadow_agreement=agreed / compared if compared > 0 else None,
            shadow_compared=compared,
        )

    def _baseline(self, now: float, window_s: float) -> Samples | None:
        """The newest scrape at least ``window_s`` old, else the oldest kept (None: no scrape)."""
        chosen = None
        for taken, samples in self._history:
            if chosen is not None and now - taken < window_s:
                break
            chosen = samples
        return chosen

    def _remember(self, now: float, samples: Samples, window_s: float) -> None:
        self._longest_window = max(self._longest_window, window_s)
        self._history.append((now, {k: v for k, v in samples.items() if k[0] in COUNTERS}))
        # The oldest scrape is no longer needed once the next one covers the longest window.
        while len(self._history) > 1 and (
            now - self._history[1][0] >= self._longest_window or len(self._history) > MAX_HISTORY
        ):
            self._history.popleft()

    def _psi(
        self, model: str, version: str, url: str | None, scraped: dict[str, Samples | None]
    ) -> float | None:
        """The version's prediction PSI, if its drift window holds enough rows.

        Best effort: a server that cannot be scraped has no PSI (None), like a target that
        Prometheus could not scrape; its calls still show in the router's numbers.
        """
        if url is None:
            return None
        if url not in scraped:
            try:
                scraped[url] = self._scrape(url.rstrip("/"))
            except MetricsUnavailable as exc:
                log.warning("no prediction PSI for %s: %s", version, exc)
                scraped[url] = None
        samples = scraped[url]
        if samples is None:
            return None
        rows = {
            tuple(sorted(labels.items())): value
            for labels, value in select(samples, queries.DRIFT_ROWS, model=model, version=version)
        }
        values = [
            value
            for labels, value in select(samples, queries.PSI, model=model, version=version)
            if rows.get(tuple(sorted(labels.items())), 0.0) >= self.min_drift_rows
            and math.isfinite(value)
        ]
        return max(values) if values else None

    def _scrape(self, base_url: str) -> Samples:
        url = f"{base_url}/metrics"
        try:
            resp = self._client.get(url)
        except httpx.HTTPError as exc:
            raise MetricsUnavailable(
                f"cannot scrape {url}: {type(exc).__name__}: {exc}".rstrip(": ")
            ) from exc
        if resp.status_code != 200:
            raise MetricsUnavailable(f"cannot scrape {url}: HTTP {resp.status_code}")
        try:
            return parse(resp.text)
        except ValueError as exc:
            raise MetricsUnavailable(f"cannot parse {url}: {exc}") from exc

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ScrapeProvider:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
