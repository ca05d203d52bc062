"""Serving smoke test: a real `bentoml serve` of the candidate answers v2 inference correctly.

The validation gate runs before the candidate is registered (a failed gate must leave nothing
in the model store), yet the model server only serves ``TURNOUT_MODEL=name:version`` from a
BentoML model store. So the candidate gets a store of its own: a temporary BENTOML_HOME,
private to this one server process, into which the staged directory (``store.write_directory``
layout: weights, architecture, metadata.json) is registered under the tag it will later have.
The shared store is never written, two smoke tests never collide, and the temporary home (with
BentoML's Prometheus directory, which `bentoml serve` wipes at start-up) goes away afterwards.
A version that is already registered is served through a temporary home whose ``models``
links to the shared store, as the supervisor does for its servers.

The server is started exactly as turnout starts model servers
(``turnout.io.processes.serve_command``) on a free loopback port, asked for a few rows over the
v2 protocol, checked (200, output ``probability`` FP32 [N] with finite values in [0, 1], the
``x-turnout-model-version`` header, the same numbers as the model in-process), and stopped with
its workers. Every failure, a timeout included, comes back as ``(False, reason)``.

This lives in ``workflows`` rather than ``training``: starting and stopping servers uses
``services.controller.supervisor``, which the training library must not depend on.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from turnout.io.settings import use_local_model_store

use_local_model_store()

import bentoml  # noqa: E402  (BENTOML_HOME must be set first)
from bentoml._internal.models import ModelStore  # noqa: E402  (no public way to pick a store)

from training import store  # noqa: E402
from training.data import FRAUD_SCHEMA, features_matrix, generate  # noqa: E402
from training.model import predict_proba  # noqa: E402
from turnout.io.processes import (  # noqa: E402
    free_port,
    serve_command,
    terminate,
)

INPUT, OUTPUT = "features", "probability"
VERSION_HEADER = "x-turnout-model-version"
#: Rows in the smoke request: enough to see a batch come back in order, small enough to be quick.
SMOKE_ROWS = 8
#: Served scores may differ from in-process ones by float32 rounding only.
_TOLERANCE = 1e-5
_LOG_TAIL = 400


def smoke_test_v2(
    *,
    tag: str | None = None,
    model_dir: Path | None = None,
    rows: np.ndarray | None = None,
    timeout: float = 90.0,
    env: Mapping[str, str] | None = None,
) -> tuple[bool, str]:
    """Serve a model with `bentoml serve`, send one v2 infer request, check it, stop the server.

    ``model_dir``: a staged, unregistered candidate (``store.write_directory``), served as
    ``tag`` (default ``fraud:candidate``) from a temporary store. Without ``model_dir``,
    ``tag`` must be registered in the model store. ``rows``: float32 [N, F] features (default:
    a few synthetic transactions). ``env``: extra environment for the server. Never raises
    for a bad model or a server that misbehaves; returns ``(passed, one-line reason)``.
    """
    if model_dir is None and tag is None:
        return False, "smoke test needs a model tag or a staged model directory"
    tag = tag or "fraud:candidate"
    name, sep, version = tag.partition(":")
    if not (sep and name and version and version != "latest"):
        return False, f"smoke test needs an explicit name:version tag, got {tag!r}"
    home = Path(tempfile.mkdtemp(prefix="turnout-smoke-"))
    try:
        try:
            loaded = _prepare(home, tag=tag, model_dir=model_dir)
        except Exception as exc:
            return False, f"cannot stage {model_dir or tag} for serving: {exc}"
        if rows is None:
            rows = _default_rows(loaded.schema.names)
        expected = predict_proba(loaded.net, rows)
        return _serve_and_check(
            home, tag=tag, rows=rows, expected=expected, timeout=timeout, env=env or {}
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)


def check_infer_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    version: str,
    expected: np.ndarray,
) -> str | None:
    """What is wrong with a v2 infer response for ``len(expected)`` rows; None when right."""
    if status != 200:
        return f"v2 infer answered {status}: {_error_message(body)}"
    served = headers.get(VERSION_HEADER)
    if served != version:
        return f"header {VERSION_HEADER} is {served!r}, expected {version!r}"
    try:
        doc = orjson.loads(body)
        out = next(o for o in doc["outputs"] if o.get("name") == OUTPUT)
    except (orjson.JSONDecodeError, KeyError, TypeError, StopIteration):
        return f"response has no {OUTPUT!r} output: {body[:200]!r}"
    n = len(expected)
    if out.get("datatype") != "FP32" or out.get("shape") != [n]:
        return f"output {OUTPUT!r} is {out.get('datatype')} {out.get('shape')}, expected FP32 [{n}]"
    try:
        values = np.asarray(out["data"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        return f"output {OUTPUT!r} has no numeric data"
    if values.shape != (n,):
        return f"output {OUTPUT!r} holds {values.size} values for shape [{n}]"
    if not np.isfinite(values).all() or (values < 0).any() or (values > 1).any():
        return f"output {OUTPUT!r} has values outside [0, 1]: {values.tolist()}"
    gap = float(np.abs(values - expected).max())
    if gap > _TOLERANCE:
        return f"served probabilities differ from the model in-process by up to {gap:.3g}"
    return None


# --- steps ----------------------------------------------------------------------------------


def _prepare(home: Path, *, tag: str, model_dir: Path | None) -> store.LoadedModel:
    """Make ``tag`` servable from BENTOML_HOME=``home``; return the model as loaded here."""
    if model_dir is None:
        loaded = store.load(tag)  # ModelNotFound names the tag
        (home / "models").symlink_to(use_local_model_store() / "models", target_is_directory=True)
        return loaded
    metadata = store.read_metadata(model_dir)
    loaded = store.from_directory(model_dir, tag=tag, metadata=metadata)
    private = ModelStore(home / "models")
    with bentoml.models.create(tag, metadata=metadata, _model_store=private) as model:
        for filename in (store.WEIGHTS, store.ARCHITECTURE):
            shutil.copyfile(model_dir / filename, model.path_of(filename))
    return loaded


def _default_rows(names: list[str]) -> np.ndarray:
    if names == FRAUD_SCHEMA.names:
        return features_matrix(generate(SMOKE_ROWS, seed=7))
    # Another schema: zeros are valid for every numeric feature and category code 0.
    return np.zeros((SMOKE_ROWS, len(names)), dtype=np.float32)


def _serve_and_check(
    home: Path,
    *,
    tag: str,
    rows: np.ndarray,
    expected: np.ndarray,
    timeout: float,
    env: Mapping[str, str],
) -> tuple[bool, str]:
    name, _, version = tag.partition(":")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd, full_env = serve_command(
        tag,
        host="127.0.0.1",
        port=port,
        env={"TURNOUT_WORKERS": "1", **env},
    )
    full_env["BENTOML_HOME"] = str(home)  # the private store (see the module docstring)
    log_path = home / "serve.log"
    started = time.monotonic()
    deadline = started + timeout
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            problem = _wait_ready(f"{base}/readyz", proc, deadline=deadline)
            if problem:
                return False, f"{problem}; server log: {_tail(log_path)}"
            ready_s = time.monotonic() - started
            try:
                resp = httpx.post(
                    f"{base}/v2/models/{name}/versions/{version}/infer",
                    content=orjson.dumps(_infer_body(rows)),
                    headers={"content-type": "application/json"},
                    timeout=max(1.0, min(30.0, deadline - time.monotonic())),
                )
            except httpx.HTTPError as exc:
                return False, f"v2 infer request to {tag} failed: {type(exc).__name__}: {exc}"
            problem = check_infer_response(
                resp.status_code, resp.headers, resp.content, version=version, expected=expected
            )
            if problem:
                return False, f"{tag}: {problem}"
            return True, (
                f"{tag} served by bentoml answered v2 infer: 200, {OUTPUT} FP32 [{len(rows)}] "
                f"in [0, 1] equal to in-process scores, {VERSION_HEADER}: {version} "
                f"(ready in {ready_s:.1f} s)"
            )
        finally:
            terminate(proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], *, deadline: float) -> str | None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"model server exited with code {proc.returncode} before it was ready"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return None
        time.sleep(0.2)
    return "model server not ready before the smoke-test timeout"


def _infer_body(rows: np.ndarray) -> dict[str, Any]:
    x = np.asarray(rows, dtype=np.float32)
    return {
        "id": "smoke",
        "inputs": [
            {"name": INPUT, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
        ],
    }


def _error_message(body: bytes) -> str:
    try:
        return str(orjson.loads(body)["error"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return body[:200].decode(errors="replace")


def _tail(path: Path) -> str:
    """The last meaningful line of the server's log (usually the exception), on one line."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1][-_LOG_TAIL:] if lines else "(empty)"
