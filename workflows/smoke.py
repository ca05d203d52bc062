"""Serving smoke test: a real `bentoml serve` of the candidate answers v2 inference correctly.

The validation gate runs before the candidate is registered (a failed gate must leave nothing
in the model store), yet a model server only serves ``TURNOUT_MODEL=name:version`` from a
BentoML model store. So the candidate gets a store of its own: a temporary BENTOML_HOME,
private to this one server process, into which the staged directory (the plugin's files and
metadata.json) is registered under the tag it will later have. The shared store is never
written, two smoke tests never collide, and the temporary home (with BentoML's Prometheus
directory, which `bentoml serve` wipes at start-up) goes away afterwards. A version that is
already registered is served through a temporary home whose ``models`` links to the shared
store, as the supervisor does for its servers.

The server is the plugin's service (its ``service``; the built-in fraud server when None),
started exactly as turnout starts model servers (``turnout.io.processes.serve_command``) on a
free loopback port, asked for a few rows over the v2 protocol with every declared input,
checked (200, every declared output with its datatype and shape, finite values, in [0, 1] for
a binary score, the ``x-turnout-model-version`` header, the same numbers as the plugin's
``predict`` in-process), and stopped with its workers. Every failure, a timeout included,
comes back as ``(False, reason)``.

This lives in ``workflows`` rather than ``training``: starting and stopping servers uses
``turnout.io.processes``, and the plugin that knows the model is a workflows notion.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from turnout.io.settings import use_local_model_store

use_local_model_store()

from bentoml._internal.models import ModelStore  # noqa: E402  (no public way to pick a store)

from turnout.io.processes import (  # noqa: E402
    free_port,
    serve_command,
    terminate,
)
from turnout_sdk.tasks import BinaryScore, Task  # noqa: E402
from turnout_sdk.tensors import Tensor  # noqa: E402
from workflows import plugins, staging  # noqa: E402
from workflows.plugins import Plugin  # noqa: E402

VERSION_HEADER = "x-turnout-model-version"
#: Rows in the smoke request: enough to see a batch come back in order, small enough to be quick.
SMOKE_ROWS = 8
#: Served outputs may differ from in-process ones by float32 rounding only.
_TOLERANCE = 1e-5
_LOG_TAIL = 400
FRAUD_PLUGIN = "workflows.fraud:PIPELINE"
#: The fraud server's output, as check_infer_response expects it by default.
_FRAUD_OUTPUT = Tensor("probability", "FP32", (-1,))
_BINARY = BinaryScore()


def smoke_test_v2(
    *,
    tag: str | None = None,
    model_dir: Path | None = None,
    rows: np.ndarray | None = None,
    timeout: float = 90.0,
    env: Mapping[str, str] | None = None,
) -> tuple[bool, str]:
    """:func:`smoke_test` of a fraud model: ``tag`` default ``fraud:candidate``; ``rows``
    float32 [N, F] features (default: a few synthetic transactions)."""
    if model_dir is None and tag is None:
        return False, "smoke test needs a model tag or a staged model directory"
    plugin = plugins.load(FRAUD_PLUGIN)
    inputs = {plugin.inputs[0].name: rows} if rows is not None else plugin.examples(SMOKE_ROWS)
    return smoke_test(
        plugin=plugin,
        tag=tag or "fraud:candidate",
        model_dir=model_dir,
        inputs=inputs,
        timeout=timeout,
        env=env,
    )


def smoke_test(
    *,
    plugin: Plugin,
    tag: str,
    model_dir: Path | None,
    inputs: Mapping[str, np.ndarray],
    timeout: float = 90.0,
    env: Mapping[str, str] | None = None,
) -> tuple[bool, str]:
    """Serve a model with `bentoml serve`, send one v2 infer request, check it, stop the server.

    ``model_dir``: a staged, unregistered candidate, served as ``tag`` from a temporary store;
    without it, ``tag`` must be registered in the model store. ``inputs``: arrays by declared
    input name. ``env``: extra environment for the server. Never raises for a bad model or a
    server that misbehaves; returns ``(passed, one-line reason)``.
    """
    name, sep, version = tag.partition(":")
    if not (sep and name and version and version != "latest"):
        return False, f"smoke test needs an explicit name:version tag, got {tag!r}"
    home = Path(tempfile.mkdtemp(prefix="turnout-smoke-"))
    try:
        try:
            model = _prepare(home, plugin=plugin, tag=tag, model_dir=model_dir)
            expected = plugin.predict(model, inputs)
        except Exception as exc:
            return False, f"cannot stage {model_dir or tag} for serving: {exc}"
        return _serve_and_check(
            home,
            plugin=plugin,
            tag=tag,
            inputs=inputs,
            expected=expected,
            timeout=timeout,
            env=env or {},
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)


def check_infer_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    version: str,
    expected: np.ndarray | Mapping[str, np.ndarray],
    outputs: Sequence[Tensor] = (_FRAUD_OUTPUT,),
    task: Task = _BINARY,
) -> str | None:
    """What is wrong with a v2 infer response; None when right. ``expected``: the outputs
    in-process, by declared name (one array: the first declared output)."""
    if status != 200:
        return f"v2 infer answered {status}: {_error_message(body)}"
    served = headers.get(VERSION_HEADER)
    if served != version:
        return f"header {VERSION_HEADER} is {served!r}, expected {version!r}"
    wanted = expected if isinstance(expected, Mapping) else {outputs[0].name: expected}
    try:
        doc = orjson.loads(body)
        found = {o.get("name"): o for o in doc["outputs"]}
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        found = {}
    for tensor in outputs:
        problem = _output_problem(
            found.get(tensor.name),
            tensor,
            np.asarray(wanted[tensor.name]),
            probability=isinstance(task, BinaryScore),
        )
        if problem == "missing":
            return f"response has no {tensor.name!r} output: {body[:200]!r}"
        if problem:
            return f"output {tensor.name!r} {problem}"
    return None


def _output_problem(
    out: Any, tensor: Tensor, expected: np.ndarray, *, probability: bool
) -> str | None:
    if not isinstance(out, dict):
        return "missing"
    shape = [len(expected), *tensor.shape[1:]]
    if out.get("datatype") != tensor.datatype or out.get("shape") != shape:
        got = f"{out.get('datatype')} {out.get('shape')}"
        return f"is {got}, expected {tensor.datatype} {shape}"
    try:
        values = np.asarray(out["data"], dtype=np.float64).ravel()
    except (KeyError, TypeError, ValueError):
        return "has no numeric data"
    if values.size != math.prod(shape):
        return f"holds {values.size} values for shape {shape}"
    if not np.isfinite(values).all():
        return f"has values that are NaN or infinite: {values.tolist()[:10]}"
    if probability and ((values < 0).any() or (values > 1).any()):
        return f"has values outside [0, 1]: {values.tolist()[:10]}"
    gap = float(np.abs(values - expected.astype(np.float64).ravel()).max(initial=0.0))
    if gap > _TOLERANCE:
        return f"has served values that differ from the model in-process by up to {gap:.3g}"
    return None


# --- steps ----------------------------------------------------------------------------------


def _prepare(home: Path, *, plugin: Plugin, tag: str, model_dir: Path | None) -> Any:
    """Make ``tag`` servable from BENTOML_HOME=``home``; return the model as loaded here."""
    if model_dir is None:
        path = staging.stored(tag).path  # ModelNotFound names the tag
        (home / "models").symlink_to(use_local_model_store() / "models", target_is_directory=True)
        return plugin.load(path)
    model = plugin.load(model_dir)
    private = ModelStore(home / "models")
    staging.register(model_dir, tag=tag, labels={"task": plugin.name}, model_store=private)
    return model


def _serve_and_check(
    home: Path,
    *,
    plugin: Plugin,
    tag: str,
    inputs: Mapping[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
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
        service=plugin.service,
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
                    content=orjson.dumps(_infer_body(plugin.inputs, inputs)),
                    headers={"content-type": "application/json"},
                    timeout=max(1.0, min(30.0, deadline - time.monotonic())),
                )
            except httpx.HTTPError as exc:
                return False, f"v2 infer request to {tag} failed: {type(exc).__name__}: {exc}"
            problem = check_infer_response(
                resp.status_code,
                resp.headers,
                resp.content,
                version=version,
                expected=expected,
                outputs=plugin.outputs,
                task=plugin.task,
            )
            if problem:
                return False, f"{tag}: {problem}"
            rows = plugins.rows(inputs)
            said = ", ".join(
                f"{t.name} {t.datatype} {[rows, *t.shape[1:]]}" for t in plugin.outputs
            )
            return True, (
                f"{tag} served by bentoml answered v2 infer: 200, {said} equal to in-process "
                f"outputs, {VERSION_HEADER}: {version} (ready in {ready_s:.1f} s)"
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


def _infer_body(declared: Sequence[Tensor], inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    tensors = []
    for t in declared:
        x = np.asarray(inputs[t.name], dtype=t.dtype)
        tensors.append(
            {
                "name": t.name,
                "shape": list(x.shape),
                "datatype": t.datatype,
                "data": x.ravel().tolist(),
            }
        )
    return {"id": "smoke", "inputs": tensors}


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
