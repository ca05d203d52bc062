"""Plays KServe's part in the cluster tests: InferenceServices become Ready local model servers.

The control plane the tests start (tests/k8s/cluster.py) has no kubelet and no KServe
controller, so an InferenceService the operator creates would never become Ready and no
rollout could start. This harness watches InferenceServices in the real API server and, for
each, does what KServe and the kubelet would:

- starts a real model server for the version it names (``turnout.dev/model`` and
  ``turnout.dev/version`` labels -> ``bentoml serve`` of ``model:version`` from the local model
  store, as ``turnout serve`` runs it, on a free loopback port), with the predictor container's
  environment (a version's ``env``, fault settings included) as the kubelet would give it; the
  image's Bento is the built-in fraud server unless ``--service MODEL=TARGET`` names the
  serving target of that model's images (``--service digits=examples/digits``);
- writes the status through the status subresource as KServe does: ``Ready=False`` while it
  starts, then ``url`` and ``address.url`` (``http://127.0.0.1:PORT``), ``Ready=True`` and
  ``observedGeneration``; a spec edit that changes the container's environment starts a
  new server (a new revision: the old one answers until the new one is Ready, then stops),
  any other edit only moves ``observedGeneration`` on;
- stops the server when the InferenceService is deleted;
- with ``--targets-file``, keeps a Prometheus file_sd file listing the Ready servers, as a
  PodMonitor would have Prometheus scrape the model pods.

In *fake readiness* mode (``--fake``, or ``--fake-namespace`` for some namespaces) it starts
nothing and marks each InferenceService Ready at once with the in-cluster address KServe
would give it: enough for the operator, which only reads the status, at the scale of the
benchmark (bench/operator_scale.py).

Test code, not product: ``python -m tests.k8s.kserve_harness --kubeconfig admin.kubeconfig``.
It prints one line per thing it does (``watching``, ``starting``, ``ready``, ``stopped``) for
the tests to wait on. SIGTERM stops it and every server it started.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from turnout.core import isvc
from turnout.io.kube import KSERVE_GROUP, KSERVE_PLURAL, KSERVE_VERSION
from turnout.io.processes import free_port, serve_command, terminate

#: Seconds a model server may take to answer /readyz (about 10 on a busy 2-core machine).
START_TIMEOUT_S = 120.0
#: Seconds one watch lasts before the harness lists again.
WATCH_S = 300

Obj = dict[str, Any]

_prctl = ctypes.CDLL(None, use_errno=True).prctl
_PR_SET_PDEATHSIG = 1


def stop_with_parent() -> None:
    """SIGTERM this child when its parent dies; run between fork and exec (preexec_fn)."""
    # SIGTERM, not SIGKILL: bentoml's arbiter then stops its own workers.
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_said = threading.Lock()


def say(*words: object) -> None:
    """One line on stdout (the tests wait for them), whole even when threads say things."""
    with _said:
        sys.stdout.write(" ".join(map(str, words)) + "\n")
        sys.stdout.flush()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ready_status(url: str, generation: int | None) -> Obj:
    """What KServe writes once the predictor answers: the URL, and Ready for this generation."""
    conditions = [
        {"type": t, "status": "True", "lastTransitionTime": _now()}
        for t in ("IngressReady", "PredictorReady", "Ready")
    ]
    return {
        "url": url,
        "address": {"url": url},
        "conditions": conditions,
        "observedGeneration": generation,
        "deploymentMode": "RawDeployment",
        "modelStatus": {
            "transitionStatus": "UpToDate",
            "states": {"activeModelState": "Loaded", "targetModelState": "Loaded"},
        },
    }


def starting_status(generation: int | None) -> Obj:
    condition = {
        "status": "False",
        "reason": "Starting",
        "message": "the model server is starting",
        "lastTransitionTime": _now(),
    }
    return {
        "conditions": [{**condition, "type": t} for t in ("PredictorReady", "Ready")],
        "observedGeneration": generation,
    }


def container_env(obj: Obj) -> dict[str, str]:
    """The predictor container's plain ``env`` entries (name -> value)."""
    containers = obj.get("spec", {}).get("predictor", {}).get("containers") or [{}]
    return {e["name"]: e["value"] for e in containers[0].get("env") or [] if "value" in e}


@dataclass
class Server:
    tag: str
    url: str
    process: subprocess.Popen[bytes] | None
    #: The generation the status was last written for.
    generation: int | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    #: The predictor container's environment it was started with.
    env: dict[str, str] = field(default_factory=dict)
    #: The server it replaces (a new revision), stopped once this one is Ready.
    previous: Server | None = None


class Harness:
    def __init__(
        self,
        api: Any,
        *,
        namespaces: frozenset[str] = frozenset(),
        fake: bool = False,
        fake_namespaces: frozenset[str] = frozenset(),
        host: str = "127.0.0.1",
        services: Mapping[str, str] | None = None,
        targets_file: Path | None = None,
    ) -> None:
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api)
        self.namespaces = namespaces
        self.fake = fake
        self.fake_namespaces = fake_namespaces
        self.host = host
        #: model -> the serving target its images hold (absent: the built-in fraud server).
        self.services = dict(services or {})
        self.targets_file = targets_file
        self.servers: dict[tuple[str, str], Server] = {}
        self._lock = threading.Lock()

    # --- the watch loop -------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        first = True
        while not stop.is_set():
            try:
                listed = self.custom.list_cluster_custom_object(
                    KSERVE_GROUP, KSERVE_VERSION, KSERVE_PLURAL
                )
            except ApiException as exc:
                say("list failed:", exc.status, exc.reason)
                stop.wait(1.0)
                continue
            items = [o for o in listed.get("items", []) if self._mine(o)]
            seen = {_key(o) for o in items}
            for key in [k for k in self.servers if k not in seen]:
                self.deleted(key)
            for obj in items:
                self.observed(obj)
            if first:
                say("watching", ",".join(sorted(self.namespaces)) or "all namespaces")
                first = False
            stream = watch.Watch().stream(
                self.custom.list_cluster_custom_object,
                KSERVE_GROUP,
                KSERVE_VERSION,
                KSERVE_PLURAL,
                resource_version=listed["metadata"]["resourceVersion"],
                timeout_seconds=WATCH_S,
            )
            try:
                for event in stream:
                    if stop.is_set():
                        return
                    kind, obj = event["type"], event["object"]
                    if kind == "ERROR":
                        break  # 410 Gone, most likely: list again
                    if kind == "BOOKMARK" or not self._mine(obj):
                        continue
                    if kind == "DELETED":
                        self.deleted(_key(obj))
                    else:
                        self.observed(obj)
            except ApiException as exc:
                say("watch ended:", exc.status, exc.reason)
            except Exception as exc:  # a dropped connection: list and watch again
                say("watch interrupted:", type(exc).__name__, exc)
                stop.wait(0.5)

    def _mine(self, obj: Obj) -> bool:
        return not self.namespaces or obj["metadata"]["namespace"] in self.namespaces

    # --- what KServe and the kubelet would do ----------------------------------------------

    def observed(self, obj: Obj) -> None:
        """An InferenceService was added or changed."""
        key = _key(obj)
        generation = obj["metadata"].get("generation")
        with self._lock:
            server = self.servers.get(key)
            if server is None:
                self.servers[key] = self._start(obj)
                return
            if generation == server.generation:
                return
            if server.process is not None and container_env(obj) != server.env:
                # A new revision, as KServe rolls the pods: the old server answers until the
                # new one is Ready (its URL then), and is stopped after.
                self.servers[key] = self._start(obj, previous=server)
                return
            # Another spec change: the same server, current again once observedGeneration
            # says so.
            server.generation = generation
            if server.ready.is_set():
                self._write(key, ready_status(server.url, generation))

    def _start(self, obj: Obj, previous: Server | None = None) -> Server:
        meta = obj["metadata"]
        ns, name = meta["namespace"], meta["name"]
        labels = meta.get("labels") or {}
        tag = f"{labels.get(isvc.MODEL_LABEL)}:{labels.get(isvc.VERSION_LABEL)}"
        generation = meta.get("generation")
        if self.fake or ns in self.fake_namespaces:
            # The Service address KServe gives a raw deployment's predictor.
            url = f"http://{name}-predictor.{ns}.svc.cluster.local"
            server = Server(tag, url, None, generation)
            self._write((ns, name), ready_status(url, generation))
            server.ready.set()
            say("ready", f"{ns}/{name}", tag, url, "(fake)")
            return server
        port = free_port()
        service = self.services.get(str(labels.get(isvc.MODEL_LABEL)))
        cmd, env = serve_command(
            tag, host=self.host, port=port, env=container_env(obj), service=service
        )
        log = open(f"{env['BENTOML_HOME']}/serve.log", "ab")  # noqa: SIM115
        process = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=stop_with_parent,
        )
        log.close()
        url = f"http://{self.host}:{port}"
        server = Server(tag, url, process, generation, env=container_env(obj), previous=previous)
        if previous is None:
            self._write((ns, name), starting_status(generation))
        say("starting", f"{ns}/{name}", tag, url, f"pid={process.pid}")
        # Registered by the caller before this thread can look it up: it holds the lock.
        threading.Thread(target=self._await_ready, args=((ns, name), server), daemon=True).start()
        return server

    def _await_ready(self, key: tuple[str, str], server: Server) -> None:
        assert server.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                say("exited", "/".join(key), server.tag, f"code={server.process.returncode}")
                return
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        else:
            say("timeout", "/".join(key), server.tag)
            return
        with self._lock:
            if self.servers.get(key) is not server:
                return  # deleted while starting
            # The latest generation seen, which a spec edit may have moved on meanwhile.
            self._write(key, ready_status(server.url, server.generation))
            server.ready.set()
            self._write_targets()
            previous, server.previous = server.previous, None
        say("ready", "/".join(key), server.tag, server.url)
        while previous is not None:  # every revision it replaces
            self._stop(key, previous)
            previous = previous.previous

    def deleted(self, key: tuple[str, str]) -> None:
        with self._lock:
            server = self.servers.pop(key, None)
            if server is not None:
                self._write_targets()
        while server is not None:
            self._stop(key, server)
            server = server.previous

    def _stop(self, key: tuple[str, str], server: Server) -> None:
        if server.process is not None:
            terminate(server.process.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.process.wait(timeout=10)
        say("stopped", "/".join(key), server.tag, server.url)

    def stop_all(self) -> None:
        # At once: each model server takes a few seconds to stop.
        stopping = [threading.Thread(target=self.deleted, args=(k,)) for k in list(self.servers)]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join()

    def _write_targets(self) -> None:
        """The Ready model servers as Prometheus file_sd targets, replaced atomically (the
        caller holds the lock)."""
        if self.targets_file is None:
            return
        targets = [
            {
                "targets": [server.url.removeprefix("http://")],
                "labels": {"namespace": ns, "inferenceservice": name},
            }
            for (ns, name), server in sorted(self.servers.items())
            if server.process is not None and server.ready.is_set()
        ]
        partial = self.targets_file.with_suffix(".partial")
        partial.write_text(json.dumps(targets))
        os.replace(partial, self.targets_file)

    def _write(self, key: tuple[str, str], status: Obj) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.custom.patch_namespaced_custom_object_status(
                KSERVE_GROUP,
                KSERVE_VERSION,
                key[0],
                KSERVE_PLURAL,
                key[1],
                {"status": status},
                _content_type="application/merge-patch+json",
            )
        except ApiException as exc:
            if exc.status != 404:  # deleted meanwhile: its DELETED event follows
                say("status write failed", "/".join(key), exc.status, exc.reason)


def _key(obj: Obj) -> tuple[str, str]:
    return obj["metadata"]["namespace"], obj["metadata"]["name"]


@contextlib.contextmanager
def _signals_stop(stop: threading.Event) -> Iterator[None]:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    yield


def main(argv: list[str] | None = None) -> None:
    from kubernetes import config

    parser = argparse.ArgumentParser(prog="python -m tests.k8s.kserve_harness", description=__doc__)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--namespace", action="append", default=[], help="only these (repeatable)")
    parser.add_argument("--fake", action="store_true", help="fake readiness everywhere")
    parser.add_argument("--fake-namespace", action="append", default=[], help="fake readiness here")
    parser.add_argument(
        "--service",
        action="append",
        default=[],
        metavar="MODEL=TARGET",
        help="what `bentoml serve` runs for this model's images (repeatable)",
    )
    parser.add_argument("--targets-file", type=Path, help="Prometheus file_sd of Ready servers")
    args = parser.parse_args(argv)
    harness = Harness(
        config.new_client_from_config(config_file=args.kubeconfig),
        namespaces=frozenset(args.namespace),
        fake=args.fake,
        fake_namespaces=frozenset(args.fake_namespace),
        services=dict(pair.split("=", 1) for pair in args.service),
        targets_file=args.targets_file,
    )
    stop = threading.Event()
    # The watch blocks in a socket read; a daemon thread lets SIGTERM end the process at once.
    watcher = threading.Thread(target=harness.run, args=(stop,), daemon=True)
    with _signals_stop(stop):
        watcher.start()
        while not stop.wait(0.5) and watcher.is_alive():
            pass
    harness.stop_all()
    say("exiting")
    sys.exit(0)


if __name__ == "__main__":
    main()
