"""Starting and stopping turnout's own local processes.

The command line of a model server (shared by ``turnout serve`` and the local controller's
supervisor), the check that a serving target is a turnout model server before anything serves
it, free loopback ports, and stopping a process with everything it started: one
implementation for the platform, the workflows, the tests and the benchmarks.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
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
    shared = use_local_model_store()
    home = settings().home / "run" / f"{tag.replace(':', '-')}-{port}"
    home.mkdir(parents=True, exist_ok=True)
    for store in ("models", "bentos"):  # model versions, and Bentos served by tag
        (shared / store).mkdir(parents=True, exist_ok=True)
        link = home / store
        if not link.is_symlink():
            link.symlink_to(shared / store, target_is_directory=True)
    return home


#: What a version whose spec names no service runs: the built-in fraud model server.
DEFAULT_SERVICE = "services.model.service:FraudModel"


def serve_command(
    tag: str,
    *,
    host: str,
    port: int,
    env: Mapping[str, str] | None = None,
    service: str | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The `bentoml serve` command line and environment for one model version.

    ``service`` is the serving target (a Bento tag, a directory holding a bentofile.yaml, or
    ``module:Class``; relative paths and modules are found from the project root), default
    the built-in fraud server. TURNOUT_MODEL names the model version it loads.
    """
    # bentoml reads BENTOML_HOME before it imports the service, so pass it explicitly.
    full = {**os.environ, **(env or {}), "TURNOUT_MODEL": tag}
    full["BENTOML_HOME"] = str(_server_home(tag, port))
    full.setdefault("TURNOUT_HOME", str(settings().home))
    cmd = [
        sys.executable,
        "-m",
        "turnout.io.bentoml_serve",  # `bentoml serve`, with workers that die with it
        "serve",
        service or DEFAULT_SERVICE,
        "--host",
        host,
        "--port",
        str(port),
        "--working-dir",
        str(project_root()),
    ]
    return cmd, full


# --- is the target a turnout model server? -------------------------------------------------

#: Run in a child process (the target's imports must not land in the caller): load the target
#: as `bentoml serve` does and print one marked JSON line saying what was found.
_PROBE = """
import json, sys
target, root = sys.argv[1], sys.argv[2]
sys.path.insert(0, root)
try:
    from bentoml._internal.service.loader import load
    svc = load(target, working_dir=root)
    inner = getattr(svc, "inner", None)
    found = {"name": str(getattr(svc, "name", "?")), "sdk": hasattr(inner, "_turnout_start")}
except BaseException as exc:
    found = {"error": type(exc).__name__, "message": str(exc)}
print()
print("turnout-probe " + json.dumps(found), flush=True)
"""
_MARK = "turnout-probe "
#: Seconds a target may take to import (torch alone takes a few on a busy laptop).
CHECK_TIMEOUT_S = 90.0
_FORMS = (
    "a Bento tag in the local store (`bentoml list`), a directory holding a bentofile.yaml, "
    "or module:Class importable from {root}"
)


def service_problem(
    service: str | None,
    *,
    tag: str,
    env: Mapping[str, str] | None = None,
    timeout: float = CHECK_TIMEOUT_S,
) -> str | None:
    """Why ``bentoml serve <service>`` cannot serve model version ``tag`` as a turnout model
    server, naming the fix; None when it can.

    The target is imported in a child process, as the server would import it (so a missing
    module, a missing model version or bad tensor declarations show here, before anything
    starts); it must carry the serving SDK's runtime (``@turnout_sdk.model_server``).
    """
    target = service or DEFAULT_SERVICE
    root = project_root()
    if problem := _path_problem(target, root):
        return problem
    full = {**os.environ, **(env or {}), "TURNOUT_MODEL": tag}
    full["BENTOML_HOME"] = str(use_local_model_store())
    full.setdefault("TURNOUT_HOME", str(settings().home))
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, target, str(root)],
            env=full,
            cwd=root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return (
            f"service {target!r} did not finish importing within {timeout:g}s; "
            "check what it does at import time (load models in __init__, not at module level)"
        )
    found = next(
        (json.loads(ln[len(_MARK) :]) for ln in done.stdout.splitlines() if ln.startswith(_MARK)),
        None,
    )
    if found is None:
        tail = last_line(done.stderr or done.stdout)
        return f"service {target!r} could not be imported (exit {done.returncode}): {tail}"
    return _describe(found, target=target, tag=tag, root=root)


def _path_problem(target: str, root: Path) -> str | None:
    """A target written as a path must be a directory bentoml can serve."""
    if not (target.startswith((".", "/", "~")) or "/" in target or os.sep in target):
        return None
    path = root / Path(target).expanduser()  # an absolute target stays as it is
    if not path.is_dir():
        return f"service {target!r}: no such directory (a relative path is taken from {root})"
    if not any((path / f).is_file() for f in ("bentofile.yaml", "bento.yaml", "service.py")):
        return (
            f"service {target!r}: {path} holds no bentofile.yaml; give the directory whose "
            'bentofile.yaml names the service (service: "module:Class")'
        )
    return None


def _describe(found: Mapping[str, str], *, target: str, tag: str, root: Path) -> str | None:
    error, message = found.get("error"), found.get("message", "")
    if error is None:
        if found.get("sdk"):
            return None
        return (
            f"service {target!r} (BentoML service {found.get('name')!r}) is not a turnout model "
            "server: decorate its class with @turnout_sdk.model_server(inputs=[...], "
            "outputs=[...]) so it declares its tensors (see examples/digits/service.py)"
        )
    if error == "ModelNotFound":  # the SDK's message names the tag and the fix
        return message
    if error == "DeclarationError":
        return f"service {target!r} declares its model server wrongly: {message}"
    if error == "ImportServiceError":
        # bentoml tries the target as a module, then as a Bento tag: name both.
        module = re.search(r"importing by python module path: '(.*)'\.?$", message, re.S)
        why = (module.group(1) if module else message).split("\nIf you are trying")[0]
        return (
            f"service {target!r} cannot be loaded: {why.strip().rstrip('.')}; "
            f"the target is {_FORMS.format(root=root)}"
        )
    return (
        f"service {target!r} failed to load: {error}: {last_line(message)}; "
        f"the target is {_FORMS.format(root=root)}"
    )


def last_line(text: str, *, limit: int = 300) -> str:
    """The last non-blank line of a log or message (usually the exception), at most
    ``limit`` characters."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][-limit:] if lines else "(empty)"


#: A traceback's last line, ``package.ErrorType: message`` (log lines start with a timestamp).
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*: \S.*$", re.M)


def failure_reason(log: str, *, limit: int = 300) -> str:
    """Why a server failed, from its log: the last exception raised, else the last line."""
    found = _EXCEPTION_LINE.findall(log)
    return found[-1].strip()[:limit] if found else last_line(log, limit=limit)


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
