"""Building a registered model's bento for the cluster's image builder.

A cluster has no Docker daemon, so ``bentoml containerize`` cannot make the candidate's image
there. Instead the ``package`` step leaves a build context in the run directory: ``bentoml
build`` of the model server with the model pinned by ``TURNOUT_MODEL``, plus the model store
that ``containerize`` would have added. The next Argo task, kaniko, builds and pushes the
image from it with the bento's env/docker/Dockerfile.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from turnout.io.settings import use_local_model_store
from turnout_sdk.server import SDK_VERSION
from workflows.records import StepError


def build(tag: str, out: Path) -> None:
    """``bentoml build`` of the model server with ``tag``, copied to ``out`` for the image
    builder (kaniko's context is that directory; its Dockerfile is env/docker/Dockerfile)."""
    root = _context()
    sdk_wheel(root)
    proc = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "--output", "tag", str(root)],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "TURNOUT_MODEL": tag},
        timeout=900,
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise StepError(f"bentoml build of {tag} failed: {tail}")
    bento_tag = proc.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = bento_tag.split(":")
    built = use_local_model_store() / "bentos" / name / version
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(built, out)
    # What `bentoml containerize` adds to the bento for its build context: the models it
    # serves, in a store of its own under models/ (the image's Dockerfile copies it all).
    import bentoml

    bentoml.models.BentoModel(tag).resolve(out / "models")


def sdk_wheel(root: Path) -> Path:
    """The serving SDK's wheel that bentofile.yaml packs into the bento, built afresh (a few
    seconds) so the bento never carries an older SDK than the source."""
    wheel = root / "sdk" / "dist" / f"turnout_sdk-{SDK_VERSION}-py3-none-any.whl"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(wheel.parent),
            str(root / "sdk"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0 or not wheel.exists():
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise StepError(f"building the serving SDK's wheel failed: {tail}")
    return wheel


def _context() -> Path:
    """The directory holding bentofile.yaml: the source checkout, or the image's WORKDIR (an
    installed package lives in site-packages, without it)."""
    from turnout.io.processes import project_root

    for root in (project_root(), Path.cwd()):
        if (root / "bentofile.yaml").is_file():
            return root
    raise StepError(
        f"no bentofile.yaml in {project_root()} or {Path.cwd()}: cannot build the bento "
        "(the turnout image ships it in its working directory)"
    )
