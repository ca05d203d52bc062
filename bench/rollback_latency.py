"""Benchmark: how soon after `turnout rollback` returns no request reaches the candidate.

    .venv/bin/python bench/rollback_latency.py [--trials 20] [--rate 200] [--quiet 1.5] [--keep]

One line per trial and, LAST, one JSON object go to stdout; progress goes to stderr.

Target: the router stops sending to the candidate at most 1 s after the command (local),
measured under steady traffic: `max_ms` <= 1000 over all trials.

The whole local platform runs as a user runs it (turnout/cli/platform.py: the controller, which
starts a model server per version and writes the route table, and the router in front), in a
temporary TURNOUT_HOME with fraud:v1 as stable. bench/support/recorded_traffic.py sends a
steady `--rate` of single-row requests with random sticky user ids and records each request's
send and reply times and the version that answered. Each trial:

1. `turnout deploy fraud --version v2 --steps 50 --interval 1h`: a canary whose only step
   puts half the keys on v2 and stays there; the trial waits until v2 answers requests and
   then a random 0.5-1.5 s more, so the rollback lands at a random point of the controller's
   and the router's poll cycles;
2. `turnout rollback fraud` as a subprocess, exactly what an operator runs; t0 is the moment
   it returns;
3. the trial ends once `--quiet` seconds of traffic, with nothing in flight from before, got
   no reply from v2; then it waits for phase RolledBack and for v2's server to have exited.

Latency is ``max(0, S - t0)`` where S is the send time of the last request the router sent to
v2: every request sent after S went to stable. "Sent to v2" counts the requests v2 answered
and those whose v2 call failed and the router retried on stable (`x-turnout-retried`), which
happens when v2's server is stopped before the router has reloaded the table;
`*_answered_ms` leave the retried ones out. Send time, not reply time, because a request sent
before the switch may be answered after it; the reply-based figure (`*_recv_ms`) is reported
too. `signed_ms` keeps the sign: negative when the router had switched before the command
even returned (the CLI's interpreter exit comes after its write).

Where the time goes, per trial (file times are the filesystem's coarse wall clock, a few ms):
`command_ms` (the CLI run), `spec_written_ms` (the CLI's write of the deployment file, from
the command's start), `controller_ms` (from that write to the route table without v2: the
controller's 0.1 s poll plus one pass) and `router_ms` (from the route-table write to the last
request sent to v2: the router's 0.2 s file poll, plus the gap between v2's requests).

Cross-check: the router's own count of attempts on v2 (`turnout_router_upstream_calls_total`)
must equal the requests the client saw reach v2, so none went unseen (`valid`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import yaml
from support.harness import (
    ROOT,
    TURNOUT,
    Processes,
    log,
    run_in_tempdir,
    scrape_counter,
    train,
    turnout_env,
    v2_body,
)
from support.recorded_traffic import RecordedTraffic, Reply

MODEL = "fraud"
STABLE, CANDIDATE = "v1", "v2"
TARGET_MS = 1000.0
UPSTREAM_CALLS = "turnout_router_upstream_calls_total"


def turnout(env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [TURNOUT, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0:
        raise RuntimeError(f"turnout {' '.join(args)} failed: {out.stdout}{out.stderr}")
    return out.stdout


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def mono_of(path: Path) -> float:
    """A file's modification time on the monotonic clock of time.monotonic()."""
    return path.stat().st_mtime_ns / 1e9 - (time.time() - time.monotonic())


def candidate_routed(routes_file: Path) -> bool:
    table = yaml.safe_load(routes_file.read_text()) or {}
    return (table.get("models", {}).get(MODEL) or {}).get("candidate") is not None


def reached(r: Reply) -> bool:
    """The router sent this request to the candidate: it answered, or it failed and the
    router retried the request on stable."""
    return r.version == CANDIDATE or r.retried


def router_candidate_calls(base: str) -> float | None:
    samples = scrape_counter(base, UPSTREAM_CALLS)
    if samples is None:
        return None
    return sum(v for labels, v in samples.items() if f'version="{CANDIDATE}"' in labels)


def server_pids(home: Path, version: str) -> list[int]:
    """Pids of the supervisor's model servers for ``version`` (its run/servers.json)."""
    try:
        doc = json.loads((home / "run" / "servers.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    return [int(e["pid"]) for e in doc.values() if e["tag"] == f"{MODEL}:{version}"]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for(what: str, ready: Any, timeout: float, every: float = 0.05) -> float:
    """Poll ``ready()`` until true; the seconds it took."""
    t = time.monotonic()
    while not ready():
        if time.monotonic() - t > timeout:
            raise TimeoutError(f"no {what} after {timeout:.0f}s")
        time.sleep(every)
    return time.monotonic() - t


def one_trial(
    n: int,
    *,
    args: argparse.Namespace,
    home: Path,
    env: dict[str, str],
    traffic: RecordedTraffic,
    procs: Processes,
) -> dict[str, Any]:
    from turnout.core.spec import Phase
    from turnout.io.deployments import DeploymentStore

    store = DeploymentStore(home)
    routes_file = home / "routes.yaml"
    mark = len(traffic.replies)
    t_deploy = time.monotonic()
    # one canary step putting half the keys on the candidate, held far longer than a trial
    turnout(env, "deploy", MODEL, "--version", CANDIDATE, "--steps", "50", "--interval", "1h")

    def candidate_answers() -> bool:
        return any(r.version == CANDIDATE for r in traffic.replies[mark:])

    wait_for(f"reply from {CANDIDATE}", candidate_answers, args.start_timeout)
    candidate_up_s = time.monotonic() - t_deploy
    procs.remember()  # the new model server's process tree, for the final sweep
    time.sleep(random.uniform(0.5, 1.5))
    before = [r for r in traffic.replies[mark:] if r.sent >= time.monotonic() - 0.5]
    share = sum(r.version == CANDIDATE for r in before) / max(1, len(before))
    v2_pids = server_pids(home, CANDIDATE)
    if not candidate_routed(routes_file):
        raise RuntimeError("the route table has no candidate although it answers")

    t_cmd = time.monotonic()
    turnout(env, "rollback", MODEL)
    t0 = time.monotonic()
    spec_written = mono_of(store.path(MODEL))
    wait_for(
        "route table without the candidate", lambda: not candidate_routed(routes_file), 10, 0.005
    )
    routes_written = mono_of(routes_file)

    # Quiet: --quiet seconds of replies, none from the candidate, nothing in flight from before.
    deadline = t0 + args.trial_timeout
    while True:
        oldest = traffic.oldest_in_flight()  # before the replies: a request ends in one of them
        replies = traffic.replies[mark:]
        now = time.monotonic()
        sent_there = [r for r in replies if reached(r)]
        last = max(sent_there, key=lambda r: r.sent)
        quiet_from = max(t0, max(r.received for r in sent_there))
        quiet = [r for r in replies if r.sent >= quiet_from]
        if (
            now - quiet_from >= args.quiet
            and (oldest is None or oldest >= quiet_from)
            and len(quiet) >= 0.5 * args.rate * args.quiet
        ):
            break
        if now > deadline:
            raise RuntimeError(
                f"trial {n}: {CANDIDATE} still answered {now - quiet_from:.1f}s ago, "
                f"{now - t0:.1f}s after the rollback"
            )
        time.sleep(0.05)

    def settled() -> bool:
        phase = store.state(MODEL).status.phase
        return phase is Phase.ROLLED_BACK and not any(alive(p) for p in v2_pids)

    settle_s = wait_for(f"phase RolledBack and {CANDIDATE}'s server gone", settled, 60, 0.1)
    trial_replies = traffic.replies[mark:]
    window = [r for r in trial_replies if t_cmd - 1 <= r.sent <= quiet_from + args.quiet]
    bad = [r for r in window if r.status != 200]
    last_recv = max(r.received for r in trial_replies if reached(r))
    answered = max(r.sent for r in trial_replies if r.version == CANDIDATE)
    retried = [r for r in trial_replies if r.retried]
    return {
        "trial": n,
        "latency_ms": max(0.0, (last.sent - t0) * 1e3),
        "signed_ms": (last.sent - t0) * 1e3,
        "recv_ms": max(0.0, (last_recv - t0) * 1e3),
        "answered_ms": max(0.0, (answered - t0) * 1e3),
        "retried": len(retried),
        # when the retried requests were sent, from the route-table write
        "retried_after_routes_ms": [round((r.sent - routes_written) * 1e3, 1) for r in retried],
        "from_command_start_ms": (last.sent - t_cmd) * 1e3,
        "command_ms": (t0 - t_cmd) * 1e3,
        "spec_written_ms": (spec_written - t_cmd) * 1e3,
        "controller_ms": (routes_written - spec_written) * 1e3,
        "router_ms": (last.sent - routes_written) * 1e3,
        "candidate_share_before": share,
        "candidate_up_s": candidate_up_s,
        "settle_s": settle_s,
        "requests_in_window": len(window),
        "failed_in_window": len(bad),
    }


def trial_line(t: dict[str, Any], total: int) -> str:
    return (
        f"trial {t['trial']:2d}/{total}: last request to {CANDIDATE} sent "
        f"{t['signed_ms']:+7.1f} ms after `turnout rollback` returned (reply "
        f"{t['recv_ms']:6.1f} ms) | command {t['command_ms']:5.0f} ms, spec written at "
        f"{t['spec_written_ms']:5.0f}, routes {t['controller_ms']:+4.0f}, last send "
        f"{t['router_ms']:+4.0f} ms | {CANDIDATE} share before {t['candidate_share_before']:.0%}"
        f", up in {t['candidate_up_s']:.1f}s | retried on stable {t['retried']} "
        f"{t['retried_after_routes_ms']}, failed {t['failed_in_window']}"
    )


def spread(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 50), 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--rate", type=float, default=200.0, help="steady requests per second")
    ap.add_argument("--threads", type=int, default=8, help="client threads sharing the rate")
    ap.add_argument("--quiet", type=float, default=1.5, help="seconds with no candidate reply")
    ap.add_argument("--start-timeout", type=float, default=120.0, help="for v2 to answer")
    ap.add_argument("--trial-timeout", type=float, default=30.0, help="from rollback to quiet")
    ap.add_argument("--rows", type=int, default=20_000, help="training rows per version")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    return run_in_tempdir("turnout-bench-rollback-", args, run)


def run(args: argparse.Namespace, tmp: Path, procs: Processes, started: float) -> int:
    log(f"temporary TURNOUT_HOME {tmp}")
    env = turnout_env(tmp)
    os.environ.clear()
    os.environ.update(env)  # before turnout is imported: its settings read TURNOUT_HOME once
    from turnout.cli.platform import LocalPlatform
    from turnout.io.processes import free_port

    train(tmp, STABLE, seed=0, rows=args.rows)
    train(tmp, CANDIDATE, seed=1, rows=args.rows)
    turnout(env, "deploy", MODEL, "--version", STABLE)

    # Open router: the recorded traffic sends no key, and rollback time does not depend on it.
    platform = LocalPlatform(tmp, port=free_port(), prometheus=False, env=env, auth=False)
    traffic: RecordedTraffic | None = None
    trials: list[dict[str, Any]] = []
    failures: list[str] = []
    try:
        t = time.monotonic()
        platform.start()
        procs.procs.extend(platform.procs.items())  # the final sweep covers their trees
        procs.remember()
        log(f"controller, {MODEL}:{STABLE} and router up in {time.monotonic() - t:.1f}s")
        traffic = RecordedTraffic(
            platform.url, MODEL, v2_body(), rate=args.rate, threads=args.threads
        ).start()
        time.sleep(2.0)
        warm = traffic.replies[:]
        if not warm or any(r.status != 200 or r.version != STABLE for r in warm):
            raise RuntimeError(f"steady traffic is not all 200 from {STABLE}: {warm[-3:]}")
        log(f"steady traffic: {len(warm) / 2:.0f} req/s, all from {STABLE}")
        measured_from = time.monotonic()
        for n in range(1, args.trials + 1):
            try:
                trial = one_trial(
                    n,
                    args=args,
                    home=tmp,
                    env=env,
                    traffic=traffic,
                    procs=procs,
                )
            except (RuntimeError, TimeoutError) as exc:
                failures.append(f"trial {n}: {exc}")
                log(f"trial {n} FAILED, stopping: {exc}")
                break  # the deployment may be mid-rollout: later trials would not be clean
            trials.append(trial)
            print(trial_line(trial, args.trials), flush=True)
        measured_s = time.monotonic() - measured_from
        replies = traffic.replies[:]
        router_calls = router_candidate_calls(platform.url)
    finally:
        if traffic is not None:
            traffic.stop()
        platform.stop()

    if not trials:
        raise RuntimeError(f"no trial finished: {failures}")
    measured = [r for r in replies if r.sent >= measured_from]
    client_calls = sum(reached(r) for r in replies)
    result = summary(args, trials, failures, measured, measured_s, client_calls, router_calls)
    result["duration_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result), flush=True)
    return 0


def summary(
    args: argparse.Namespace,
    trials: list[dict[str, Any]],
    failures: list[str],
    measured: list[Reply],
    measured_s: float,
    client_calls: int,
    router_calls: float | None,
) -> dict[str, Any]:
    lat = [t["latency_ms"] for t in trials]
    recv = [t["recv_ms"] for t in trials]

    def col(key: str) -> list[float]:
        return [t[key] for t in trials]

    failed = sum(r.status != 200 for r in measured)
    valid = not failures and len(trials) >= 20 and router_calls == float(client_calls)
    return {
        "bench": "rollback_latency",
        "trials": len(trials),
        "p50_ms": round(percentile(lat, 50), 1),
        "p90_ms": round(percentile(lat, 90), 1),
        "max_ms": round(max(lat), 1),
        "p50_recv_ms": round(percentile(recv, 50), 1),
        "max_recv_ms": round(max(recv), 1),
        # the last request the candidate itself answered (leaving out retried ones)
        "p50_answered_ms": round(percentile(col("answered_ms"), 50), 1),
        "max_answered_ms": round(max(col("answered_ms")), 1),
        "target_ms": TARGET_MS,
        "target_met": max(lat) <= TARGET_MS,
        "rps": round(len(measured) / measured_s, 1),
        "rate_rps": args.rate,
        "valid": valid,
        "failed_trials": failures,
        # signed: negative when the router switched before the command returned
        "signed_ms": spread(col("signed_ms")),
        "from_command_start_ms": spread(col("from_command_start_ms")),
        "breakdown_ms": {
            "command": spread(col("command_ms")),
            "spec_written_after_start": spread(col("spec_written_ms")),
            "controller_spec_to_routes": spread(col("controller_ms")),
            "router_routes_to_last_send": spread(col("router_ms")),
        },
        "poll_intervals_ms": {"controller": 100, "router_route_file": 200},
        "latencies_ms": [round(x, 1) for x in lat],
        "candidate_share_before": round(statistics.mean(col("candidate_share_before")), 3),
        "candidate_up_s_p50": round(percentile(col("candidate_up_s"), 50), 1),
        "failed_requests": failed,
        # failed candidate calls the router answered from stable, all trials
        "retried_on_stable": sum(col("retried")),
        "retried_after_routes_ms": [x for t in trials for x in t["retried_after_routes_ms"]],
        "cross_check": {
            # replies from the candidate plus candidate calls retried on stable
            "client_candidate_requests": client_calls,
            "router_candidate_attempts": router_calls,
        },
    }


if __name__ == "__main__":
    sys.exit(main())
