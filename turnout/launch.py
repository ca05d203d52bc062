"""Command lines for turnout's own processes (model servers), shared by the CLI and the
local controller's supervisor."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from turnout.settings import settings, use_local_model_store


def project_root() -> Path:
    spec = importlib.util.find_spec("services")
    if spec is None or spec.origin is None:
        raise RuntimeError("turnout's services package is not installed")
    return Path(spec.origin).resolve().parent.parent


def _server_home(tag: str, port: int) -> Path:
    """A BENTOML_HOME of the server's own, sharing the model store.

    `bentoml serve` wipes $BENTOML_HOME/prometheus_multiproc_dir at start-up, so two servers
    (say stable and candidate) under one BENTOML_HOME would erase and then mix each other's
    metrics. Each server gets its own home whose `models` links to the shared store.
    """
    store = use_local_model_store() / "models"
    store.mkdir(parents=True, exist_ok=True)
    home = settings().home / "run" / f"{tag.replace(':', '-')}-{port}"
    home.mkdir(parents=True, exist_ok=True)
    link = home / "models"
    if not link.is_symlink():
        link.symlink_to(store, target_is_directory=True)
    return home


def serve_command(
    tag: str, *, host: str, port: int, env: Mapping[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The `bentoml serve` command line and environment for one model version."""
    # bentoml reads BENTOML_HOME before it imports the service, so pass it explicitly.
    full = {**os.environ, **(env or {}), "TURNOUT_MODEL": tag}
    full["BENTOML_HOME"] = str(_server_home(tag, port))
    full.setdefault("TURNOUT_HOME", str(settings().home))
    cmd = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        "services.model.service:FraudModel",
        "--host",
        host,
        "--port",
        str(port),
        "--working-dir",
        str(project_root()),
    ]
    return cmd, full
