"""The digits example (examples/digits) as the integration tests run it: one trained version in
the test store, its SDK server (`bentoml serve service:Digits`) and KServe's ModelServer on the
same weights (bench/support/kserve_digits.py), each on a free port, and v2 request bodies."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from tests.servers import ROOT, stop, wait_ready
from turnout.io.processes import free_port

EXAMPLE = ROOT / "examples" / "digits"
KSERVE = ROOT / "bench" / "support" / "kserve_digits.py"
#: Fewer than train.py's default; the held-out accuracy is still ~0.97.
EPOCHS = 10


@functools.cache
def train(*args: str) -> str:
    """`python train.py ARGS` into the test store ($BENTOML_HOME); the new version's tag.
    Cached: one training per set of arguments per test session."""
    out = subprocess.run(
        [sys.executable, "train.py", "--epochs", str(EPOCHS), *args],
        cwd=EXAMPLE,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


@functools.cache
def images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as the model reads them: images [N, 1, 8, 8] FP32, labels [N]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.float32)[:, None], digits.target


def probabilities(tag: str, x: np.ndarray) -> np.ndarray:
    """What the stored version ``tag`` answers for ``x``, computed here with the example's own
    network (examples/digits/model.py, loaded by path so no bare ``model`` module lingers)."""
    import importlib.util

    import bentoml
    import torch
    from safetensors.torch import load_file

    spec = importlib.util.spec_from_file_location("digits_example_model", EXAMPLE / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.DigitsCNN()
    net.load_state_dict(load_file(bentoml.models.get(tag).path_of("weights.safetensors")))
    net.eval()
    with torch.no_grad():
        return torch.softmax(net(torch.from_numpy(x)), dim=1).numpy()  # type: ignore[no-any-return]


def v2_body(x: np.ndarray, name: str = "image") -> dict[str, Any]:
    """A JSON v2 inference request for a batch of images."""
    tensor = {"name": name, "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
    return {"inputs": [tensor]}


def server_home(name: str) -> Path:
    """A BENTOML_HOME of its own that shares the test store's models: `bentoml serve` empties
    $BENTOML_HOME/prometheus_multiproc_dir when it starts, so servers sharing one home would
    wipe each other's /metrics."""
    store = Path(os.environ["BENTOML_HOME"]) / "models"
    store.mkdir(parents=True, exist_ok=True)
    home = Path(os.environ["TURNOUT_HOME"]) / "homes" / name
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "models").exists():
        (home / "models").symlink_to(store, target_is_directory=True)
    return home


@contextmanager
def running(
    args: list[str],
    ready_path: str,
    name: str,
    env: Mapping[str, str],
    *,
    port: int,
    cwd: Path = ROOT,
) -> Iterator[str]:
    """A server process on ``port``, ready at ``ready_path``; yields its base URL."""
    log = open(Path(os.environ["TURNOUT_HOME"]) / f"{name}-{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        args,
        env={**os.environ, **env},
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{base}{ready_path}", proc, timeout=120)
        yield base
    finally:
        stop(proc)
        log.close()


def sdk_server(
    tag: str,
    *,
    python: str = sys.executable,
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
) -> Any:
    """`bentoml serve service:Digits --working-dir examples/digits` serving ``tag``, run by
    ``python`` in ``cwd`` (a context manager yielding the base URL)."""
    port = free_port()
    args = [python, "-m", "bentoml", "serve", "service:Digits", "--working-dir", str(EXAMPLE)]
    args += ["--host", "127.0.0.1", "--port", str(port)]
    server_env = {
        "TURNOUT_MODEL": tag,
        "BENTOML_HOME": str(server_home(f"sdk-{port}")),
        "BENTOML_DO_NOT_TRACK": "true",
        **(env or {}),
    }
    return running(args, "/v2/health/ready", "digits-sdk", server_env, port=port, cwd=cwd)


def kserve_server(tag: str) -> Any:
    """KServe's ModelServer serving ``tag`` (bench/support/kserve_digits.py); a context
    manager yielding the base URL."""
    port = free_port()
    env = {
        "TURNOUT_MODEL": tag,
        "BENTOML_HOME": str(server_home(f"kserve-{port}")),
        "BENCH_HTTP_PORT": str(port),
    }
    return running(
        [sys.executable, str(KSERVE)], "/v2/models/digits/ready", "digits-kserve", env, port=port
    )
