"""A user's environment: a fresh virtualenv with the turnout-sdk wheel, torch and safetensors —
nothing of turnout's control plane — serves the digits example with `bentoml serve`.

The SDK's promise (sdk/pyproject.toml) is that a Bento depends on BentoML and what it already
brings: no kopf, hera or kubernetes client, and no top-level package besides ``turnout_sdk``
(no ``services``, ``training``, ``workflows`` or ``turnout`` to shadow a user's own modules).

Slow: the venv installs torch from pip's cache (from PyPI, about 3 GB with its NVIDIA wheels,
the first time on a machine).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.servers import ROOT
from tests.support import digits

pytestmark = pytest.mark.slow
CONTROL_PLANE = {"kopf", "hera", "kubernetes", "turnout"}
NOT_TOP_LEVEL = ("services", "training", "workflows", "turnout")


def run(args: list[str], cwd: Path) -> str:
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    assert out.returncode == 0, (
        f"{' '.join(args)} failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}"
    )
    return out.stdout


@pytest.mark.timeout(1800)
def test_a_venv_with_only_the_sdk_serves_the_digits_example(tmp_path: Path) -> None:
    timings: dict[str, float] = {}
    t = time.monotonic()
    # Built from a copy, so the checkout gains no build/ directory.
    source = shutil.copytree(
        ROOT / "sdk",
        tmp_path / "sdk",
        ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"),
    )
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    run([*build, str(source), "-w", str(wheels)], tmp_path)
    (wheel,) = wheels.glob("turnout_sdk-*.whl")
    timings["wheel_s"] = time.monotonic() - t

    t = time.monotonic()
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip"]
    install = [*pip, "install", "--quiet", "-c", str(ROOT / "constraints.txt")]
    run([*install, str(wheel), "torch==2.13.0", "safetensors"], tmp_path)
    timings["install_s"] = time.monotonic() - t

    # What the user's environment holds: by pip, by importlib.metadata, and on disk.
    listed = {p["name"].lower() for p in json.loads(run([*pip, "list", "--format=json"], tmp_path))}
    names = "{d.metadata['Name'].lower() for d in importlib.metadata.distributions()}"
    code = f"import importlib.metadata, json; print(json.dumps(sorted({names})))"
    installed = set(json.loads(run([python, "-c", code], tmp_path)))
    assert "turnout-sdk" in listed and "bentoml" in listed and "torch" in listed
    assert not CONTROL_PLANE & listed
    assert not CONTROL_PLANE & installed
    (site,) = (venv / "lib").glob("python3.*/site-packages")
    assert [n for n in NOT_TOP_LEVEL if (site / n).exists() or (site / f"{n}.py").exists()] == []
    top_level = (next(site.glob("turnout_sdk-*.dist-info")) / "top_level.txt").read_text().split()
    assert top_level == ["turnout_sdk"]

    # The venv serves the example (run outside the checkout, so nothing of it is importable).
    tag = digits.train()
    x, y = digits.images()
    t = time.monotonic()
    with digits.sdk_server(tag, python=python, cwd=tmp_path) as base:
        timings["serve_ready_s"] = time.monotonic() - t
        resp = httpx.post(
            f"{base}/v2/models/digits/infer", json=digits.v2_body(x[:100]), timeout=30
        )
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-turnout-model-version"] == tag.partition(":")[2]
    out = resp.json()["outputs"][0]
    p = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
    assert p.shape == (100, 10)
    assert np.mean(p.argmax(axis=1) == y[:100]) >= 0.9
    print("clean venv timings:", {k: round(v, 1) for k, v in timings.items()})
