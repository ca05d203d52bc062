"""Benchmark: what the router adds to a request.

    .venv/bin/python bench/router_overhead.py [--rate 200] [--duration 6] [--rounds 4] [--profile]

Progress and a summary go to stderr; the LAST line of stdout is one JSON object.

Targets, with authentication on (an API key checked on every request): at a fixed 200 req/s
the router adds p50 <= 0.4 ms and p99 <= 2 ms; the router alone, in front of an upstream that
does no work, serves >= 6,000 req/s on 2 cores.

Authentication on and off in the same run: each router runs twice, once with ``--api-keys``
(a keys file holding one key scoped to infer on the model) and once without. Every contender
gets the same request, ``Authorization: Bearer <key>`` included, so the difference is the
router's work only. `p50_added_ms`, `p99_added_ms` and `noop_upstream_rps` are measured with
authentication on (`"auth": true` says it was checked: a request without the key got 401);
`p50_added_ms_auth_off`, `p99_added_ms_auth_off` and `noop_upstream_rps_auth_off` without.

Added latency (open loop): one model server (`turnout serve fraud:v1`) and two routers (`turnout
route`, stable -> that server; with and without authentication). bench/support/aioclient.py
openloop sends 200 req/s on a fixed timetable (a pool of keep-alive connections, more opened if
all are busy) and measures each request from its *scheduled* send time, so a slow reply is not
hidden by the requests it would otherwise hold back (coordinated omission). Rounds alternate
direct and through-router and their order rotates, so drift on the machine hits all of them;
`p50_added_ms` and `p99_added_ms` are router minus direct, each side the median over rounds
(`*_paired`: the median of the differences within each round). Another contender,
bench/support/aioclient.py relay (a byte relay that parses nothing, in front of the same model
server), is the floor of any proxy hop on this machine: `relay_p50_added_ms` is what the two
extra loopback hops and wake-ups cost before the router does any work.

Throughput: two more routers (with and without authentication) in front of
bench/support/aioclient.py's no-op server, at saturation (closed loop, wrk -t1 at 16 and 64
connections; the lean aioclient as a cross-check when wrk is missing). The no-op server is also
measured directly with the same client: that rate, far above the router's, shows the load
generator and upstream are not the bottleneck; the client's and the router's CPU use are
reported too, and `other_cpu_util` (the machine's busy time not spent by the benchmark's
processes) flags runs disturbed by other work.

--profile: afterwards, py-spy (non-blocking, 250 Hz, on-CPU samples) records the router during
one more open-loop run and one saturated run; the JSON's `profile` has the share of samples by
package and the top functions (self and inclusive), the collapsed stacks stay in the temporary
directory with --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from support.harness import (
    Meter,
    Processes,
    Server,
    collapsed_summary,
    log,
    median,
    model_server,
    noop_server,
    post,
    probability,
    relay_server,
    router_available,
    router_server,
    run_aio,
    run_in_tempdir,
    run_openloop,
    run_wrk,
    start,
    start_profile,
    train,
    v2_body,
)

INFER = "/v2/models/fraud/infer"
TARGET_P50_ADDED_MS = 0.4
TARGET_P99_ADDED_MS = 2.0
TARGET_NOOP_RPS = 6000.0


def api_key(home: Path) -> tuple[Path, str]:
    """A keys file holding one key that may infer on the model, and the key."""
    from turnout.core.api_keys import Action
    from turnout.io.api_keys import create_key

    path = home / "api-keys.yaml"
    key, _ = create_key(path, name="bench", models=["fraud"], actions=[Action.INFER])
    return path, key


def check_router(
    direct: Server, router: Server, body: bytes, headers: dict[str, str]
) -> dict[str, Any]:
    """The router answers the benchmark payload like the model server, with its headers."""
    s1, _, b1 = post(direct.base + INFER, body, headers=headers)
    s2, h2, b2 = post(router.base + INFER, body, headers=headers)
    if s1 != 200 or s2 != 200:
        raise RuntimeError(f"direct answered {s1} {b1[:200]!r}; router answered {s2} {b2[:200]!r}")
    p1, p2 = probability(b1), probability(b2)
    if abs(p1 - p2) > 1e-6:
        raise RuntimeError(f"router and model server disagree: {p2} vs {p1}")
    missing = [
        h for h in ("x-turnout-variant", "x-turnout-model-version", "x-request-id") if h not in h2
    ]
    if missing:
        log(f"  WARNING router response lacks headers {missing}: {h2}")
    if h2.get("x-turnout-variant", "stable") != "stable":
        raise RuntimeError(f"router chose {h2.get('x-turnout-variant')} with no candidate")
    return {
        "probability": p1,
        "router_headers": {k: v for k, v in h2.items() if k.startswith("x-")},
    }


def openloop_round(
    label: str,
    server: Server,
    watch: list[Server],
    body_file: Path,
    args: argparse.Namespace,
    headers: dict[str, str],
) -> dict[str, Any]:
    meter = Meter(watch)
    r = run_openloop(
        server.base + INFER, body_file, args.rate, args.duration, args.warmup, headers=headers
    )
    r.update(meter.stop())
    if r["non_2xx"] or r["errors"]:
        log(f"  WARNING {label}: non-2xx {r['non_2xx']} errors {r['errors']} {r['error_sample']}")
    log(
        f"  {label:7s} {r['achieved_rps']:6.1f} req/s  p50 {r['p50_ms']:6.3f}  p90 "
        f"{r['p90_ms']:6.3f}  p99 {r['p99_ms']:6.3f}  p99.9 {r['p999_ms']:7.3f}  max "
        f"{r['max_ms']:7.3f} ms | send lag p50 {r['send_lag_p50_ms']:.3f} p99 "
        f"{r['send_lag_p99_ms']:.3f} ms | conns {r['connections_opened']} | cpu {r['cpu_util']}"
        f" other {r['other_cpu_util']:.2f}"
    )
    return r


def closed_run(
    client: str,
    label: str,
    url: str,
    body_file: Path,
    c: int,
    duration: float,
    watch: list[Server],
    headers: dict[str, str],
) -> dict[str, Any]:
    if client == "wrk":
        run_wrk(url, body_file, c, 1.0, headers)  # warm-up, discarded
        meter = Meter(watch)
        r = run_wrk(url, body_file, c, duration, headers)
    else:
        meter = Meter(watch)
        r = run_aio(url, body_file, c, duration, warmup=1.0, headers=headers)
    r.update(meter.stop())
    if r["non_2xx"] or r["errors"]:
        log(f"  WARNING {label} {client}: non-2xx {r['non_2xx']} errors {r['errors']}")
    log(
        f"  {label:12s} {client:9s} c={c:<3d} {r['rps']:9.1f} req/s  p50 {r['p50_ms']:6.2f}  "
        f"p99 {r['p99_ms']:6.2f} ms | client cpu {r['client_cpu_util']:.2f} | "
        f"server cpu {r['cpu_util']} other {r['other_cpu_util']:.2f}"
    )
    return r


def profile_router(
    args: argparse.Namespace,
    tmp: Path,
    router: Server,
    router_noop: Server,
    body_file: Path,
    client: str,
    connections: int,
    headers: dict[str, str],
) -> dict[str, Any]:
    """Where the router's CPU goes: py-spy (non-blocking, 250 Hz, active samples only) during
    an open-loop run at the benchmark rate and during a saturated run over the no-op upstream."""
    out: dict[str, Any] = {}
    for label, server in (("openloop", router), ("saturated", router_noop)):
        assert server.proc is not None
        path = tmp / f"pyspy-{label}.txt"
        if label == "openloop":
            seconds = args.duration + args.warmup
            spy = start_profile(server.proc.pid, seconds, path)
            r = run_openloop(
                server.base + INFER,
                body_file,
                args.rate,
                args.duration,
                args.warmup,
                headers=headers,
            )
            note = f"p50 {r['p50_ms']} p99 {r['p99_ms']} ms under py-spy"
        else:
            seconds = args.noop_duration
            spy = start_profile(server.proc.pid, seconds, path)
            if client == "wrk":
                r = run_wrk(server.base + INFER, body_file, connections, seconds, headers)
            else:
                r = run_aio(
                    server.base + INFER, body_file, connections, seconds, 0.0, headers=headers
                )
            note = f"{r['rps']} req/s under py-spy"
        try:
            _, err = spy.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        if spy.returncode != 0 or not path.exists():
            log(f"  py-spy failed on {label}: {err.decode(errors='replace')[-500:]}")
            out[label] = {"error": err.decode(errors="replace")[-500:]}
            continue
        summary = collapsed_summary(path)
        summary["file"] = str(path)
        summary["run"] = note
        out[label] = summary
        log(f"  py-spy {label} ({note}, {summary['samples']} samples): self by area")
        for name, pct in summary["self_pct_by_area"][:10]:
            log(f"      {pct:5.1f}%  {name}")
        log("    top self functions")
        for name, pct in summary["top_self_pct"][:12]:
            log(f"      {pct:5.1f}%  {name}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=200.0, help="open-loop requests per second")
    ap.add_argument("--duration", type=float, default=6.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per run")
    ap.add_argument("--rounds", type=int, default=4, help="open-loop direct/router rounds")
    ap.add_argument("--noop-duration", type=float, default=4.0)
    ap.add_argument("--noop-rounds", type=int, default=2)
    ap.add_argument("--connections", default="16,64", help="closed-loop connection counts")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="afterwards, py-spy the router during one more open-loop run and one saturated run "
        "(collapsed stacks kept in the temporary directory; summary in the JSON)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    if not router_available():
        log("`turnout route` is not available yet (turnout route --help failed)")
        return 2
    return run_in_tempdir("turnout-bench-router-", args, run)


def run(args: argparse.Namespace, tmp: Path, procs: Processes, started: float) -> int:
    log(f"temporary TURNOUT_HOME {tmp}")
    train(tmp, "v1")
    body = v2_body()
    body_file = tmp / "v2.json"
    body_file.write_bytes(body)

    keys_file, key = api_key(tmp)
    auth = {"Authorization": f"Bearer {key}"}
    model = model_server("model_v1", tmp, "fraud:v1")
    noop = noop_server("noop", tmp)
    start(procs, [model, noop])

    def routes(version: str, upstream: Server) -> dict[str, Any]:
        stable = {"version": version, "url": upstream.base}
        return {"models": {"fraud": {"stable": stable, "timeoutMs": 1000}}}

    router = router_server("router", tmp, routes("v1", model), api_keys=keys_file)
    router_off = router_server("router_auth_off", tmp, routes("v1", model))
    router_noop = router_server("router_noop", tmp, routes("noop", noop), api_keys=keys_file)
    router_noop_off = router_server("router_noop_auth_off", tmp, routes("noop", noop))
    relay = relay_server("relay", tmp, model)
    start(procs, [router, router_off, router_noop, router_noop_off, relay])
    check = check_router(model, router, body, auth)
    check_router(model, router_off, body, auth)
    s, _, b = post(relay.base + INFER, body, headers=auth)
    if s != 200 or abs(probability(b) - check["probability"]) > 1e-6:
        raise RuntimeError(f"the relay answered {s}: {b[:300]!r}")
    for server in (router_noop, router_noop_off):
        s, _, b = post(server.base + INFER, body, headers=auth)
        if s != 200:
            raise RuntimeError(
                f"{server.name} in front of the no-op server answered {s}: {b[:300]!r}"
            )
    for server in (router, router_noop):  # authentication really is on
        s, _, b = post(server.base + INFER, body)
        if s != 401:
            raise RuntimeError(f"{server.name} answered {s} without an API key: {b[:300]!r}")
    log(f"router and model server agree (p={check['probability']:.6g}); {check['router_headers']}")
    log("routers with --api-keys refuse a request without the key (401)")
    time.sleep(1.0)

    # --- added latency, open loop -------------------------------------------------------------
    log(f"open loop at {args.rate:g} req/s, {args.rounds} rounds of {args.duration:g}s each")
    watch = [model, router, router_off, relay]
    targets = {"direct": model, "router": router, "router_auth_off": router_off, "relay": relay}
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in targets}
    for rnd in range(args.rounds):
        # every contender in every position of the order across rounds
        labels = list(targets)
        order = labels[rnd % len(labels) :] + labels[: rnd % len(labels)]
        if rnd % 2:
            order.reverse()
        log(f"round {rnd + 1}/{args.rounds}")
        for label in order:
            runs[label].append(openloop_round(label, targets[label], watch, body_file, args, auth))

    def med(label: str, key: str) -> float:
        return median([r[key] for r in runs[label]])

    def added_paired(key: str, label: str = "router") -> float:
        return median([b[key] - a[key] for a, b in zip(runs["direct"], runs[label], strict=True)])

    def cpu_us(label: str) -> float:
        return median(
            [
                1e6 * r["cpu_util"][label] / r["achieved_rps"]
                for r in runs[label]
                if r["achieved_rps"]
            ]
        )

    router_cpu_us = cpu_us("router")

    # --- throughput over a no-op upstream, closed loop ---------------------------------------
    client = "wrk" if shutil.which("wrk") else "aioclient"
    conns = [int(c) for c in args.connections.split(",") if c]
    log(f"saturation over the no-op upstream ({client}, connections {conns})")
    watch_noop = [noop, router_noop, router_noop_off]
    sat_targets = {
        "noop_direct": noop,
        "router_noop": router_noop,
        "router_noop_auth_off": router_noop_off,
    }
    sat: dict[str, dict[int, list[dict[str, Any]]]] = {label: {} for label in sat_targets}
    for rnd in range(args.noop_rounds):
        log(f"round {rnd + 1}/{args.noop_rounds}")
        for c in conns:
            order = list(sat_targets)
            if rnd % 2:
                order.reverse()
            for label in order:
                url = sat_targets[label].base + INFER
                r = closed_run(
                    client, label, url, body_file, c, args.noop_duration, watch_noop, auth
                )
                sat[label].setdefault(c, []).append(r)
    # the lean client through the router once, as a cross-check of wrk's rate
    cross = None
    if client == "wrk":
        cross = closed_run(
            "aioclient",
            "router_noop",
            router_noop.base + INFER,
            body_file,
            max(conns),
            args.noop_duration,
            watch_noop,
            auth,
        )

    def sat_summary(label: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for c, rs in sat[label].items():
            out[f"c{c}"] = {
                "rps": median([r["rps"] for r in rs]),
                "rps_rounds": [r["rps"] for r in rs],
                "p50_ms": median([r["p50_ms"] for r in rs]),
                "p99_ms": median([r["p99_ms"] for r in rs]),
                "client_cpu_util": median([r["client_cpu_util"] for r in rs]),
                "router_cpu_util": median(
                    [r["cpu_util"].get(label, r["cpu_util"]["router_noop"]) for r in rs]
                ),
                "noop_server_cpu_util": median([r["cpu_util"]["noop"] for r in rs]),
                "other_cpu_util_max": max(r["other_cpu_util"] for r in rs),
                "non_2xx": sum(r["non_2xx"] for r in rs),
                "errors": sum(r["errors"] for r in rs),
            }
        return out

    router_sat, direct_sat = sat_summary("router_noop"), sat_summary("noop_direct")
    router_off_sat = sat_summary("router_noop_auth_off")
    best = max(router_sat, key=lambda k: router_sat[k]["rps"])
    noop_rps = router_sat[best]["rps"]
    noop_rps_off = max(v["rps"] for v in router_off_sat.values())
    noop_direct_rps = max(v["rps"] for v in direct_sat.values())

    bad = {
        label: {"non_2xx": sum(r["non_2xx"] for r in rs), "errors": sum(r["errors"] for r in rs)}
        for label, rs in runs.items()
    }
    bad = {k: v for k, v in bad.items() if v["non_2xx"] or v["errors"]}
    for label, rs_by_c in sat.items():
        for c, rs in rs_by_c.items():
            n = sum(r["non_2xx"] + r["errors"] for r in rs)
            if n:
                bad[f"{label}_c{c}"] = {"non_2xx_or_errors": n}
    if bad:
        log(f"WARNING failed requests, the numbers are not valid: {bad}")

    profile = None
    if args.profile:
        profile = profile_router(
            args, tmp, router, router_noop, body_file, client, min(conns), auth
        )

    result: dict[str, Any] = {
        "bench": "router_overhead",
        # router minus direct, each side the median over rounds
        "p50_added_ms": round(med("router", "p50_ms") - med("direct", "p50_ms"), 3),
        "p99_added_ms": round(med("router", "p99_ms") - med("direct", "p99_ms"), 3),
        "direct_p50_ms": med("direct", "p50_ms"),
        "direct_p99_ms": med("direct", "p99_ms"),
        "router_p50_ms": med("router", "p50_ms"),
        "router_p99_ms": med("router", "p99_ms"),
        "router_auth_off_p50_ms": med("router_auth_off", "p50_ms"),
        "router_auth_off_p99_ms": med("router_auth_off", "p99_ms"),
        "rate_rps": args.rate,
        # the floor: a byte relay (no HTTP parsing) in front of the same model server
        "relay_p50_ms": med("relay", "p50_ms"),
        "relay_p99_ms": med("relay", "p99_ms"),
        "relay_p50_added_ms": round(med("relay", "p50_ms") - med("direct", "p50_ms"), 3),
        "relay_p99_added_ms": round(med("relay", "p99_ms") - med("direct", "p99_ms"), 3),
        "noop_upstream_rps": noop_rps,
        # authentication on for the three keys above, checked (401 without the key)
        "auth": True,
        "p50_added_ms_auth_off": round(
            med("router_auth_off", "p50_ms") - med("direct", "p50_ms"), 3
        ),
        "p99_added_ms_auth_off": round(
            med("router_auth_off", "p99_ms") - med("direct", "p99_ms"), 3
        ),
        "noop_upstream_rps_auth_off": noop_rps_off,
        "noop_direct_rps": noop_direct_rps,
        "noop_upstream_connections": int(best[1:]),
        "valid": not bad,
        "failed_requests": bad,
        "targets": {
            "p50_added_ms": TARGET_P50_ADDED_MS,
            "p99_added_ms": TARGET_P99_ADDED_MS,
            "noop_upstream_rps": TARGET_NOOP_RPS,
        },
    }
    result["targets_met"] = {
        "p50_added": result["p50_added_ms"] <= TARGET_P50_ADDED_MS,
        "p99_added": result["p99_added_ms"] <= TARGET_P99_ADDED_MS,
        "noop_upstream_rps": noop_rps >= TARGET_NOOP_RPS,
    }
    result.update(
        # the same as the median of the differences within each round (paired)
        p50_added_ms_paired=added_paired("p50_ms"),
        p99_added_ms_paired=added_paired("p99_ms"),
        p50_added_ms_auth_off_paired=added_paired("p50_ms", "router_auth_off"),
        p50_added_ms_rounds=[
            round(b["p50_ms"] - a["p50_ms"], 3)
            for a, b in zip(runs["direct"], runs["router"], strict=True)
        ],
        p99_added_ms_rounds=[
            round(b["p99_ms"] - a["p99_ms"], 3)
            for a, b in zip(runs["direct"], runs["router"], strict=True)
        ],
        p999_added_ms=round(med("router", "p999_ms") - med("direct", "p999_ms"), 3),
        direct_p999_ms=med("direct", "p999_ms"),
        router_p999_ms=med("router", "p999_ms"),
        # from the actual write, not the schedule: what the client's timing adds is in send_lag
        service_p50_added_ms=round(
            med("router", "service_p50_ms") - med("direct", "service_p50_ms"), 3
        ),
        service_p99_added_ms=round(
            med("router", "service_p99_ms") - med("direct", "service_p99_ms"), 3
        ),
        router_cpu_us_per_req=router_cpu_us,
        router_cpu_us_per_req_auth_off=cpu_us("router_auth_off"),
        openloop={
            label: {
                "p50_ms_rounds": [r["p50_ms"] for r in rs],
                "p99_ms_rounds": [r["p99_ms"] for r in rs],
                "max_ms": max(r["max_ms"] for r in rs),
                "p999_ms": median([r["p999_ms"] for r in rs]),
                "achieved_rps": median([r["achieved_rps"] for r in rs]),
                "send_lag_p50_ms": median([r["send_lag_p50_ms"] for r in rs]),
                "send_lag_p99_ms": median([r["send_lag_p99_ms"] for r in rs]),
                "connections_opened_max": max(r["connections_opened"] for r in rs),
                "client_cpu_util": median([r["client_cpu_util"] for r in rs]),
                "other_cpu_util_max": max(r["other_cpu_util"] for r in rs),
                "model_server_cpu_util": median([r["cpu_util"]["model_v1"] for r in rs]),
                "router_cpu_util": median(
                    [r["cpu_util"].get(label, r["cpu_util"]["router"]) for r in rs]
                ),
                "requests": sum(r["requests"] for r in rs),
                "non_2xx": sum(r["non_2xx"] for r in rs),
                "errors": sum(r["errors"] for r in rs),
            }
            for label, rs in runs.items()
        },
        noop={
            "client": f"{client} -t1" if client == "wrk" else client,
            "router": router_sat,
            "router_auth_off": router_off_sat,
            "direct": direct_sat,
            "router_aioclient_crosscheck": None
            if cross is None
            else {
                k: cross[k]
                for k in ("connections", "rps", "p50_ms", "p99_ms", "client_cpu_util", "errors")
            },
        },
        router_headers=check["router_headers"],
        profile=profile,
        settings={
            "rate_rps": args.rate,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "noop_duration_s": args.noop_duration,
            "noop_rounds": args.noop_rounds,
            "cpus": os.cpu_count(),
            "model_server": "turnout serve fraud:v1 (1 worker, 1 torch thread)",
            "router": "turnout route (defaults), with --api-keys (one key) and without",
        },
        elapsed_s=round(time.monotonic() - started, 1),
    )
    print_summary(result)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


def print_summary(r: dict[str, Any]) -> None:
    ol, met = r["openloop"], r["targets_met"]
    off = ol["router_auth_off"]
    ok = {True: "met", False: "MISSED"}
    lines = [
        "",
        f"== router overhead (open loop {r['rate_rps']:g} req/s, medians over "
        f"{r['settings']['rounds']} interleaved rounds; latency from the scheduled send) ==",
        "  (router: authentication on; no auth: the same router without --api-keys)",
        "             p50 ms   p99 ms  p99.9 ms   max ms  router cpu",
        f"  direct   {r['direct_p50_ms']:8.3f} {r['direct_p99_ms']:8.3f} "
        f"{r['direct_p999_ms']:9.3f} {ol['direct']['max_ms']:8.2f}",
        f"  router   {r['router_p50_ms']:8.3f} {r['router_p99_ms']:8.3f} "
        f"{r['router_p999_ms']:9.3f} {ol['router']['max_ms']:8.2f}  "
        f"{ol['router']['router_cpu_util']:.3f} cores ({r['router_cpu_us_per_req']:.0f} us/req)",
        f"  no auth  {r['router_auth_off_p50_ms']:8.3f} {r['router_auth_off_p99_ms']:8.3f} "
        f"{off['p999_ms']:9.3f} {off['max_ms']:8.2f}  {off['router_cpu_util']:.3f} cores "
        f"({r['router_cpu_us_per_req_auth_off']:.0f} us/req), adds p50 "
        f"{r['p50_added_ms_auth_off']:.3f} p99 {r['p99_added_ms_auth_off']:.3f} ms",
        f"  relay    {r['relay_p50_ms']:8.3f} {r['relay_p99_ms']:8.3f} "
        f"{ol['relay']['p999_ms']:9.3f} {ol['relay']['max_ms']:8.2f}  (a byte relay: the floor "
        f"of any proxy hop, adds p50 {r['relay_p50_added_ms']:.3f} p99 "
        f"{r['relay_p99_added_ms']:.3f} ms)",
        f"  added p50 {r['p50_added_ms']:.3f} ms (target <= {TARGET_P50_ADDED_MS}: "
        f"{ok[met['p50_added']]}), p99 {r['p99_added_ms']:.3f} ms (target <= "
        f"{TARGET_P99_ADDED_MS}: {ok[met['p99_added']]}); per round p50 {r['p50_added_ms_rounds']}"
        f" p99 {r['p99_added_ms_rounds']}",
        f"  client send lag p50 {ol['router']['send_lag_p50_ms']:.3f} ms, p99 "
        f"{ol['router']['send_lag_p99_ms']:.3f} ms (included in both sides)",
        f"== no-op upstream, closed loop ({r['noop']['client']}) ==",
    ]
    for label, key in (("router", "router"), ("no auth", "router_auth_off"), ("direct", "direct")):
        for c, s in r["noop"][key].items():
            lines.append(
                f"  {label:7s} {c:4s} {s['rps']:9.1f} req/s  p50 {s['p50_ms']:6.2f}  p99 "
                f"{s['p99_ms']:6.2f} ms | client cpu {s['client_cpu_util']:.2f}  router cpu "
                f"{s['router_cpu_util']:.2f}  no-op cpu {s['noop_server_cpu_util']:.2f}"
            )
    cc = r["noop"]["router_aioclient_crosscheck"]
    if cc:
        lines.append(
            f"  router via aioclient c={cc['connections']}: {cc['rps']:.1f} req/s "
            f"(client cpu {cc['client_cpu_util']:.2f})"
        )
    lines.append(
        f"  router over no-op: {r['noop_upstream_rps']:.0f} req/s (target >= "
        f"{TARGET_NOOP_RPS:.0f}: {ok[met['noop_upstream_rps']]}; without authentication "
        f"{r['noop_upstream_rps_auth_off']:.0f}); the client alone drives "
        f"{r['noop_direct_rps']:.0f} req/s"
    )
    lines.append(f"elapsed {r['elapsed_s']}s")
    sys.stderr.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
