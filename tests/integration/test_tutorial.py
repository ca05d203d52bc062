"""README's "Deploy your own model", followed as written from an empty folder: its files are
taken from the README itself, and its commands run as a user types them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.servers import ROOT
from turnout.io.processes import free_port, terminate

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TURNOUT = str(Path(sys.executable).parent / "turnout")
ROW = [0.04, 0.05, 0.06, 0.02, -0.04, -0.03, -0.04, 0.0, 0.02, -0.02]


def tutorial_files() -> dict[str, str]:
    """Each ``<!-- tutorial: NAME -->`` block of the README, by file name."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Deploy your own model") : text.index("## Training")]
    blocks = re.findall(r"<!-- tutorial: (\S+) -->\n```\w+\n(.*?)```", section, re.S)
    return dict(blocks)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    files = tutorial_files()
    assert {"train.py", "service.py", "bentofile.yaml"} <= set(files)
    for name in ("train.py", "service.py", "bentofile.yaml"):
        (tmp_path / name).write_text(files[name])
    return tmp_path


def run(folder: Path, *args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        args, cwd=folder, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_tutorial_works_as_written(folder: Path) -> None:
    home = folder / ".turnout"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TURNOUT_", "BENTOML_"))}
    env.update(TURNOUT_HOME=str(home), BENTOML_HOME=str(home / "bentoml"))

    tag = run(folder, sys.executable, "train.py", env=env).strip().splitlines()[-1]
    name, version = tag.split(":")
    assert name == "diabetes"

    port = free_port()
    server = subprocess.Popen(
        [TURNOUT, "serve", tag, "--service", ".", "--port", str(port)],
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, "turnout serve exited"
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.5)
        tensor = {"name": "features", "shape": [1, 10], "datatype": "FP32", "data": ROW}
        reply = httpx.post(f"{url}/v2/models/diabetes/infer", json={"inputs": [tensor]})
        assert reply.status_code == 200, reply.text
        doc = reply.json()
        assert doc["model_version"] == version
        assert doc["outputs"][0]["name"] == "progression"
        assert doc["outputs"][0]["shape"] == [1]
        bad = {**tensor, "shape": [1, 9], "data": ROW[:9]}
        refused = httpx.post(f"{url}/v2/models/diabetes/infer", json={"inputs": [bad]})
        assert refused.status_code == 400
        assert "shape must be [N, 10], got [1, 9]" in refused.json()["error"]
    finally:
        terminate(server.pid)

    said = run(
        folder,
        TURNOUT, "deploy", "diabetes", "--version", version, "--service", ".",
        "--comparison", "regression", "--set", "comparison.tolerance=5",
        env=env,
    )  # fmt: skip
    assert f"created ModelDeployment diabetes: diabetes:{version} is stable" in said
    doc = yaml.safe_load((home / "deployments" / "diabetes.yaml").read_text())
    assert doc["spec"]["stable"]["service"] == str(folder.resolve())
    assert doc["spec"]["comparison"]["type"] == "Regression"
    status = run(folder, TURNOUT, "status", "diabetes", env=env)
    assert "Name:       diabetes" in status
