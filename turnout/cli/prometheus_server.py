"""A local Prometheus for laptops and tests (the Debian package's ``prometheus`` binary).

It scrapes the router at a fixed address and the model servers listed in a file_sd targets
file, which ``write_targets`` rewrites atomically as servers come and go (Prometheus watches
the file). Without the binary, callers fall back to services.controller.scrape.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ROUTER_JOB = "turnout-router"
MODEL_JOB = "turnout-model"
#: Local data only needs to outlive one rollout's analysis windows.
RETENTION = "2h"


def binary() -> str | None:
    """Path of ``prometheus`` on PATH, or None."""
    return shutil.which("prometheus")


def _duration(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def _target(url: str) -> tuple[str, str, str]:
    """(host:port, scheme, metrics path) of a base URL."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"{url!r} is not a base URL like http://127.0.0.1:8080")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}", parts.scheme or "http", parts.path.rstrip("/") + "/metrics"


def write_config(
    directory: Path, *, router_url: str, targets_file: Path, scrape_interval_s: float
) -> Path:
    """Write ``prometheus.yml`` into ``directory``; returns its path."""
    address, scheme, path = _target(router_url)
    interval = _duration(scrape_interval_s)
    config = {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,  # the default, 10s, is refused when above the interval
            "evaluation_interval": interval,
        },
        "scrape_configs": [
            {
                "job_name": ROUTER_JOB,
                "scheme": scheme,
                "metrics_path": path,
                "static_configs": [{"targets": [address]}],
            },
            {
                "job_name": MODEL_JOB,
                # The servers' own model/version labels win over the target's.
                "honor_labels": True,
                "file_sd_configs": [
                    {"files": [str(Path(targets_file).resolve())], "refresh_interval": "5s"}
                ],
            },
        ],
    }
    directory.mkdir(parents=True, exist_ok=True)
    path_out = directory / "prometheus.yml"
    path_out.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path_out


def write_targets(path: Path, servers: Mapping[str, str]) -> None:
    """File-SD targets, one per model server (version -> base URL), replaced atomically so
    Prometheus never reads a half-written file."""
    targets = []
    for version, url in sorted(servers.items()):
        address, scheme, metrics_path = _target(url)
        labels = {"version": version, "__scheme__": scheme, "__metrics_path__": metrics_path}
        targets.append({"targets": [address], "labels": labels})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(targets, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def start(directory: Path, *, port: int) -> subprocess.Popen[bytes]:
    """Run Prometheus on 127.0.0.1:``port`` with the config, data and log in ``directory``."""
    exe = binary()
    if exe is None:
        raise FileNotFoundError("prometheus is not on PATH (apt-get install prometheus)")
    directory = directory.resolve()
    log = open(directory / "prometheus.log", "ab")  # noqa: SIM115 - the child owns it
    try:
        return subprocess.Popen(
            [
                exe,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--storage.tsdb.retention.time={RETENTION}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            cwd=directory,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()


def wait_ready(
    url: str, timeout: float = 30.0, *, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until Prometheus at ``url`` answers ``/-/ready``; TimeoutError after ``timeout``,
    RuntimeError at once if ``proc`` (the process started for it) has exited."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {proc.returncode}; see prometheus.log")
        try:
            if httpx.get(f"{url.rstrip('/')}/-/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"Prometheus at {url} not ready after {timeout}s")
        time.sleep(0.1)
