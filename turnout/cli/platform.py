"""The whole local platform as processes: Prometheus, the controller loop and the router.

``turnout up``, ``turnout demo``, the end-to-end tests and the rollback benchmark start the
same pieces the same way, so what they show is what a user runs. The controller starts the
model servers (one per version the ModelDeployments name) and writes the route table; the
router serves the stable endpoint from it; Prometheus, when its binary exists, scrapes both
and the controller judges rollouts from PromQL (without it, from direct scrapes).

The router asks for an API key, as in a cluster: on first start the platform makes one with
every scope (TURNOUT_HOME/api-key, its hash in TURNOUT_HOME/api-keys.yaml) and the clients it
starts send it (``headers``). The router signs A/B assignment tokens with TURNOUT_HOME/
token-secret (made on first start) and keeps accepted outcomes in TURNOUT_HOME/ab, the ledger
the controller judges A/B tests from.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from turnout.cli import prometheus_server
from turnout.io.api_keys import LOCAL_KEYS_FILE, local_key, local_token_secret
from turnout.io.processes import free_port, project_root


@dataclass
class LocalPlatform:
    home: Path
    port: int = 8080
    #: Use Prometheus when the binary exists; False forces direct scrapes.
    prometheus: bool = True
    scrape_interval_s: float = 1.0
    #: Extra environment for every process (e.g. TURNOUT_HOME for a demo's own state).
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    prometheus_url: str | None = None
    #: Start the router with API keys (False: an open router, as `turnout route` without
    #: --api-keys).
    auth: bool = True
    #: The platform's own all-scopes key, once started with ``auth``.
    api_key: str | None = None
    #: Whether ``api_key`` was made by this start (then `turnout up` shows it once).
    api_key_made: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def keys_file(self) -> Path:
        return self.home / LOCAL_KEYS_FILE

    @property
    def headers(self) -> dict[str, str]:
        """What a client of the router sends: the platform's key, when it has one."""
        return {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @property
    def ledger_dir(self) -> Path:
        """The router's A/B outcomes, which the controller reads."""
        return self.home / "ab"

    @property
    def routes_file(self) -> Path:
        return self.home / "routes.yaml"

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env, "TURNOUT_HOME": str(self.home)}
        with open(logs / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                cmd, env=env, cwd=project_root(), stdout=out, stderr=subprocess.STDOUT
            )
        self.procs[name] = proc
        return proc

    def start_controller(self, *, timeout: float = 240.0) -> None:
        """Start the controller; return once it has routed a stable version."""
        cmd = [
            sys.executable,
            "-m",
            "services.controller",
            "--routes",
            str(self.routes_file),
            "--router",
            self.url,
            "--scrape-interval",
            str(self.scrape_interval_s),
            "--ledger",
            str(self.ledger_dir),
        ]
        if self.prometheus_url:
            cmd += ["--prometheus", self.prometheus_url]
            cmd += ["--targets-file", str(self.home / "prometheus" / "targets.json")]
        proc = self._spawn("controller", cmd)
        self._wait(lambda: self.routes_file.exists(), proc, timeout, "a route table")

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.routes_file.unlink(missing_ok=True)
        if self.prometheus and prometheus_server.binary() is not None:
            directory = self.home / "prometheus"
            targets = directory / "targets.json"
            prometheus_server.write_config(
                directory,
                router_url=self.url,
                targets_file=targets,
                scrape_interval_s=self.scrape_interval_s,
            )
            if not targets.exists():
                prometheus_server.write_targets(targets, {})
            port = free_port()
            self.procs["prometheus"] = prometheus_server.start(directory, port=port)
            self.prometheus_url = f"http://127.0.0.1:{port}"
            prometheus_server.wait_ready(self.prometheus_url, proc=self.procs["prometheus"])
        self.start_controller()
        cmd = [sys.executable, "-m", "services.router", "--routes", str(self.routes_file)]
        cmd += ["--port", str(self.port), "--replica-id", "local"]
        cmd += ["--token-secret", str(local_token_secret(self.home))]
        cmd += ["--ledger", str(self.ledger_dir)]
        if self.auth:
            self.api_key, self.api_key_made = local_key(self.home)
            cmd += ["--api-keys", str(self.keys_file)]
        router = self._spawn("router", cmd)
        self._wait(lambda: _ok(f"{self.url}/v2/health/ready"), router, 60, "the router")

    def stop_process(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        for name in ("router", "controller", "prometheus"):
            with contextlib.suppress(OSError):
                self.stop_process(name)

    def __enter__(self) -> LocalPlatform:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait(
        self, ready: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float, what: str
    ) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                log = self.home / "logs"
                raise RuntimeError(f"{what}: process exited with {proc.returncode} (logs: {log})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} after {timeout:.0f}s (logs: {self.home / 'logs'})")
            time.sleep(0.1)


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
