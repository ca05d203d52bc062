"""What the README promises of the Makefile, read from make's own dry run."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def install_lines(*args: str) -> list[str]:
    """The pip lines `make` would run to (re)install the virtualenv, without running them."""
    out = subprocess.run(
        ["make", "-n", "-W", "pyproject.toml", ".venv/.installed", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in out.splitlines() if "pip install" in line]


def test_cpu_only_machines_can_name_pytorchs_cpu_index() -> None:
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"\$ (make up TORCH_INDEX=\S+)", readme)
    assert command, "the README tells CPU-only users which command to run"
    index = command.group(1).split("=", 1)[1]
    torch = [line for line in install_lines(f"TORCH_INDEX={index}") if "torch==" in line]
    assert torch and f"--index-url {index}" in torch[0]
    # The index is for torch alone: turnout's own dependencies still come from PyPI.
    assert all(
        "--index-url" not in line
        for line in install_lines(f"TORCH_INDEX={index}")
        if "torch==" not in line
    )


def test_by_default_torch_comes_from_pypi_with_the_pinned_version() -> None:
    torch = [line for line in install_lines() if "torch==" in line]
    assert torch and "torch==2.13.0" in torch[0] and "--index-url" not in torch[0]
