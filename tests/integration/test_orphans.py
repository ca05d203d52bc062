"""A model server killed outright takes its workers with it: no "dead" version goes on answering.

BentoML's workers run in sessions of their own (circus calls setsid), so a SIGKILL of the
`bentoml serve` process used to leave them serving on the port. The local controller would
then count the version as gone while it still answered whoever held its URL. Servers are
started exactly as the supervisor starts them (turnout.io.processes.serve_command).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import textwrap
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.servers import eventually, wait_ready
from turnout.io.processes import free_port, serve_command, terminate

pytestmark = pytest.mark.slow

#: A plain BentoML service that knows nothing of turnout: the guard must not depend on the SDK.
PLAIN = textwrap.dedent(
    """
    import bentoml

    @bentoml.service(workers=2)
    class Plain:
        @bentoml.api
        def echo(self, text: str) -> str:
            return text
    """
)


def answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start(
    tag: str, *, service: str | None, ready: str, log: Path
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cmd, env = serve_command(tag, host="127.0.0.1", port=port, service=service)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    wait_ready(f"http://127.0.0.1:{port}{ready}", proc)
    return proc, port


def kill_parent_and_watch(proc: subprocess.Popen[bytes], port: int) -> None:
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert workers, "the server should run worker processes"
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed = time.monotonic()
        eventually(lambda: not answers(port), f"nothing answering on port {port}", timeout=5)
        took = time.monotonic() - killed
        assert took < 1.0, f"port {port} still answered {took:.2f}s after the parent died"
        eventually(
            lambda: not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers),
            "every worker gone",
            timeout=5,
        )
    finally:
        for w in workers:  # never leave a stray server behind a failing test
            if w.is_running():
                terminate(w.pid, timeout=5)


def test_sdk_server_workers_die_with_their_parent(trained, turnout_home: Path) -> None:
    _, tag = trained
    proc, port = start(
        str(tag), service=None, ready="/v2/health/ready", log=turnout_home / "orphan-sdk.log"
    )
    assert httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200
    kill_parent_and_watch(proc, port)


def test_plain_bento_workers_die_with_their_parent(tmp_path: Path, turnout_home: Path) -> None:
    (tmp_path / "plain.py").write_text(PLAIN)
    (tmp_path / "bentofile.yaml").write_text('service: "plain:Plain"\n')
    proc, port = start(
        "plain:v1", service=str(tmp_path), ready="/readyz", log=turnout_home / "orphan-plain.log"
    )
    assert httpx.post(f"http://127.0.0.1:{port}/echo", json={"text": "hi"}).text == "hi"
    kill_parent_and_watch(proc, port)


def test_a_server_stopped_normally_still_stops_its_workers(trained, turnout_home: Path) -> None:
    _, tag = trained
    proc, port = start(
        str(tag), service=None, ready="/v2/health/ready", log=turnout_home / "orphan-stop.log"
    )
    workers = psutil.Process(proc.pid).children(recursive=True)
    terminate(proc.pid)
    proc.wait()
    assert not answers(port)
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
