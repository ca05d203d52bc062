"""`bentoml build` packs the model server and writes its Dockerfile, with no Docker engine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.servers import ROOT
from workflows.bento import sdk_wheel

pytestmark = pytest.mark.slow


def test_bentoml_build_packs_the_served_version(trained) -> None:
    _, tag = trained
    sdk_wheel(ROOT)  # bentofile.yaml packs the serving SDK as a wheel
    env = {**os.environ, "TURNOUT_MODEL": tag}
    out = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "--output", "tag", str(ROOT)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    bento_tag = out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = bento_tag.split(":")
    bento = Path(os.environ["BENTOML_HOME"]) / "bentos" / name / version
    manifest = yaml.safe_load((bento / "bento.yaml").read_text())
    assert [m["tag"] for m in manifest["services"][0]["models"]] == [tag]
    assert {r["route"] for r in manifest["schema"]["routes"]} == {"/predict"}
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert "USER bentoml" in dockerfile  # the model image runs as non-root
    assert (bento / "src" / "services" / "model" / "service.py").exists()
    assert any(p.name.startswith("turnout_sdk-") for p in (bento / "env" / "python").rglob("*.whl"))
