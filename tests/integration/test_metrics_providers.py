"""The numbers the controller acts on, read from a real router, model server and Prometheus.

One platform for the module: stable fraud:v1 (a real model server), a candidate that answers
after 40 ms and fails the requests whose id starts with ``fail-``, and v1 again as a 100%
shadow. Known traffic and feedback go through the router; then both providers must report
exactly what was sent: Prometheus through PromQL, the scrape provider from /metrics deltas. A/B
outcomes are no metric the decision reads: the controller takes them from the router's ledger
(WithLedger), which must hold exactly the outcomes sent.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from services.controller import queries
from services.controller.prometheus import PrometheusProvider
from services.controller.scrape import ScrapeProvider, histogram_quantile
from tests.servers import free_port, process, router, served
from training import store
from training.data import features_matrix, generate
from training.model import predict_proba
from turnout.cli import prometheus_server
from turnout.core.ab_ledger import experiment_id
from turnout.core.assign import Arm, assign
from turnout.core.observation import Metrics, MetricsQuery, MetricsUnavailable, WithLedger
from turnout.core.stats import Moments

slow = pytest.mark.slow

SCRAPE_INTERVAL_S = 0.5
CANDIDATE_DELAY_S = 0.04
REQUESTS = 240
FEEDBACK = 60
WINDOW_S = 120.0  # longer than the module runs: every window holds all of the traffic
CANARY = MetricsQuery("fraud", "v1", "slow", "candidate", WINDOW_S)
SHADOW = MetricsQuery("fraud", "v1", "v1", "shadow", WINDOW_S)
#: The canary's analysis as an A/B test's: the query names the experiment.
AB = replace(CANARY, experiment=experiment_id(model="fraud", candidate="slow", salt=""))
AB_GAUGE = "turnout_ab_outcomes"

#: The candidate: a v2 infer endpoint that answers 0.0 after a delay, or 500 when asked to.
FLAKY = """
import asyncio, sys
from aiohttp import web

delay = float(sys.argv[2])

async def infer(request):
    doc = await request.json()
    await asyncio.sleep(delay)
    if request.headers.get("x-request-id", "").startswith("fail-"):
        return web.json_response({"error": "injected failure"}, status=500)
    rows = int(doc["inputs"][0]["shape"][0])
    out = {"name": "probability", "datatype": "FP32", "shape": [rows], "data": [0.0] * rows}
    return web.json_response(
        {"model_name": "fraud", "model_version": "slow", "outputs": [out]},
        headers={"x-turnout-model-version": "slow"},
    )

async def ready(request):
    return web.Response(text="ok")

app = web.Application()
app.router.add_post("/v2/models/{name}/infer", infer)
app.router.add_get("/readyz", ready)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


@dataclass(frozen=True)
class Platform:
    router: str
    prometheus: str
    servers: dict[str, str]
    #: What was sent, counted on the test's side.
    expected: dict[str, Any]
    #: The scrape provider's answers, baselined before the traffic.
    scraped: dict[str, Metrics]
    #: The v1 server's own prediction PSI gauge after the traffic.
    psi: float
    #: The router's A/B ledger directory.
    ledger: Path


def _v2(x: np.ndarray) -> dict[str, Any]:
    tensor = {"name": "features", "shape": list(x.shape), "datatype": "FP32"}
    return {"inputs": [{**tensor, "data": x.ravel().tolist()}]}


def _metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` with ``labels`` in a /metrics text."""
    from services.controller.scrape import parse, select

    return sum(v for _, v in select(parse(text), name, **labels))


def _until(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Poll ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout}s for {what}")
        time.sleep(0.1)


def _prom(url: str, expr: str) -> float | None:
    doc = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5).json()
    result = doc["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def _scraped(url: str, expr: str, want: float) -> None:
    """Wait until Prometheus answers ``want`` to ``expr`` (its scrapes have caught up)."""
    _until(lambda: _prom(url, expr) == want, f"Prometheus to hold {expr} == {want}")


def _sent(expected: dict[str, Any], psi: float) -> dict[str, float]:
    """Every raw series the providers' numbers come from, summed, and its value once each
    increment the test caused has been scraped: the upstream calls by variant and result,
    their latency observations, the shadow comparisons, the A/B moments, and v1's PSI with
    the rows behind it (stable calls plus shadow copies)."""
    calls = queries.CALLS
    every = expected["stable_calls"] + expected["candidate_calls"] + REQUESTS
    ab = expected["ab"].values()
    return {
        f'sum({calls}{{variant="stable"}})': expected["stable_calls"],
        f'sum({calls}{{variant="candidate"}})': expected["candidate_calls"],
        f'sum({calls}{{variant="candidate",result="error"}})': expected["candidate_failed"],
        f'sum({calls}{{variant="shadow"}})': REQUESTS,
        f"sum({queries.DURATION}_count)": every,
        f"sum({queries.AGREEMENT})": REQUESTS,
        f'sum({AB_GAUGE}{{stat="count"}})': sum(m.n for m in ab),
        f'sum({AB_GAUGE}{{stat="sum"}})': sum(m.sum for m in ab),
        f'sum({AB_GAUGE}{{stat="sumsq"}})': sum(m.sumsq for m in ab),
        f"max({queries.PSI})": psi,
        f"sum({queries.DRIFT_ROWS})": expected["stable_calls"] + REQUESTS,
    }


@pytest.fixture(scope="module")
def prometheus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prometheus")


@pytest.fixture(scope="module")
def platform(trained, tmp_path_factory, prometheus_dir) -> Iterator[Platform]:
    tag = trained[1]
    flaky_port = free_port()
    flaky_url = f"http://127.0.0.1:{flaky_port}"
    flaky = process(
        [sys.executable, "-c", FLAKY, str(flaky_port), str(CANDIDATE_DELAY_S)],
        f"{flaky_url}/readyz",
        f"flaky-{flaky_port}.log",
    )
    v1_url, v1 = served(tag)
    routes = tmp_path_factory.mktemp("routes") / "routes.json"
    routes.write_text(
        json.dumps(
            {
                "models": {
                    "fraud": {
                        "stable": {"version": "v1", "url": v1_url},
                        "candidate": {"version": "slow", "url": flaky_url, "weight": 50},
                        "shadow": {"version": "v1", "url": v1_url, "percent": 100},
                    }
                }
            }
        )
    )
    ledger = tmp_path_factory.mktemp("ab")
    router_url, front = router(routes, "--ledger", str(ledger))
    servers = {"v1": v1_url, "slow": flaky_url}

    targets = prometheus_dir / "targets.json"
    prometheus_server.write_targets(targets, {"v1": v1_url})
    prometheus_server.write_config(
        prometheus_dir,
        router_url=router_url,
        targets_file=targets,
        scrape_interval_s=SCRAPE_INTERVAL_S,
    )
    prom_port = free_port()
    prom_url = f"http://127.0.0.1:{prom_port}"

    with flaky, v1, front, httpx.Client(base_url=router_url, timeout=10) as client:
        prom = prometheus_server.start(prometheus_dir, port=prom_port)
        try:
            prometheus_server.wait_ready(prom_url, proc=prom)
            # Traffic only once Prometheus holds the zero-valued series of every upstream.
            _until(lambda: _prom(prom_url, f"count({queries.CALLS})") == 6, "the router scraped")
            _until(lambda: _prom(prom_url, 'sum(up{job="turnout-model"})') == 1, "v1 scraped")

            scrape = ScrapeProvider(router_url, lambda: servers)
            first = {"canary": scrape.observe(CANARY), "shadow": scrape.observe(SHADOW)}
            expected = _drive(client, tag, prom_url)
            _until(
                lambda: _metric(client.get("/metrics").text, queries.AGREEMENT) == REQUESTS,
                "every shadow copy compared",
            )
            rows_on_v1 = expected["stable_calls"] + REQUESTS  # stable calls plus shadow copies

            def v1_flushed() -> float | None:
                text = httpx.get(f"{v1_url}/metrics").text
                if _metric(text, queries.DRIFT_ROWS) != rows_on_v1:
                    return None
                return _metric(text, queries.PSI) or None

            psi = _until(v1_flushed, "the v1 drift window to take every row")
            # Until Prometheus has scraped the last increments, increase() reads low.
            for expr, want in _sent(expected, psi).items():
                _scraped(prom_url, expr, want)
            scraped = {
                "first_canary": first["canary"],
                "first_shadow": first["shadow"],
                "canary": scrape.observe(CANARY),
                "shadow": scrape.observe(SHADOW),
            }
            scrape.close()
            yield Platform(router_url, prom_url, servers, expected, scraped, psi, ledger)
        finally:
            prom.terminate()
            prom.wait(timeout=20)


def _drive(client: httpx.Client, tag: str, prometheus: str) -> dict[str, Any]:
    """Send the known traffic and feedback; return what each number must come out as."""
    pool = features_matrix(generate(2000, seed=7))
    scores = predict_proba(store.load(tag).net, pool)
    # Rows v1 scores below the agreement threshold: the candidate's 0.0 makes the same
    # decision, so the shadow (v1) agrees with every primary reply, v1's own or the candidate's.
    rows = pool[scores < 0.5][:REQUESTS]
    assert len(rows) == REQUESTS

    # increase() counts from a series' first sample: the router exports the agreement series
    # at zero when the shadow route loads (as it does the upstream calls), and the traffic
    # starts once Prometheus has seen them there.
    _scraped(prometheus, f'count({queries.AGREEMENT}{{model="fraud"}} == 0)', 2)
    candidate = failed = 0
    tokens = []
    for i in range(REQUESTS):
        key = f"user-{i}"
        on_candidate = assign(weight=50, salt="", key=key, uniform=0) is Arm.CANDIDATE
        fail = on_candidate and candidate % 4 == 0  # a quarter of the candidate's calls fail
        candidate += on_candidate
        failed += fail
        headers = {"x-user-id": key, "x-request-id": f"{'fail' if fail else 'ok'}-{i}"}
        resp = client.post("/v2/models/fraud/infer", json=_v2(rows[i : i + 1]), headers=headers)
        assert resp.status_code == 200
        assert resp.headers["x-turnout-variant"] == (
            "stable" if fail or not on_candidate else "candidate"
        )
        tokens.append(resp.headers["turnout-assignment"])

    moments: dict[str, Moments] = {}
    for i in range(FEEDBACK):
        outcome = float(i % 3)
        resp = client.post(
            "/v2/models/fraud/feedback", json={"token": tokens[i], "outcome": outcome}
        )
        arm = resp.json()["arm"]  # as assigned: a failed candidate call retried counts candidate
        m = moments.get(arm, Moments())
        moments[arm] = Moments(n=m.n + 1, sum=m.sum + outcome, sumsq=m.sumsq + outcome**2)
    assert set(moments) == {"stable", "candidate"}
    return {
        "candidate_calls": candidate,
        "candidate_failed": failed,
        "stable_calls": REQUESTS - candidate + failed,  # its own share plus the retries
        "ab": moments,
    }


def _prometheus(platform: Platform, **kwargs: Any) -> PrometheusProvider:
    return PrometheusProvider(platform.prometheus, scrape_interval_s=SCRAPE_INTERVAL_S, **kwargs)


# --- what both providers must report --------------------------------------------------------


def _count(got: float, want: float, *, exact: bool) -> None:
    """Scrape deltas are exact. Prometheus' increase() extrapolates to the window's end, by up
    to one scrape interval: once every increment is scraped (the fixture waits for that), it
    may only read high."""
    assert want * (1 - 1e-9) <= got <= want * (1 + (1e-9 if exact else 0.15))


def _check_canary(m: Metrics, platform: Platform, *, exact: bool) -> None:
    e = platform.expected
    _count(m.candidate.requests, e["candidate_calls"], exact=exact)
    _count(m.stable.requests, e["stable_calls"], exact=exact)
    assert m.candidate.error_rate == pytest.approx(e["candidate_failed"] / e["candidate_calls"])
    assert m.stable.error_rate == 0.0
    assert m.candidate.p99_ms is not None and m.stable.p99_ms is not None
    assert CANDIDATE_DELAY_S * 1000 <= m.candidate.p99_ms < 500
    assert 0 < m.stable.p99_ms < m.candidate.p99_ms
    assert m.stable.prediction_psi == pytest.approx(platform.psi)
    assert m.candidate.prediction_psi is None  # the fake candidate has no drift gauges
    assert dict(m.ab) == {}  # not a metric: the ledger's (test_the_controller_reads_...)
    assert m.shadow_agreement == 1.0


def _check_shadow(m: Metrics, platform: Platform, *, exact: bool) -> None:
    _count(m.candidate.requests, REQUESTS, exact=exact)
    _count(m.shadow_compared, REQUESTS, exact=exact)
    assert m.candidate.error_rate == 0.0
    assert m.candidate.p99_ms is not None and 0 < m.candidate.p99_ms < 250
    assert m.candidate.prediction_psi == pytest.approx(platform.psi)
    assert m.shadow_agreement == 1.0


@slow
def test_prometheus_reports_the_canary_traffic_that_was_sent(platform: Platform) -> None:
    with _prometheus(platform) as provider:
        _check_canary(provider.observe(CANARY), platform, exact=False)


@slow
def test_prometheus_reports_the_shadow_traffic_that_was_sent(platform: Platform) -> None:
    with _prometheus(platform) as provider:
        _check_shadow(provider.observe(SHADOW), platform, exact=False)


@slow
def test_scrape_provider_reports_the_same_numbers(platform: Platform) -> None:
    _check_canary(platform.scraped["canary"], platform, exact=True)
    _check_shadow(platform.scraped["shadow"], platform, exact=True)
    # Both read one histogram with the same interpolation.
    with _prometheus(platform) as provider:
        from_prometheus = provider.observe(CANARY)
    for version in ("stable", "candidate"):
        assert getattr(platform.scraped["canary"], version).p99_ms == pytest.approx(
            getattr(from_prometheus, version).p99_ms, rel=1e-6
        )


@slow
def test_the_controller_reads_the_ab_outcomes_sent_from_the_ledger(platform: Platform) -> None:
    from turnout.io.ab_store import DirectoryLedger

    with _prometheus(platform) as provider:
        metrics = WithLedger(provider, DirectoryLedger(platform.ledger)).observe(AB)
    assert dict(metrics.ab) == platform.expected["ab"]
    assert metrics.candidate.requests > 0  # the serving metrics are still Prometheus'


@slow
def test_scrape_provider_first_observation_is_an_empty_window(platform: Platform) -> None:
    first = platform.scraped["first_canary"]
    assert first.candidate.requests == 0 and first.candidate.error_rate is None
    assert first.candidate.p99_ms is None and first.shadow_agreement is None
    assert first.shadow_compared == 0


@slow
def test_psi_needs_a_full_enough_drift_window(platform: Platform) -> None:
    rows = platform.expected["stable_calls"] + REQUESTS
    with _prometheus(platform, min_drift_rows=rows + 1) as provider:
        assert provider.observe(CANARY).stable.prediction_psi is None
    with _prometheus(platform, min_drift_rows=rows) as provider:
        assert provider.observe(CANARY).stable.prediction_psi == pytest.approx(platform.psi)
    scrape = ScrapeProvider(platform.router, lambda: platform.servers, min_drift_rows=rows + 1)
    with scrape:
        assert scrape.observe(CANARY).stable.prediction_psi is None


@pytest.mark.parametrize(
    ("window_s", "interval_s", "want"),
    [
        (60, 15, "60s"),
        (30, 15, "60s"),  # rate() needs two samples; four scrapes survive a missed one
        (0.1, SCRAPE_INTERVAL_S, "2s"),
        (2.25, 0.5, "2250ms"),
    ],
)
def test_windows_hold_at_least_four_scrapes(window_s, interval_s, want) -> None:
    assert queries.window(window_s, scrape_interval_s=interval_s) == want


# --- when the endpoint is down --------------------------------------------------------------


@pytest.fixture
def silent() -> Iterator[str]:
    """A port that accepts connections and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def _raises_quickly(observe: Callable[[], Any], match: str) -> None:
    start = time.monotonic()
    with pytest.raises(MetricsUnavailable, match=match):
        observe()
    assert time.monotonic() - start < 3


def test_providers_raise_metrics_unavailable_when_nothing_listens() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with PrometheusProvider(dead, timeout=1) as prom:
        _raises_quickly(lambda: prom.observe(CANARY), "Prometheus at .* did not answer")
    with ScrapeProvider(dead, dict, timeout=1) as scrape:
        _raises_quickly(lambda: scrape.observe(CANARY), "cannot scrape .*/metrics")


def test_providers_raise_metrics_unavailable_instead_of_hanging(silent: str) -> None:
    with PrometheusProvider(silent, timeout=0.5) as prom:
        _raises_quickly(lambda: prom.observe(CANARY), "ReadTimeout")
    with ScrapeProvider(silent, dict, timeout=0.5) as scrape:
        _raises_quickly(lambda: scrape.observe(CANARY), "ReadTimeout")


def test_prometheus_errors_are_reported_with_the_query() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"status": "error", "error": "parse error at char 3"})

    with PrometheusProvider("http://prom", transport=httpx.MockTransport(handler)) as prom:
        _raises_quickly(lambda: prom.observe(CANARY), "answered 400 .*parse error at char 3")


# --- the scrape provider's windows and quantiles ---------------------------------------------


def _exposition(ok: float, error: float, buckets: dict[str, float]) -> str:
    calls = queries.CALLS
    lines = [
        f"# TYPE {calls.removesuffix('_total')} counter",
        f'{calls}{{model="fraud",variant="candidate",version="slow",result="ok"}} {ok}',
        f'{calls}{{model="fraud",variant="candidate",version="slow",result="error"}} {error}',
        f"# TYPE {queries.DURATION} histogram",
    ]
    for le, count in buckets.items():
        lines.append(
            f'{queries.DURATION}_bucket{{model="fraud",variant="candidate",version="slow",le="{le}"}}'
            f" {count}"
        )
    return "\n".join(lines) + "\n"


def test_scrape_windows_reach_back_to_the_newest_scrape_old_enough() -> None:
    now = [0.0]
    pages = iter(
        [
            _exposition(0, 0, {"0.01": 0, "+Inf": 0}),  # t=0: baseline
            _exposition(8, 2, {"0.01": 10, "+Inf": 10}),  # t=2: retry, window reaches t=0
            _exposition(20, 2, {"0.01": 20, "+Inf": 22}),  # t=12: t=2 is the newest 10 s old
            _exposition(1, 1, {"0.01": 2, "+Inf": 2}),  # t=30: the router restarted
        ]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=next(pages))

    query = MetricsQuery("fraud", "v1", "slow", "candidate", 10.0)
    with ScrapeProvider(
        "http://router", dict, clock=lambda: now[0], transport=httpx.MockTransport(handler)
    ) as scrape:
        seen = []
        for t in (0.0, 2.0, 12.0, 30.0):
            now[0] = t
            seen.append(scrape.observe(query).candidate)
    assert [(v.requests, v.error_rate) for v in seen] == [
        (0, None),
        (10, 0.2),
        (12, 0.0),
        (2, 0.5),
    ]
    assert seen[2].p99_ms == pytest.approx(
        histogram_quantile(0.99, [(0.01, 10), (np.inf, 12)]) * 1000
    )


@pytest.mark.parametrize(
    ("buckets", "q", "want"),
    [
        ([(0.01, 50), (0.02, 100), (np.inf, 100)], 0.5, 0.01),
        ([(0.01, 50), (0.02, 100), (np.inf, 100)], 0.75, 0.015),
        ([(0.01, 0), (0.02, 0), (np.inf, 10)], 0.99, 0.02),  # in +Inf: the last finite bound
        ([(0.01, 10), (np.inf, 10)], 0.5, 0.005),  # the first bucket starts at zero
        ([(0.01, 0), (np.inf, 0)], 0.5, np.nan),
        ([(0.01, 3)], 0.5, np.nan),  # no +Inf bucket
    ],
)
def test_histogram_quantile_interpolates_like_promql(buckets, q, want) -> None:
    got = histogram_quantile(q, buckets)
    assert got == pytest.approx(want, nan_ok=True)
