"""Every PromQL query the controller runs, in one place: the numbers a rollout is judged on
can be read, and pasted into Prometheus, without following the provider's code.

Each function returns the query for one number of ``turnout.core.observation.Metrics``; the range
``window`` comes from ``window()``, which clamps it so that every range holds enough scrapes.
The metrics they read are the router's (services/router/metrics.py) and the model servers'
(services/model/monitor.py). A query answers an empty vector or NaN when there was no data;
the provider turns both into ``None``.
"""

from __future__ import annotations

import math

#: rate() needs two samples in the range; four scrape intervals survive a missed scrape.
MIN_SCRAPES_PER_WINDOW = 4
#: PSI over fewer rows than this is noise (the monitor's sliding window is still filling).
MIN_DRIFT_ROWS = 200

CALLS = "turnout_router_upstream_calls_total"
DURATION = "turnout_router_upstream_duration_seconds"
AGREEMENT = "turnout_shadow_agreement_total"
PSI = "turnout_model_prediction_psi"
DRIFT_ROWS = "turnout_model_drift_window_rows"


def window(window_s: float, *, scrape_interval_s: float) -> str:
    """A PromQL range for ``window_s``, at least MIN_SCRAPES_PER_WINDOW scrape intervals."""
    ms = math.ceil(max(window_s, MIN_SCRAPES_PER_WINDOW * scrape_interval_s) * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _selector(**labels: str) -> str:
    return "{" + ",".join(f"{k}={_quote(v)}" for k, v in labels.items()) + "}"


def error_rate(model: str, variant: str, version: str, window: str) -> str:
    """Failed upstream attempts / all attempts on one variant and version."""
    every = _selector(model=model, variant=variant, version=version)
    failed = _selector(model=model, variant=variant, version=version, result="error")
    # `or vector(0)`: a version that never failed still has an error rate, zero.
    return (
        f"(sum(rate({CALLS}{failed}[{window}])) or vector(0)) / sum(rate({CALLS}{every}[{window}]))"
    )


def p99_ms(model: str, variant: str, version: str, window: str) -> str:
    """99th-percentile upstream attempt latency, milliseconds."""
    sel = _selector(model=model, variant=variant, version=version)
    return f"histogram_quantile(0.99, sum by (le) (rate({DURATION}_bucket{sel}[{window}]))) * 1000"


def requests(model: str, variant: str, version: str, window: str) -> str:
    """Upstream attempts on one variant and version in the window."""
    sel = _selector(model=model, variant=variant, version=version)
    return f"sum(increase({CALLS}{sel}[{window}]))"


def shadow_agreement(model: str, window: str) -> str:
    """Share of compared rows on which shadow and primary made the same decision."""
    agreed = _selector(model=model, agree="true")
    every = _selector(model=model)
    return (
        f"(sum(increase({AGREEMENT}{agreed}[{window}])) or vector(0))"
        f" / sum(increase({AGREEMENT}{every}[{window}]))"
    )


def shadow_compared(model: str, window: str) -> str:
    """Rows compared between shadow and primary in the window."""
    return f"sum(increase({AGREEMENT}{_selector(model=model)}[{window}]))"


def prediction_psi(model: str, version: str, *, min_rows: int = MIN_DRIFT_ROWS) -> str:
    """Worst prediction PSI across the version's servers whose drift window is full enough."""
    sel = _selector(model=model, version=version)
    # `and` pairs each server's PSI with its own row count (same labels but the name).
    return f"max({PSI}{sel} and ({DRIFT_ROWS}{sel} >= {min_rows}))"
