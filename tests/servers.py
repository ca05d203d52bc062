"""Start real server processes for tests: free loopback ports, readiness checks, clean stops."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

from turnout.io.processes import free_port, terminate

ROOT = Path(__file__).resolve().parent.parent


def readme_recipe(marker: str) -> str:
    """The README's bash block under ``<!-- marker -->``, as written (tests run it)."""
    text = (ROOT / "README.md").read_text()
    found = re.search(rf"<!-- {re.escape(marker)} -->\n```bash\n(.*?)```", text, re.S)
    assert found is not None, f"the README's <!-- {marker} --> recipe"
    return found.group(1)


def wait_ready(url: str, proc: subprocess.Popen[bytes], *, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} was ready")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s")


def kill_tree(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Signal a server and every process under it (bentoml's workers start their own sessions,
    so a process-group signal would miss them)."""
    import psutil

    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(sig)


def stop(proc: subprocess.Popen[bytes]) -> None:
    terminate(proc.pid)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


@contextmanager
def process(args: list[str], ready_url: str, log_name: str) -> Iterator[subprocess.Popen[bytes]]:
    """Any server process, in its own process group, stopped on exit."""
    log = open(Path(os.environ["TURNOUT_HOME"]) / log_name, "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        args,
        env=dict(os.environ),
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_ready(ready_url, proc)
        yield proc
    finally:
        stop(proc)
        log.close()


def router(routes: Path, *extra: str, port: int | None = None) -> tuple[str, contextmanager]:  # type: ignore[type-arg]
    """`turnout route` on a free port (or ``port``), with ``extra`` arguments: (base URL,
    context manager running it)."""
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    args = [
        sys.executable,
        "-m",
        "turnout",
        "route",
        "--routes",
        str(routes),
        "--port",
        str(port),
        *extra,
    ]
    return base, process(args, f"{base}/v2/health/ready", f"router-{port}.log")


def fake_upstream(*, delay: float = 0.0, score: float = 0.5, version: str = "fake"):  # type: ignore[no-untyped-def]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = [
        sys.executable,
        "-m",
        "tests.fake_upstream",
        "--port",
        str(port),
        "--delay",
        str(delay),
        "--score",
        str(score),
        "--version",
        version,
    ]
    return base, process(args, f"{base}/readyz", f"fake-{port}.log")


@contextmanager
def model_server(tag: str, *, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """`turnout serve TAG` on a free port; yields its base URL."""
    port = free_port()
    log = open(Path(os.environ["TURNOUT_HOME"]) / f"serve-{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "turnout", "serve", tag, "--port", str(port)],
        env={**os.environ, **(env or {})},
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{base}/readyz", proc)
        yield base
    finally:
        stop(proc)
        log.close()


def served(tag: str):  # type: ignore[no-untyped-def]
    """`turnout serve TAG` on a free port: (base URL, context manager yielding the process)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "turnout", "serve", tag, "--port", str(port)]
    return base, process(args, f"{base}/readyz", f"serve-{port}.log")


def turnout(*args: str, home: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """A `turnout` command as a user runs it, with its own TURNOUT_HOME."""
    return subprocess.run(
        [sys.executable, "-m", "turnout", *args],
        env={**os.environ, "TURNOUT_HOME": str(home)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def eventually(check: Callable[[], bool], what: str, timeout: float = 120) -> None:
    """Wait until ``check()`` holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
