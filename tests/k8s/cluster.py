"""A real Kubernetes control plane for the tests: kine, kube-apiserver, kube-controller-manager.

Schemas and fakes cannot show what an API server does with turnout's objects: CEL rules and
structural-schema rejections, the status subresource, RBAC, Helm's lookups and ownership.
So the tests that need those start the real thing, built by `make kube-tools` from
tools/kube (see its README for the flags). There is no scheduler and no kubelet: objects are
stored, validated, defaulted, garbage-collected and watched, but no pod runs.

Everything listens on 127.0.0.1 on free ports, with static token auth and RBAC on, in a
scratch directory. Each process runs in its own process group with a parent-death signal, so
nothing outlives the test session, even when pytest itself is killed.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import secrets
import signal
import ssl
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from turnout.io.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
KUBE_BIN = ROOT / ".tools" / "kube" / "bin"
BINARIES = ("kine", "kube-apiserver", "kube-controller-manager")
#: The API server is ready in about 3 s on an idle machine; a loaded CI runner is slower.
READY_TIMEOUT_S = 90.0
#: SIGTERM, then this long before SIGKILL.
STOP_TIMEOUT_S = 15.0

#: prctl(PR_SET_PDEATHSIG, SIGKILL): the kernel kills the child when pytest dies. Looked up
#: before any fork: loading a library between fork and exec can deadlock.
_prctl = ctypes.CDLL(None, use_errno=True).prctl
_PR_SET_PDEATHSIG = 1


def missing_binaries(bin_dir: Path = KUBE_BIN) -> list[str]:
    return [name for name in BINARIES if not (bin_dir / name).is_file()]


def _die_with_parent() -> None:  # in the child, between fork and exec
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.popen.returncode}; its log ends:\n{self.tail()}"
            )

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it if it lingers."""
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=wait)
                return


@dataclass(frozen=True)
class Cluster:
    """A running control plane: where it is and how to talk to it, as admin or as anyone."""

    server: str
    ca: Path
    #: kubeconfig of a system:masters user.
    kubeconfig: Path
    workdir: Path
    kubectl_path: Path
    #: Seconds from the first process started to the controller-manager's controllers running.
    startup_s: float = field(default=0.0, compare=False)

    def env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        """The environment for helm and kubectl: this cluster, and caches and helm's state in
        the scratch directory, nothing from the user's home."""
        cache = self.workdir / "cache"
        return {
            **os.environ,
            "KUBECONFIG": str(kubeconfig or self.kubeconfig),
            "KUBECACHEDIR": str(cache / "kube"),
            "HELM_CACHE_HOME": str(cache / "helm"),
            "HELM_CONFIG_HOME": str(self.workdir / "helm" / "config"),
            "HELM_DATA_HOME": str(self.workdir / "helm" / "data"),
        }

    def run(
        self, *argv: str | Path, kubeconfig: Path | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(a) for a in argv],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=self.env(kubeconfig),
            input=input,
            timeout=120,
        )

    def kubectl(
        self, *args: str | Path, kubeconfig: Path | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.run(self.kubectl_path, *args, kubeconfig=kubeconfig, input=input)

    def ok(
        self, *args: str | Path, kubeconfig: Path | None = None, input: str | None = None
    ) -> str:
        """``kubectl args`` that must succeed; its stdout."""
        out = self.kubectl(*args, kubeconfig=kubeconfig, input=input)
        if out.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(map(str, args))} failed:\n{out.stderr}")
        return out.stdout

    def get(self, *args: str, kubeconfig: Path | None = None) -> Any:
        """``kubectl get args -o json``, parsed."""
        return json.loads(self.ok("get", *args, "-o", "json", kubeconfig=kubeconfig))

    def exists(self, *args: str) -> bool:
        out = self.kubectl("get", *args, "-o", "name")
        if out.returncode != 0 and "NotFound" not in out.stderr:
            raise AssertionError(f"kubectl get {' '.join(args)}: {out.stderr}")
        return out.returncode == 0

    def apply(self, objects: Iterable[Mapping[str, Any]], *flags: str) -> str:
        """``kubectl apply -f -`` of the objects (as one JSON list)."""
        body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
        return self.ok("apply", *flags, "-f", "-", input=body)

    def delete(self, objects: Iterable[Mapping[str, Any]]) -> None:
        """``kubectl delete`` the objects, waiting until they are gone."""
        body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
        self.ok("delete", "--ignore-not-found", "--wait", "-f", "-", input=body)

    def namespace(self, name: str) -> str:
        """Create a namespace (if new) and return its name."""
        if not self.exists("namespace", name):
            self.ok("create", "namespace", name)
        return name

    def kubeconfig_for(self, name: str, token: str, *, namespace: str | None = None) -> Path:
        """A kubeconfig that authenticates with a bearer token (``namespace``: its context's)."""
        path = self.workdir / "kubeconfigs" / f"{name}.kubeconfig"
        path.parent.mkdir(exist_ok=True)
        write_kubeconfig(
            path, server=self.server, ca=self.ca, user=name, token=token, namespace=namespace
        )
        return path

    def service_account_kubeconfig(self, namespace: str, account: str) -> Path:
        """A kubeconfig holding a token the API server issued to a ServiceAccount, as a pod
        running under that account would get (``kubectl create token``), in the account's
        namespace as a pod's own namespace is."""
        token = self.ok("create", "token", account, "-n", namespace, "--duration=1h").strip()
        return self.kubeconfig_for(f"{namespace}.{account}", token, namespace=namespace)

    def wait_for(
        self, *args: str, condition: str, timeout_s: int = 60, kubeconfig: Path | None = None
    ) -> str:
        """``kubectl wait --for=condition ...``."""
        return self.ok(
            "wait", f"--for={condition}", f"--timeout={timeout_s}s", *args, kubeconfig=kubeconfig
        )


def write_kubeconfig(
    path: Path, *, server: str, ca: Path, user: str, token: str, namespace: str | None = None
) -> None:
    ca_data = base64.b64encode(ca.read_bytes()).decode()
    context = {"cluster": "test", "user": user} | ({"namespace": namespace} if namespace else {})
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "test", "cluster": {"server": server, "certificate-authority-data": ca_data}}
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": context}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _credentials(workdir: Path) -> tuple[str, str]:
    """Serving certificate (its own CA), service-account key pair and static tokens."""
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", "apiserver.key", "-out", "apiserver.crt", "-subj", "/CN=kube-apiserver",
        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        cwd=workdir,
    )  # fmt: skip
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=workdir)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=workdir)
    admin, kcm = secrets.token_hex(16), secrets.token_hex(16)
    (workdir / "tokens.csv").write_text(
        f"{admin},admin,admin-uid,system:masters\n{kcm},system:kube-controller-manager,kcm-uid\n"
    )
    return admin, kcm


def _start(name: str, argv: list[str], workdir: Path) -> _Process:
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            argv,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped as one
            preexec_fn=_die_with_parent,
        )
    return _Process(name, popen, log)


def _wait(
    what: str, probe: Any, processes: list[_Process], *, timeout_s: float = READY_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        for p in processes:
            p.check_alive()
        try:
            if probe():
                return
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.2)
    tails = "\n".join(f"--- {p.name}:\n{p.tail()}" for p in processes)
    raise TimeoutError(f"{what} not ready after {timeout_s:g}s ({last})\n{tails}")


def _kine(*, port: int) -> list[str]:
    # Its defaults listen on every interface (and metrics on :8080).
    return [
        f"--listen-address=127.0.0.1:{port}",
        "--metrics-bind-address=0",
        "--endpoint=memory://",
    ]


def _apiserver(*, port: int, kine_port: int) -> list[str]:
    return [
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={port}",
        f"--etcd-servers=http://127.0.0.1:{kine_port}",
        "--tls-cert-file=apiserver.crt",
        "--tls-private-key-file=apiserver.key",
        # Both CAs make it publish extension-apiserver-authentication complete, which the
        # controller-manager otherwise complains about forever.
        "--client-ca-file=apiserver.crt",
        "--requestheader-client-ca-file=apiserver.crt",
        "--service-account-key-file=sa.pub",
        "--service-account-signing-key-file=sa.key",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        "--token-auth-file=tokens.csv",
        "--authorization-mode=RBAC",
        "--service-cluster-ip-range=10.96.0.0/12",
        # With a loopback advertise address the default reconciler fails forever.
        "--endpoint-reconciler-type=none",
        "--profiling=false",
    ]


def _controller_manager(*, port: int, kubeconfig: Path) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        "--leader-elect=false",  # the only one
        "--service-account-private-key-file=sa.key",
        "--root-ca-file=apiserver.crt",
        "--use-service-account-credentials=true",
        "--profiling=false",
    ]


@contextlib.contextmanager
def control_plane(workdir: Path, *, kubectl: Path, bin_dir: Path = KUBE_BIN) -> Iterator[Cluster]:
    """Start kine, kube-apiserver and kube-controller-manager; stop them all on exit."""
    started = time.monotonic()
    admin_token, kcm_token = _credentials(workdir)
    kine_port, api_port, kcm_port = free_port(), free_port(), free_port()
    server = f"https://127.0.0.1:{api_port}"
    ca = workdir / "apiserver.crt"
    kubeconfig, kcm_config = workdir / "admin.kubeconfig", workdir / "kcm.kubeconfig"
    write_kubeconfig(kubeconfig, server=server, ca=ca, user="admin", token=admin_token)
    write_kubeconfig(kcm_config, server=server, ca=ca, user="kcm", token=kcm_token)
    processes: list[_Process] = []

    def start(name: str, flags: list[str]) -> None:
        processes.append(_start(name, [str(bin_dir / name), *flags], workdir))

    auth = {"Authorization": f"Bearer {admin_token}"}
    verify = ssl.create_default_context(cafile=ca)
    try:
        with httpx.Client(base_url=server, verify=verify, headers=auth, timeout=5) as admin:
            start("kine", _kine(port=kine_port))
            start("kube-apiserver", _apiserver(port=api_port, kine_port=kine_port))
            _wait("kube-apiserver", lambda: admin.get("/readyz").status_code == 200, processes)
            start(
                "kube-controller-manager", _controller_manager(port=kcm_port, kubeconfig=kcm_config)
            )
            # Its controllers start a few seconds after it is healthy; the service-account
            # controller creating `default` in the default namespace shows they run.
            default = "/api/v1/namespaces/default/serviceaccounts/default"
            _wait("kube-controller-manager", lambda: admin.get(default).is_success, processes)
        yield Cluster(
            server=server,
            ca=ca,
            kubeconfig=kubeconfig,
            workdir=workdir,
            kubectl_path=kubectl,
            startup_s=round(time.monotonic() - started, 2),
        )
    finally:
        # The API server before kine: with its storage gone it retries for about a minute.
        for p in reversed(processes):
            p.stop()
