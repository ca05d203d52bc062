"""A model server's settings, read once from its environment (TURNOUT_*).

The platform starts each version's server with these variables (the local supervisor, the
operator's InferenceService, ``turnout serve``); a user's Bento reads them through this
module, so the SDK needs nothing else of turnout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be a number, got {raw!r}") from None


def env_flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "on", "true", "yes"):
        return True
    if raw in ("0", "off", "false", "no"):
        return False
    raise ValueError(f"environment variable {name} must be on or off, got {raw!r}")


@dataclass(frozen=True)
class ServerSettings:
    """Everything a model-server process reads from its environment."""

    #: Model served, as ``name:version`` (a BentoML model tag). TURNOUT_MODEL; when unset,
    #: the service's own default (``turnout_sdk.model_ref("name")`` -> name:latest).
    model: str | None
    #: torch intra-op threads per worker. TURNOUT_TORCH_THREADS; default 1, because small
    #: models gain nothing from more threads and several workers would oversubscribe cores.
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
    #: Worker processes. TURNOUT_WORKERS; default 1
    workers: int
    #: One access-log line per request. TURNOUT_ACCESS_LOG=on|off
    access_log: bool
    #: Record an OpenTelemetry span for each inference request. TURNOUT_TRACE_INFERENCE
    #: (default off: costs ~40 % of a single-row request; health and metadata are traced).
    trace_inference: bool
    #: Rows in the sliding window the drift gauges compare against the training reference.
    #: TURNOUT_DRIFT_WINDOW
    drift_window: int
    #: Chaos testing: share of inference requests failed with a 500. TURNOUT_FAULT_ERROR_RATE
    fault_error_rate: float
    #: Chaos testing: milliseconds added to every inference. TURNOUT_FAULT_DELAY_MS
    fault_delay_ms: float


@cache
def server_settings() -> ServerSettings:
    """The process's settings, read once."""
    return ServerSettings(
        model=os.environ.get("TURNOUT_MODEL") or None,
        torch_threads=env_int("TURNOUT_TORCH_THREADS", 1),
        max_rows=env_int("TURNOUT_MAX_ROWS", 1024),
        max_body_bytes=env_int("TURNOUT_MAX_BODY_BYTES", 4 * 1024 * 1024),
        max_batch_rows=env_int("TURNOUT_MAX_BATCH_ROWS", 256),
        batch_wait_ms=env_float("TURNOUT_BATCH_WAIT_MS", 0.0),
        drift_window=env_int("TURNOUT_DRIFT_WINDOW", 2000),
        batching=env_flag("TURNOUT_BATCHING", True),
        inline_rows=env_int("TURNOUT_INLINE_ROWS", 64),
        workers=env_int("TURNOUT_WORKERS", 1),
        access_log=env_flag("TURNOUT_ACCESS_LOG", False),
        trace_inference=env_flag("TURNOUT_TRACE_INFERENCE", False),
        fault_error_rate=env_float("TURNOUT_FAULT_ERROR_RATE", 0.0),
        fault_delay_ms=env_float("TURNOUT_FAULT_DELAY_MS", 0.0),
    )
