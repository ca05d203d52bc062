"""Process settings: one object, read from the environment once.

Per-model policy never lives here (that is the ModelDeployment spec); this is only what a
process needs to know about the machine it runs on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from turnout_sdk.settings import env_flag, env_int


@dataclass(frozen=True)
class Settings:
    """What turnout's own processes read from their environment. A model server's settings
    are the SDK's (turnout_sdk.settings), which a user's Bento reads too."""

    #: Root of all local state (model store, deployments, logs). TURNOUT_HOME; default ./.turnout
    home: Path
    #: BentoML's home, holding the model store. BENTOML_HOME; default TURNOUT_HOME/bentoml
    bentoml_home: Path
    #: Largest request body accepted, in bytes (larger gets 413). TURNOUT_MAX_BODY_BYTES
    max_body_bytes: int
    #: Mirrored requests in flight at once; more are dropped (and counted), never queued.
    #: TURNOUT_SHADOW_MAX_INFLIGHT
    shadow_max_inflight: int
    #: Put request payloads in the router's access log (off: they may hold personal data).
    #: TURNOUT_LOG_PAYLOADS
    log_payloads: bool


@cache
def settings() -> Settings:
    """The process settings, read once."""
    home = Path(os.environ.get("TURNOUT_HOME") or Path.cwd() / ".turnout").resolve()
    return Settings(
        home=home,
        bentoml_home=Path(os.environ.get("BENTOML_HOME") or home / "bentoml"),
        max_body_bytes=env_int("TURNOUT_MAX_BODY_BYTES", 4 * 1024 * 1024),
        shadow_max_inflight=env_int("TURNOUT_SHADOW_MAX_INFLIGHT", 64),
        log_payloads=env_flag("TURNOUT_LOG_PAYLOADS", False),
    )


def use_local_model_store() -> Path:
    """Point BentoML at turnout's state directory (must run before bentoml is imported).

    BentoML otherwise writes to ~/bentoml; turnout keeps all state under TURNOUT_HOME.
    An explicit BENTOML_HOME is respected.
    """
    home = Path(os.environ.setdefault("BENTOML_HOME", str(settings().bentoml_home)))
    home.mkdir(parents=True, exist_ok=True)
    return home
