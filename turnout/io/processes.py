"""Starting and stopping turnout's own local processes.

The command line of a model server (shared by ``turnout serve`` and the local controller's
supervisor), free loopback ports, and stopping a process with everything it started: one
implementation for the platform, the workflows, the tests and the benchmarks.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

import psutil

from turnout.io.settings import settings, use_local_model_store


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


def free_port() -> int:
    """A port nothing listens on now, on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def terminate(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM a server and everything under it (bentoml workers start their own sessions)."""
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(family, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
