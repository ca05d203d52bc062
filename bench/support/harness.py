"""Shared pieces of the benchmarks in bench/: processes, readiness, HTTP, and the load clients.

Every bench script prints exactly one JSON object as the last line of stdout; progress goes to
stderr through ``log``. Servers run in sessions of their own (``Processes``) so a whole process
tree can be stopped; ``run_wrk``, ``run_aio`` and ``run_openloop`` run the load generators as
separate processes and return their JSON summaries.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # bench/support/harness.py -> the repository
BENCH = ROOT / "bench"
SUPPORT = BENCH / "support"
VENV_PY = ROOT / ".venv" / "bin" / "python"
PY = str(VENV_PY if VENV_PY.exists() else Path(sys.executable))


def log(msg: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


# --- processes ------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    cmd: list[str]
    env: dict[str, str]
    port: int
    ready_path: str
    log_path: Path
    metrics_sum: str | None = None  # histogram name whose _sum/_count give the mean batch size
    proc: subprocess.Popen[bytes] | None = None
    ready_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def proc_table() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, starttime, utime+stime in ticks) for every process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode()
        except OSError:
            continue
        # after "(comm) ": state ppid pgrp session ... utime(14) stime(15) ... starttime(22)
        fields = stat[stat.rfind(")") + 2 :].split()
        table[int(entry)] = (int(fields[1]), int(fields[19]), int(fields[11]) + int(fields[12]))
    return table


def tree(root: int, table: dict[int, tuple[int, int, int]]) -> list[int]:
    """root and all its live descendants (bentoml's workers run in sessions of their own, so
    process groups do not cover them; the parent links do)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            out.append(pid)
            todo.extend(children.get(pid, []))
    return out


def tree_cpu_seconds(root: int) -> float:
    table = proc_table()
    return sum(table[p][2] for p in tree(root, table)) / os.sysconf("SC_CLK_TCK")


class Processes:
    """Every subprocess starts in a session of its own; stop_all() ends each one's whole tree:
    SIGTERM to its process group (bentoml's arbiter then stops its workers), then SIGKILL to
    any process of the tree still alive (matched by pid and start time, so never a stranger)."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.known: dict[int, int] = {}  # pid -> start time of every descendant seen

    def start(self, name: str, cmd: list[str], env: dict[str, str], log_path: Path) -> Any:
        out = open(log_path, "wb")  # noqa: SIM115 - the child holds its own copy
        proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        out.close()
        self.procs.append((name, proc))
        return proc

    def remember(self) -> None:
        """Record the current descendants (call once servers are up)."""
        table = proc_table()
        for _, proc in self.procs:
            for pid in tree(proc.pid, table):
                self.known[pid] = table[pid][1]

    def stop_all(self) -> None:
        self.remember()
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"{name} did not stop on SIGTERM within 15s; killing it")
        time.sleep(0.2)
        table = proc_table()
        for pid, started in self.known.items():
            if pid in table and table[pid][1] == started:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        for _, proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self.procs.clear()
        self.known.clear()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(
    method: str, url: str, body: bytes | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def wait_ready(servers: list[Server], timeout: float = 180.0) -> None:
    t0 = time.monotonic()
    pending = list(servers)
    while pending:
        for s in list(pending):
            assert s.proc is not None
            if s.proc.poll() is not None:
                raise RuntimeError(
                    f"{s.name} exited with {s.proc.returncode} before it was ready:\n"
                    f"{tail(s.log_path)}"
                )
            with contextlib.suppress(OSError):
                status, _ = http("GET", s.base + s.ready_path, timeout=1.0)
                if status == 200:
                    s.ready_s = round(time.monotonic() - t0, 1)
                    log(f"{s.name} ready on :{s.port} after {s.ready_s}s")
                    pending.remove(s)
        if time.monotonic() - t0 > timeout:
            names = ", ".join(s.name for s in pending)
            raise RuntimeError(f"not ready after {timeout}s: {names}\n{tail(pending[0].log_path)}")
        time.sleep(0.25)


# --- clients --------------------------------------------------------------------------------


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def wrk_missing() -> bool:
    """True, after saying how to install it, when wrk is not on PATH."""
    import shutil

    if shutil.which("wrk") is not None:
        return False
    log("wrk is not installed: apt-get install -y wrk (the Makefile bench target does this)")
    return True


def _header_args(headers: dict[str, str] | None) -> list[str]:
    return [a for k, v in (headers or {}).items() for a in ("--header", f"{k}: {v}")]


def run_wrk(
    url: str,
    body_file: Path,
    connections: int,
    duration: float,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    env = {**os.environ, "WRK_BODY_FILE": str(body_file)}
    if headers:  # wrk_post.lua: one "Name: value" per line
        env["WRK_HEADERS"] = "\n".join(f"{k}: {v}" for k, v in headers.items())
    cmd = [
        "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
        "-s", str(SUPPORT / "wrk_post.lua"), url,
    ]  # fmt: skip
    cpu0 = children_cpu()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration + 60)
    cpu = children_cpu() - cpu0
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout}\n{out.stderr}")
    d = json.loads(line[len("WRK_JSON ") :])
    secs = d["duration_us"] / 1e6
    errors = sum(d[k] for k in ("errors_connect", "errors_read", "errors_write", "errors_timeout"))
    return {
        "client": "wrk",
        "connections": connections,
        "duration_s": round(secs, 3),
        "requests": d["requests"],
        "rps": round(d["requests"] / secs, 1),
        "non_2xx": d["errors_status"],
        "errors": errors,
        "mean_ms": round(d["mean_us"] / 1000, 3),
        "p50_ms": round(d["p50_us"] / 1000, 3),
        "p90_ms": round(d["p90_us"] / 1000, 3),
        "p99_ms": round(d["p99_us"] / 1000, 3),
        "max_ms": round(d["max_us"] / 1000, 3),
        "client_cpu_util": round(cpu / secs, 3),
    }


def run_aio(
    url: str,
    body_file: Path,
    connections: int,
    duration: float,
    warmup: float,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    cmd = [
        PY, str(SUPPORT / "aioclient.py"), "client", "--url", url, "--body-file", str(body_file),
        "--connections", str(connections), "--duration", str(duration), "--warmup", str(warmup),
        *_header_args(headers),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + warmup + 60)
    if out.returncode != 0:
        raise RuntimeError(f"aioclient failed ({out.returncode}): {out.stderr[-2000:]}")
    d: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    sample = d.pop("over_100ms_sample", [])
    # Slow requests whose [start, end] overlap are one stall: [start s, longest latency ms].
    stalls: list[list[float]] = []
    end = -1.0
    for start, ms in sorted(sample):
        if start > end:
            stalls.append([start, ms])
        else:
            stalls[-1][1] = max(stalls[-1][1], ms)
        end = max(end, start + ms / 1000)
    d["stalls_over_100ms"] = stalls
    for k in ("url", "pid", "loop", "error_sample", "client_cpu_s"):
        d.pop(k, None)
    return d


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def ratio(a: float | None, b: float | None) -> float | None:
    if not a or not b:
        return None
    return round(a / b, 3)


def run_openloop(
    url: str,
    body_file: Path,
    rate: float,
    duration: float,
    warmup: float,
    connections: int = 8,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """bench/support/aioclient.py openloop: fixed-rate load, latency from the scheduled time."""
    cmd = [
        PY, str(SUPPORT / "aioclient.py"), "openloop", "--url", url, "--body-file", str(body_file),
        "--rate", str(rate), "--duration", str(duration), "--warmup", str(warmup),
        "--connections", str(connections), *_header_args(headers),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + warmup + 60)
    if out.returncode != 0:
        raise RuntimeError(f"aioclient openloop failed ({out.returncode}): {out.stderr[-2000:]}")
    d: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    for k in ("url", "pid", "loop", "client_cpu_s"):
        d.pop(k, None)
    return d


def scrape_counter(base: str, name: str) -> dict[str, float] | None:
    """Every sample of a Prometheus counter on base/metrics, by label set ('' when unlabelled);
    None when /metrics does not answer."""
    try:
        status, body = http("GET", base + "/metrics")
    except OSError:
        return None
    if status != 200:
        return None
    out: dict[str, float] = {}
    for line in body.decode(errors="replace").splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        rest = key[len(name) :]
        if rest and not rest.startswith("{"):
            continue  # another metric sharing the prefix
        out[rest] = out.get(rest, 0.0) + float(value)
    return out


# --- turnout processes ----------------------------------------------------------------------

TURNOUT = str(ROOT / ".venv" / "bin" / "turnout")
V2_ROW = [52.3, 14, 40, 500, 3.2, 2, 40, 1.3, 0.2, 0.8, 0, 1, 0, 1]


def v2_body(row: list[float] = V2_ROW) -> bytes:
    """A single-row Open Inference Protocol (v2) request for the fraud model."""
    tensor = {"name": "features", "shape": [1, len(row)], "datatype": "FP32", "data": row}
    return json.dumps({"inputs": [tensor]}).encode()


def turnout_env(home: Path) -> dict[str, str]:
    """The environment of a turnout process: this run's TURNOUT_HOME, nothing inherited that
    could point it elsewhere, one worker and one torch thread (the defaults, made explicit)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TURNOUT_", "BENTOML_"))}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        TURNOUT_HOME=str(home),
        TURNOUT_WORKERS="1",
        TURNOUT_TORCH_THREADS="1",
        BENTOML_DO_NOT_TRACK="true",
        PYTHONUNBUFFERED="1",
    )
    return env


def train(home: Path, version: str, *, seed: int = 0, rows: int = 20_000) -> None:
    t = time.monotonic()
    cmd = [TURNOUT, "train", "--version", version, "--rows", str(rows), "--seed", str(seed)]
    subprocess.run(
        cmd, env=turnout_env(home), cwd=ROOT, check=True, stdout=sys.stderr, stderr=sys.stderr
    )
    log(f"trained fraud:{version} (seed {seed}, {rows} rows) in {time.monotonic() - t:.1f}s")


def router_available() -> bool:
    """True once `turnout route` exists (the router ships separately from the model server)."""
    out = subprocess.run([TURNOUT, "route", "--help"], capture_output=True, cwd=ROOT)
    return out.returncode == 0


def model_server(name: str, home: Path, tag: str) -> Server:
    port = free_port()
    cmd = [TURNOUT, "serve", tag, "--host", "127.0.0.1", "--port", str(port)]
    return Server(name, cmd, turnout_env(home), port, "/readyz", home / f"{name}.log")


def router_server(
    name: str, home: Path, routes: dict[str, Any], *, api_keys: Path | None = None
) -> Server:
    """`turnout route` over a route file written from ``routes`` (JSON is valid YAML); with
    ``api_keys``, authentication on (``--api-keys``)."""
    path = home / f"{name}.routes.json"
    path.write_text(json.dumps(routes, indent=2))
    port = free_port()
    cmd = [TURNOUT, "route", "--routes", str(path), "--host", "127.0.0.1", "--port", str(port)]
    if api_keys is not None:
        cmd += ["--api-keys", str(api_keys)]
    server = Server(name, cmd, turnout_env(home), port, "/v2/health/ready", home / f"{name}.log")
    server.extra["routes"] = routes
    return server


def noop_server(name: str, home: Path) -> Server:
    """bench/support/aioclient.py server: answers anything at once with a fixed v2 body."""
    port = free_port()
    cmd = [PY, str(SUPPORT / "aioclient.py"), "server", "--port", str(port)]
    return Server(name, cmd, dict(os.environ), port, "/", home / f"{name}.log")


def relay_server(name: str, home: Path, upstream: Server) -> Server:
    """bench/support/aioclient.py relay in front of ``upstream``: a proxy hop that does nothing."""
    port = free_port()
    cmd = [PY, str(SUPPORT / "aioclient.py"), "relay", "--port", str(port)]
    cmd += ["--upstream", upstream.base]
    return Server(name, cmd, dict(os.environ), port, upstream.ready_path, home / f"{name}.log")


def start(procs: Processes, servers: list[Server], timeout: float = 180.0) -> None:
    """Start every server, wait until each is ready, and remember their process trees."""
    for s in servers:
        s.proc = procs.start(s.name, s.cmd, s.env, s.log_path)
    wait_ready(servers, timeout)
    procs.remember()


def post(
    url: str, body: bytes, timeout: float = 10.0, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """POST JSON; (status, lower-cased headers, body)."""
    req = urllib.request.Request(url, data=body, method="POST")
    req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def probability(body: bytes) -> float:
    out = json.loads(body)["outputs"][0]
    if out["name"] != "probability" or out["shape"] != [1]:
        raise RuntimeError(f"unexpected v2 output {out}")
    return float(out["data"][0])


def cpu_of(servers: list[Server]) -> dict[str, float]:
    """CPU seconds used so far by each server's process tree."""
    return {s.name: tree_cpu_seconds(s.proc.pid) for s in servers if s.proc is not None}


def percentile_summary(values: list[float]) -> dict[str, float]:
    return {"median": median(values), "min": round(min(values), 3), "max": round(max(values), 3)}


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores, not idle or iowait), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    # guest time is already counted in user and nice
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Meter:
    """CPU use while a load runs: each watched server's process tree, the load generator (the
    waited-for child processes of this script), the whole machine, and what is left: other
    processes on the machine, whose load makes a run noisy."""

    def __init__(self, watch: list[Server]) -> None:
        self.watch = watch
        self.t0 = time.monotonic()
        self.servers0 = cpu_of(watch)
        self.client0 = children_cpu()
        self.machine0 = machine_busy_seconds()

    def stop(self) -> dict[str, Any]:
        wall = max(1e-9, time.monotonic() - self.t0)
        servers1 = cpu_of(self.watch)
        util = {n: (servers1[n] - self.servers0[n]) / wall for n in self.servers0 if n in servers1}
        client = (children_cpu() - self.client0) / wall
        machine = (machine_busy_seconds() - self.machine0) / wall
        return {
            "cpu_util": {n: round(v, 3) for n, v in util.items()},
            "client_cpu_util_total": round(client, 3),
            "machine_cpu_util": round(machine, 3),
            "other_cpu_util": round(max(0.0, machine - client - sum(util.values())), 3),
        }


# --- the digits example (examples/digits) ----------------------------------------------------

DIGITS = ROOT / "examples" / "digits"


def server_home(tmp: Path, name: str) -> Path:
    """A BENTOML_HOME of its own (own prometheus dir) sharing the one model store in
    ``tmp/bentoml``: `bentoml serve` wipes $BENTOML_HOME/prometheus_multiproc_dir at start-up,
    so servers sharing a BENTOML_HOME would erase (and then mix) each other's /metrics."""
    home = tmp / "homes" / name
    home.mkdir(parents=True)
    (home / "models").symlink_to(tmp / "bentoml" / "models", target_is_directory=True)
    return home


def train_digits(env: dict[str, str]) -> str:
    """examples/digits/train.py into env's BENTOML_HOME; returns the new version's tag."""
    t = time.monotonic()
    out = subprocess.run(
        [PY, "train.py"], cwd=DIGITS, env=env, capture_output=True, text=True, check=True
    )
    metrics, tag = out.stdout.strip().splitlines()[-2:]
    log(f"trained {tag} ({metrics}) in {time.monotonic() - t:.1f}s")
    return tag


def digits_image(index: int = 0) -> list[list[list[float]]]:
    """One of scikit-learn's 8x8 digits as the model reads it: [1, 8, 8] raw pixels 0..16."""
    from sklearn.datasets import load_digits

    image: list[list[float]] = load_digits().images[index].tolist()
    return [image]


def digits_v2_body(index: int = 0) -> bytes:
    """A single-image Open Inference Protocol (v2) request for the digits model."""
    data = [v for row in digits_image(index)[0] for v in row]
    tensor = {"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": data}
    return json.dumps({"inputs": [tensor]}).encode()


def digits_probabilities(body: bytes) -> list[float]:
    """The one row of class probabilities in a digits v2 reply."""
    out = json.loads(body)["outputs"][0]
    if out["name"] != "probabilities" or out["shape"] != [1, 10]:
        raise RuntimeError(f"unexpected digits output {out}")
    return [float(v) for v in out["data"]]


def digits_sdk_cmd(port: int) -> list[str]:
    """The digits example's SDK server (`bentoml serve service:Digits`) on ``port``."""
    return [
        PY, "-m", "bentoml", "serve", "service:Digits", "--working-dir", str(DIGITS),
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip


# --- profiling --------------------------------------------------------------------------------

PYSPY = str(ROOT / ".venv" / "bin" / "py-spy")


def start_profile(pid: int, seconds: float, out: Path, rate: int = 250) -> Any:
    """py-spy record of a running process into collapsed stacks (``--format raw``), without
    pausing it (``--nonblocking``); idle samples are left out, so samples ~ CPU time."""
    cmd = [
        PYSPY, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
        "--rate", str(rate), "--format", "raw", "--nolineno", "--nonblocking", "-o", str(out),
    ]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


#: Where a frame's file belongs, first match wins (py-spy shortens paths to the package part).
_AREAS = (
    ("services/router/upstream", "router's upstream client (services/router/upstream.py)"),
    ("services/router/auth", "API key check"),
    ("api_keys", "API key check"),
    ("services/router/", "router (services/router)"),
    ("services/", "turnout services"),
    ("turnout/", "turnout"),
    ("aiohttp/", "aiohttp client"),
    ("yarl/", "aiohttp client"),
    ("multidict/", "aiohttp client"),
    ("uvicorn/", "uvicorn"),
    ("h11/", "uvicorn"),
    ("httptools/", "uvicorn"),
    ("prometheus_client/", "prometheus_client"),
    ("logging/", "logging"),
    ("asyncio/", "asyncio"),
    ("uvloop/", "asyncio"),
    ("uuid.py", "uuid"),
    ("pydantic", "pydantic"),
    ("numpy/", "numpy"),
    ("orjson", "orjson"),
)


def _area(frame: str) -> str:
    where = frame[frame.rfind("(") + 1 : -1] if frame.endswith(")") else frame
    for needle, area in _AREAS:
        if needle in where:
            return area
    return "other: " + where.rsplit("/", 1)[-1] if where else "other"


def collapsed_summary(path: Path, top: int = 15) -> dict[str, Any]:
    """Top functions of a py-spy collapsed-stack file: by self samples (where the CPU went), by
    inclusive samples (what it was doing), and self samples by area (package)."""
    self_n: dict[str, int] = {}
    incl_n: dict[str, int] = {}
    area_self: dict[str, int] = {}
    area_incl: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        self_n[frames[-1]] = self_n.get(frames[-1], 0) + n
        area_self[_area(frames[-1])] = area_self.get(_area(frames[-1]), 0) + n
        for f in set(frames):
            incl_n[f] = incl_n.get(f, 0) + n
        for a in {_area(f) for f in frames}:
            area_incl[a] = area_incl.get(a, 0) + n

    def ranked(d: dict[str, int], k: int) -> list[list[Any]]:
        items = sorted(d.items(), key=lambda kv: -kv[1])[:k]
        return [[name, round(100 * n / max(1, total), 1)] for name, n in items]

    return {
        "samples": total,
        "self_pct_by_area": ranked(area_self, 20),
        "inclusive_pct_by_area": ranked(area_incl, 20),
        "top_self_pct": ranked(self_n, top),
        "top_inclusive_pct": ranked(incl_n, top + 10),
    }


def run_in_tempdir(
    prefix: str,
    args: Any,
    run: Any,
) -> int:
    """Run ``run(args, tmp, procs, started)`` in a fresh temporary directory, then stop every
    process it started and remove the directory (kept with ``args.keep``). SIGTERM stops it
    cleanly too."""
    import shutil
    import tempfile

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    procs = Processes()
    try:
        return int(run(args, tmp, procs, started))
    finally:
        procs.stop_all()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
