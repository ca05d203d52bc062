"""Model-server processes for the versions the local ModelDeployments name.

The laptop's stand-in for KServe creating one InferenceService per version: ``ensure()`` is
told which versions must run (with their env and serving target), starts what is missing on a
free port, stops what is no longer wanted, restarts a server that died (with backoff), and
answers with the base URL of each server that is ready. Readiness is polled without blocking,
so a server that takes a minute to start never delays a rollback.

A server that cannot load its model fails the same way every time: after
``MAX_FAILED_STARTS`` failed starts in a row the version is given up on (``failures``, with the
exception from its log) instead of being restarted forever, until it is no longer wanted.
A failed start is a server that exits, or whose worker logs BentoML's "Application startup
failed" (BentoML itself would restart that worker forever), or that is not ready in time.

Servers run in their own sessions and are recorded in ``$TURNOUT_HOME/run/servers.json``: if
the controller loop crashes they keep serving, and the next loop adopts them instead of
starting new ones — a restart loses no traffic.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from turnout.io.processes import failure_reason, free_port, serve_command, terminate

log = logging.getLogger("turnout.controller")

#: Seconds between readiness probes of a starting server.
PROBE_EVERY_S = 0.25
#: A server that is not ready after this long is killed and started again.
START_TIMEOUT_S = 180.0
#: Failed starts in a row after which a version is not started again.
MAX_FAILED_STARTS = 3
#: What BentoML logs when a worker's service could not be created (e.g. its model failed to
#: load); its arbiter then restarts the worker forever, so the supervisor counts it as failed.
STARTUP_FAILED = b"Application startup failed"
#: A version leaving the route table keeps serving this long: the router reloads its table
#: within 0.2 s, and requests it sends meanwhile should not meet a server shutting down.
DRAIN_S = 1.0


@dataclass(frozen=True)
class Want:
    """A version that must be served: ``model:version``, extra environment, and the serving
    target ``bentoml serve`` runs (None: the built-in fraud server)."""

    tag: str
    env: tuple[tuple[str, str], ...] = ()
    service: str | None = None

    @property
    def key(self) -> str:
        key = self.tag
        if self.env:
            key += "?" + "&".join(f"{k}={v}" for k, v in self.env)
        if self.service is not None:
            key += "@" + self.service
        return key


@dataclass(frozen=True)
class Failure:
    """A version given up on: its server failed ``starts`` starts in a row."""

    want: Want
    starts: int
    #: The exception in the last attempt's log (else its last line).
    reason: str
    log: Path

    def describe(self) -> str:
        return (
            f"{self.want.tag}'s server failed {self.starts} starts in a row, not restarted: "
            f"{self.reason} (log {self.log})"
        )


@dataclass
class Server:
    want: Want
    port: int
    pid: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    ready: bool = False
    started: float = field(default_factory=time.monotonic)
    next_probe: float = 0.0
    restarts: int = 0
    #: Starts in a row that never became ready (this one not counted).
    failed_starts: int = 0
    #: How far the log has been searched for STARTUP_FAILED.
    log_offset: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def startup_failed(self) -> bool:
        """The server's log says its worker could not start (read on from the last look)."""
        start = max(self.log_offset - len(STARTUP_FAILED), 0)  # the marker may straddle
        try:
            with open(self.log, "rb") as f:
                f.seek(start)
                chunk = f.read()
        except OSError:
            return False
        self.log_offset = start + len(chunk)
        return STARTUP_FAILED in chunk

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        try:
            return bool(psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            return False


class Supervisor:
    def __init__(self, home: Path, *, targets_file: Path | None = None) -> None:
        self.home = home
        self.state_file = home / "run" / "servers.json"
        self.log_dir = home / "logs"
        self.targets_file = targets_file
        self.servers: dict[str, Server] = {}
        #: Servers no longer wanted, with the time they may be stopped.
        self.draining: dict[str, tuple[Server, float]] = {}
        #: Versions given up on, by key; forgotten when no longer wanted (wanting one again
        #: starts it afresh).
        self.failures: dict[str, Failure] = {}
        self._client = httpx.Client(timeout=0.5)
        self._adopt()

    # --- the one entry point ------------------------------------------------------------

    def ensure(self, wanted: Mapping[str, Want], *, retry: Iterable[str] = ()) -> dict[str, str]:
        """Make the servers match ``wanted`` (key -> Want); URLs of those ready, by key.

        ``retry``: keys given up on (``failures``) to start afresh, e.g. after a spec edit.
        """
        changed = False
        now = time.monotonic()
        for key in retry:
            self.failures.pop(key, None)
        for key in list(self.servers):
            if key not in wanted:
                self.draining[key] = (self.servers.pop(key), now + DRAIN_S)
                changed = True
        for key, (leaving, until) in list(self.draining.items()):
            if key in wanted:  # wanted again before it stopped: keep it
                self.servers[key] = self.draining.pop(key)[0]
            elif now >= until:
                del self.draining[key]
                self._stop(leaving)
                changed = True
        for key in list(self.failures):
            if key not in wanted:
                del self.failures[key]
        for key, want in wanted.items():
            if key in self.failures:
                continue
            server = self.servers.get(key)
            if server is None:
                self.servers[key] = self._start(want)
                changed = True
                continue
            if not server.alive():
                if server.ready:
                    log.warning("%s (port %d) exited; starting it again", key, server.port)
                    self.servers[key] = self._start(want, restarts=server.restarts + 1)
                else:
                    self._failed_start(key, server, "exited before it was ready")
                changed = True
                continue
            if not server.ready and now >= server.next_probe:
                server.next_probe = now + PROBE_EVERY_S
                if self._probe(server):
                    server.ready = True
                    server.failed_starts = 0
                    changed = True
                    log.info("%s ready at %s", key, server.url)
                elif server.startup_failed():
                    self._stop(server)
                    self._failed_start(key, server, "could not start its service")
                    changed = True
                elif now - server.started > START_TIMEOUT_S:
                    self._stop(server)
                    self._failed_start(key, server, f"not ready after {START_TIMEOUT_S:.0f}s")
                    changed = True
        if changed:
            self._save()
        return {k: s.url for k, s in self.servers.items() if s.ready}

    def _failed_start(self, key: str, server: Server, what: str) -> None:
        """Start ``server``'s version again, or give up on it after MAX_FAILED_STARTS."""
        failed = server.failed_starts + 1
        reason = _log_reason(server.log)
        if failed < MAX_FAILED_STARTS:
            log.warning(
                "%s (port %d) %s (start %d of %d): %s; starting it again",
                key,
                server.port,
                what,
                failed,
                MAX_FAILED_STARTS,
                reason,
            )
            self.servers[key] = self._start(
                server.want, restarts=server.restarts + 1, failed_starts=failed
            )
            return
        del self.servers[key]
        failure = Failure(want=server.want, starts=failed, reason=reason, log=server.log)
        self.failures[key] = failure
        log.error("%s: %s", key, failure.describe())

    def stop_all(self) -> None:
        servers = [*self.servers.values(), *(s for s, _ in self.draining.values())]
        self.servers, self.draining = {}, {}
        threads = [self._stop(s) for s in servers]
        for t in threads:
            t.join()
        self._save()

    # --- processes ----------------------------------------------------------------------

    def _log_path(self, want: Want, port: int) -> Path:
        return self.log_dir / f"{want.tag.replace(':', '-')}-{port}.log"

    def _start(self, want: Want, *, restarts: int = 0, failed_starts: int = 0) -> Server:
        port = free_port()
        cmd, env = serve_command(
            want.tag, host="127.0.0.1", port=port, env=dict(want.env), service=want.service
        )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self._log_path(want, port)
        with open(log_path, "ab") as out:
            # Own session: Ctrl-C in a terminal reaches the controller, which stops servers in
            # order; a crashed controller leaves them serving for the next one to adopt.
            proc = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        log.info("starting %s on port %d (log %s)", want.key, port, log_path)
        server = Server(
            want=want,
            port=port,
            pid=proc.pid,
            proc=proc,
            log=log_path,
            restarts=restarts,
            failed_starts=failed_starts,
        )
        # Back off a crash-looping server: 0.25 s, 0.5 s, 1 s ... up to 30 s before probing.
        server.next_probe = time.monotonic() + min(PROBE_EVERY_S * 2**restarts, 30.0)
        return server

    def _stop(self, server: Server) -> threading.Thread:
        """Stop a server and its workers in the background (a rollback must not wait on it)."""
        log.info("stopping %s (port %d)", server.want.key, server.port)
        thread = threading.Thread(target=terminate, args=(server.pid,), daemon=True)
        thread.start()
        if server.proc is not None:
            threading.Thread(target=server.proc.wait, daemon=True).start()  # reap it
        return thread

    def _probe(self, server: Server) -> bool:
        try:
            return self._client.get(f"{server.url}/v2/health/ready").status_code == 200
        except httpx.HTTPError:
            return False

    # --- surviving a controller restart ---------------------------------------------------

    def _save(self) -> None:
        alive = {**{k: s for k, (s, _) in self.draining.items()}, **self.servers}
        doc = {
            key: {
                "tag": s.want.tag,
                "env": s.want.env,
                "service": s.want.service,
                "port": s.port,
                "pid": s.pid,
            }
            for key, s in alive.items()
        }
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, self.state_file)
        if self.targets_file is not None:
            self._write_targets()

    def _adopt(self) -> None:
        try:
            doc = json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return
        for key, entry in doc.items():
            want = Want(entry["tag"], tuple((k, v) for k, v in entry["env"]), entry.get("service"))
            port = int(entry["port"])
            server = Server(
                want=want, port=port, pid=int(entry["pid"]), log=self._log_path(want, port)
            )
            if server.alive() and _is_ours(server.pid, want.tag):
                log.info("adopting %s still serving on port %d", key, server.port)
                self.servers[key] = server

    def _write_targets(self) -> None:
        """Prometheus file_sd targets: every model server, labelled with its version."""
        assert self.targets_file is not None
        targets = []
        for s in self.servers.values():
            model, _, version = s.want.tag.partition(":")
            labels = {"model": model, "version": version}
            targets.append({"targets": [f"127.0.0.1:{s.port}"], "labels": labels})
        self.targets_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(targets))
        os.replace(tmp, self.targets_file)


def _log_reason(path: Path) -> str:
    """The exception a server's log ends with (its last 64 KiB are enough)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - 65536, 0))
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return failure_reason(text)


def _is_ours(pid: int, tag: str) -> bool:
    """The pid is still a model server for ``tag`` (not a recycled pid)."""
    try:
        env = psutil.Process(pid).environ()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return bool(env.get("TURNOUT_MODEL") == tag)
