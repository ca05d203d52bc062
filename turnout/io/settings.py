"""Process settings: one object, read from the environment once.

Per-model policy never lives here (that is the ModelDeployment spec); this is only what a
process needs to know about the machine it runs on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be a number, got {raw!r}") from None


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "on", "true", "yes"):
        return True
    if raw in ("0", "off", "false", "no"):
        return False
    raise ValueError(f"environment variable {name} must be on or off, got {raw!r}")


@dataclass(frozen=True)
class Settings:
    """Everything a turnout process reads from its environment."""

    #: Root of all local state (model store, deployments, logs). TURNOUT_HOME; default ./.turnout
    home: Path
    #: BentoML's home, holding the model store. BENTOML_HOME; default TURNOUT_HOME/bentoml
    bentoml_home: Path
    #: Model served by a model-server process, as ``name:version``. TURNOUT_MODEL
    model: str
    #: torch intra-op threads per model-server worker. TURNOUT_TORCH_THREADS; default 1, because
    #: a tiny MLP gains nothing from more threads and several workers would oversubscribe cores.
    torch_threads: int
    #: Most rows one inference request may carry. TURNOUT_MAX_ROWS
    max_rows: int
    #: Largest request body accepted, in bytes (larger gets 413). TURNOUT_MAX_BODY_BYTES
    max_body_bytes: int
    #: Largest batch the micro-batcher forms from concurrent requests. TURNOUT_MAX_BATCH_ROWS
    max_batch_rows: int
    #: How long the micro-batcher may hold an idle-arriving request to wait for company, in ms.
    #: Default 0: an idle server answers at once; batches form only while the model is busy.
    #: TURNOUT_BATCH_WAIT_MS
    batch_wait_ms: float
    #: Combine concurrent requests into one forward pass. TURNOUT_BATCHING=on|off (default on)
    batching: bool
    #: Batches up to this many rows run on the event loop; larger ones on a worker thread.
    #: TURNOUT_INLINE_ROWS
    inline_rows: int
    #: Model-server worker processes. TURNOUT_WORKERS; default 1
    workers: int
    #: One access-log line per request from the model server. TURNOUT_ACCESS_LOG=on|off
    access_log: bool
    #: Record an OpenTelemetry span for each inference request. TURNOUT_TRACE_INFERENCE
    #: (default off: costs ~40 % of a single-row request; health and metadata are traced).
    trace_inference: bool
    #: Mirrored requests in flight at once; more are dropped (and counted), never queued.
    #: TURNOUT_SHADOW_MAX_INFLIGHT
    shadow_max_inflight: int
    #: Put request payloads in the router's access log (off: they may hold personal data).
    #: TURNOUT_LOG_PAYLOADS
    log_payloads: bool
    #: Rows in the sliding window the drift gauges compare against the training reference.
    #: TURNOUT_DRIFT_WINDOW
    drift_window: int
    #: Chaos testing: share of inference requests this model server fails with a 500.
    #: TURNOUT_FAULT_ERROR_RATE (default 0). Set per version via the spec's ``env``.
    fault_error_rate: float
    #: Chaos testing: milliseconds added to every inference. TURNOUT_FAULT_DELAY_MS (default 0)
    fault_delay_ms: float


@cache
def settings() -> Settings:
    """The process settings, read once."""
    home = Path(os.environ.get("TURNOUT_HOME") or Path.cwd() / ".turnout").resolve()
    return Settings(
        home=home,
        bentoml_home=Path(os.environ.get("BENTOML_HOME") or home / "bentoml"),
        model=os.environ.get("TURNOUT_MODEL", "fraud:latest"),
        torch_threads=_int("TURNOUT_TORCH_THREADS", 1),
        max_rows=_int("TURNOUT_MAX_ROWS", 1024),
        max_body_bytes=_int("TURNOUT_MAX_BODY_BYTES", 4 * 1024 * 1024),
        max_batch_rows=_int("TURNOUT_MAX_BATCH_ROWS", 256),
        batch_wait_ms=_float("TURNOUT_BATCH_WAIT_MS", 0.0),
        drift_window=_int("TURNOUT_DRIFT_WINDOW", 2000),
        batching=_flag("TURNOUT_BATCHING", True),
        inline_rows=_int("TURNOUT_INLINE_ROWS", 64),
        workers=_int("TURNOUT_WORKERS", 1),
        access_log=_flag("TURNOUT_ACCESS_LOG", False),
        trace_inference=_flag("TURNOUT_TRACE_INFERENCE", False),
        shadow_max_inflight=_int("TURNOUT_SHADOW_MAX_INFLIGHT", 64),
        log_payloads=_flag("TURNOUT_LOG_PAYLOADS", False),
        fault_error_rate=_float("TURNOUT_FAULT_ERROR_RATE", 0.0),
        fault_delay_ms=_float("TURNOUT_FAULT_DELAY_MS", 0.0),
    )


def use_local_model_store() -> Path:
    """Point BentoML at turnout's state directory (must run before bentoml is imported).

    BentoML otherwise writes to ~/bentoml; turnout keeps all state under TURNOUT_HOME.
    An explicit BENTOML_HOME is respected.
    """
    home = Path(os.environ.setdefault("BENTOML_HOME", str(settings().bentoml_home)))
    home.mkdir(parents=True, exist_ok=True)
    return home
