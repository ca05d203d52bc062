"""Benchmark: what mirroring every request to a shadow version costs the primary.

    .venv/bin/python bench/shadow_impact.py [--rate 200] [--duration 6] [--rounds 4]

Progress and a summary go to stderr; the LAST line of stdout is one JSON object.

Target: the primary's p99 with 100 % shadow traffic is at most 1.10x its p99 without
(`p99_ratio`).

Two model servers (`turnout serve fraud:v1`, the primary, and `fraud:v2`, the shadow) and two
routers running side by side: `plain` (stable v1 only) and `shadow` (stable v1, shadow v2 at
100 %). Both routers and both model servers are up for every run, so the only difference
between the arms is the mirrored traffic. Rounds alternate the arms (A-B, B-A, ...):

  open loop    bench/support/aioclient.py openloop at a fixed rate (default 200 req/s), latency
               from each request's scheduled send time (no coordinated omission) - the headline
  closed loop  bench/support/aioclient.py client at a few connections (default 4): the
               throughput cost too

`shadow_requests` is the increase of the shadow router's `turnout_shadow_requests_total`
(summed over its `result` labels) during the benchmark: proof that the shadow really ran.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from support.harness import (
    Meter,
    Processes,
    Server,
    log,
    median,
    model_server,
    post,
    probability,
    ratio,
    router_available,
    router_server,
    run_aio,
    run_in_tempdir,
    run_openloop,
    scrape_counter,
    start,
    train,
    v2_body,
)

INFER = "/v2/models/fraud/infer"
SHADOW_COUNTER = "turnout_shadow_requests_total"
TARGET_P99_RATIO = 1.10


def shadow_counts(router: Server) -> dict[str, float]:
    """The shadow counter by result label (ok, error, timeout, dropped, ...)."""
    samples = scrape_counter(router.base, SHADOW_COUNTER)
    if samples is None:
        raise RuntimeError(f"{router.name} /metrics did not answer")
    out: dict[str, float] = {}
    for labels, value in samples.items():
        result = "unlabelled"
        for part in labels.strip("{}").split(","):
            key, _, val = part.partition("=")
            if key.strip() == "result":
                result = val.strip().strip('"')
        out[result] = out.get(result, 0.0) + value
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    keys = set(after) | set(before)
    return {k: round(after.get(k, 0.0) - before.get(k, 0.0)) for k in sorted(keys)}


def settle(router: Server, timeout: float = 5.0) -> dict[str, float]:
    """The shadow counter once mirrored calls still in flight have finished (it stops moving)."""
    last = shadow_counts(router)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = shadow_counts(router)
        if now == last:
            return now
        last = now
    return last


def check(plain: Server, shadow: Server, body: bytes) -> dict[str, Any]:
    """Both routers answer from v1, alike; a request through `shadow` is mirrored."""
    before = shadow_counts(shadow)
    got = {}
    for router in (plain, shadow):
        status, headers, payload = post(router.base + INFER, body)
        if status != 200:
            raise RuntimeError(f"{router.name} answered {status}: {payload[:300]!r}")
        if headers.get("x-turnout-model-version", "v1") != "v1":
            raise RuntimeError(f"{router.name} answered from {headers['x-turnout-model-version']}")
        got[router.name] = probability(payload)
    if abs(got["plain"] - got["shadow"]) > 1e-6:
        raise RuntimeError(f"the routers disagree: {got}")
    mirrored = delta(settle(shadow), before)
    if sum(mirrored.values()) < 1:
        raise RuntimeError(f"the shadow router did not mirror the check request: {mirrored}")
    log(f"routers agree (p={got['plain']:.6g}); the check request was mirrored: {mirrored}")
    return {"probability": got["plain"], "check_mirrored": mirrored}


def one_run(
    kind: str,
    arm: str,
    router: Server,
    watch: list[Server],
    body_file: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    before = shadow_counts(router) if arm == "shadow" else None
    meter = Meter(watch)
    if kind == "open":
        r = run_openloop(router.base + INFER, body_file, args.rate, args.duration, args.warmup)
        sent = round((args.duration + args.warmup) * args.rate)
    else:
        r = run_aio(router.base + INFER, body_file, args.connections, args.duration, args.warmup)
        sent = None  # the warm-up's requests are not counted by the closed-loop client
    r.update(meter.stop())
    if before is not None:
        r["shadow"] = delta(settle(router), before)
        r["shadow_total"] = sum(r["shadow"].values())
        r["shadow_sent_ratio"] = round(r["shadow_total"] / sent, 4) if sent else None
    if r["non_2xx"] or r["errors"]:
        log(f"  WARNING {kind} {arm}: non-2xx {r['non_2xx']} errors {r['errors']}")
    rps = r["achieved_rps"] if kind == "open" else r["rps"]
    shadow_note = f" | mirrored {r['shadow']}" if before is not None else ""
    log(
        f"  {kind:6s} {arm:6s} {rps:7.1f} req/s  p50 {r['p50_ms']:6.3f}  p90 {r['p90_ms']:6.3f}  "
        f"p99 {r['p99_ms']:6.3f}  max {r['max_ms']:7.2f} ms | cpu {r['cpu_util']} other "
        f"{r['other_cpu_util']:.2f}{shadow_note}"
    )
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=200.0, help="open-loop requests per second")
    ap.add_argument("--duration", type=float, default=6.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per run")
    ap.add_argument("--rounds", type=int, default=4, help="open-loop rounds (each arm once)")
    ap.add_argument("--closed-rounds", type=int, default=2, help="closed-loop rounds")
    ap.add_argument("--closed-duration", type=float, default=4.0)
    ap.add_argument("--connections", type=int, default=4, help="closed-loop connections")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    if not router_available():
        log("`turnout route` is not available yet (turnout route --help failed)")
        return 2
    return run_in_tempdir("turnout-bench-shadow-", args, run)


def run(args: argparse.Namespace, tmp: Path, procs: Processes, started: float) -> int:
    log(f"temporary TURNOUT_HOME {tmp}")
    train(tmp, "v1")
    train(tmp, "v2", seed=1)
    body_file = tmp / "v2.json"
    body_file.write_bytes(v2_body())

    v1 = model_server("model_v1", tmp, "fraud:v1")
    v2 = model_server("model_v2", tmp, "fraud:v2")
    start(procs, [v1, v2])
    stable = {"version": "v1", "url": v1.base}
    timeouts = {"timeoutMs": 1000, "shadowTimeoutMs": 1000}
    plain = router_server("plain", tmp, {"models": {"fraud": {"stable": stable, **timeouts}}})
    shadow_route = {"version": "v2", "url": v2.base, "percent": 100}
    shadow = router_server(
        "shadow",
        tmp,
        {"models": {"fraud": {"stable": stable, "shadow": shadow_route, **timeouts}}},
    )
    start(procs, [plain, shadow])
    checked = check(plain, shadow, v2_body())
    counter0 = settle(shadow)
    time.sleep(1.0)

    watch = [v1, v2, plain, shadow]
    arms = {"plain": plain, "shadow": shadow}
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    plan = [("open", args.rounds), ("closed", args.closed_rounds)]
    for kind, rounds in plan:
        if kind == "open":
            log(f"open loop at {args.rate:g} req/s, {rounds} rounds of {args.duration:g}s per arm")
        else:
            log(f"closed loop at {args.connections} connections, {rounds} rounds")
        for rnd in range(rounds):
            order = ["plain", "shadow"] if rnd % 2 == 0 else ["shadow", "plain"]
            log(f"{kind} round {rnd + 1}/{rounds}")
            for arm in order:
                run_args = args
                if kind == "closed":
                    run_args = argparse.Namespace(
                        **{**vars(args), "duration": args.closed_duration}
                    )
                runs.setdefault((kind, arm), []).append(
                    one_run(kind, arm, arms[arm], watch, body_file, run_args)
                )
    shadow_total = delta(settle(shadow), counter0)

    def med(kind: str, arm: str, key: str) -> float:
        return median([r[key] for r in runs[(kind, arm)]])

    def paired(kind: str, key: str) -> float:
        pairs = zip(runs[(kind, "plain")], runs[(kind, "shadow")], strict=True)
        return median([b[key] / a[key] for a, b in pairs if a[key]])

    def side(kind: str, arm: str) -> dict[str, Any]:
        rs = runs[(kind, arm)]
        rps_key = "achieved_rps" if kind == "open" else "rps"
        out = {
            "rps": med(kind, arm, rps_key),
            "p50_ms": med(kind, arm, "p50_ms"),
            "p90_ms": med(kind, arm, "p90_ms"),
            "p99_ms": med(kind, arm, "p99_ms"),
            "p999_ms": med(kind, arm, "p999_ms"),
            "max_ms": max(r["max_ms"] for r in rs),
            "p99_ms_rounds": [r["p99_ms"] for r in rs],
            "p50_ms_rounds": [r["p50_ms"] for r in rs],
            "requests": sum(r["requests"] for r in rs),
            "non_2xx": sum(r["non_2xx"] for r in rs),
            "errors": sum(r["errors"] for r in rs),
            "router_cpu_util": median([r["cpu_util"][arm] for r in rs]),
            "primary_cpu_util": median([r["cpu_util"]["model_v1"] for r in rs]),
            "shadow_server_cpu_util": median([r["cpu_util"]["model_v2"] for r in rs]),
            "client_cpu_util": median([r["client_cpu_util"] for r in rs]),
            "other_cpu_util_max": max(r["other_cpu_util"] for r in rs),
        }
        if arm == "shadow":
            out["mirrored"] = [r["shadow"] for r in rs]
            out["shadow_sent_ratio"] = [r["shadow_sent_ratio"] for r in rs]
        return out

    open_plain, open_shadow = side("open", "plain"), side("open", "shadow")
    bad = {
        f"{kind}_{arm}": {
            "non_2xx": sum(r["non_2xx"] for r in rs),
            "errors": sum(r["errors"] for r in rs),
        }
        for (kind, arm), rs in runs.items()
    }
    bad = {k: v for k, v in bad.items() if v["non_2xx"] or v["errors"]}
    if bad:
        log(f"WARNING failed requests, the numbers are not valid: {bad}")
    unmirrored = [x for x in open_shadow["shadow_sent_ratio"] if x is not None and x < 0.99]
    if unmirrored:
        log(f"WARNING open-loop runs mirrored less than 99 % of their requests: {unmirrored}")
    result: dict[str, Any] = {
        "bench": "shadow_impact",
        "p99_ratio": ratio(open_shadow["p99_ms"], open_plain["p99_ms"]),
        "p50_ratio": ratio(open_shadow["p50_ms"], open_plain["p50_ms"]),
        "p99_no_shadow_ms": open_plain["p99_ms"],
        "p99_shadow_ms": open_shadow["p99_ms"],
        "p50_no_shadow_ms": open_plain["p50_ms"],
        "p50_shadow_ms": open_shadow["p50_ms"],
        "shadow_requests": sum(shadow_total.values()),
        "shadow_requests_by_result": shadow_total,
        "rate_rps": args.rate,
        "valid": not bad and not unmirrored,
        "failed_requests": bad,
        "target_p99_ratio": TARGET_P99_RATIO,
    }
    result["target_met"] = (result["p99_ratio"] or 99.0) <= TARGET_P99_RATIO
    result["p99_ratio_paired"] = round(paired("open", "p99_ms"), 3)
    result["p50_ratio_paired"] = round(paired("open", "p50_ms"), 3)
    if args.closed_rounds:
        closed_plain, closed_shadow = side("closed", "plain"), side("closed", "shadow")
        result.update(
            closed_connections=args.connections,
            closed_p99_ratio=ratio(closed_shadow["p99_ms"], closed_plain["p99_ms"]),
            closed_p50_ratio=ratio(closed_shadow["p50_ms"], closed_plain["p50_ms"]),
            closed_rps_ratio=ratio(closed_shadow["rps"], closed_plain["rps"]),
            closed={"plain": closed_plain, "shadow": closed_shadow},
        )
    result.update(
        open={"plain": open_plain, "shadow": open_shadow},
        check=checked,
        settings={
            "rate_rps": args.rate,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "closed_rounds": args.closed_rounds,
            "closed_duration_s": args.closed_duration,
            "closed_connections": args.connections,
            "shadow_percent": 100,
            "cpus": os.cpu_count(),
            "model_servers": "turnout serve fraud:v1 / fraud:v2 (1 worker, 1 torch thread each)",
        },
        elapsed_s=round(time.monotonic() - started, 1),
    )
    print_summary(result)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


def print_summary(r: dict[str, Any]) -> None:
    lines = [
        "",
        f"== shadow impact: primary latency with 100 % shadow vs without (medians over "
        f"{r['settings']['rounds']} interleaved rounds) ==",
        "                       req/s   p50 ms   p90 ms   p99 ms  p99.9 ms  router cpu  v2 cpu",
    ]
    sections = [("open", f"open {r['rate_rps']:g}/s")]
    if "closed" in r:
        sections.append(("closed", f"closed c={r['closed_connections']}"))
    for kind, label in sections:
        for arm in ("plain", "shadow"):
            s = r[kind][arm]
            lines.append(
                f"  {label:13s} {arm:6s} {s['rps']:7.1f} {s['p50_ms']:8.3f} {s['p90_ms']:8.3f} "
                f"{s['p99_ms']:8.3f} {s['p999_ms']:9.3f} {s['router_cpu_util']:11.3f} "
                f"{s['shadow_server_cpu_util']:7.3f}"
            )
    verdict = "met" if r["target_met"] else "MISSED"
    lines.append(
        f"  open loop: p99 x{r['p99_ratio']} (target <= {TARGET_P99_RATIO}: {verdict}; paired "
        f"rounds x{r['p99_ratio_paired']}), p50 x{r['p50_ratio']}"
    )
    if "closed" in r:
        lines.append(
            f"  closed loop: p99 x{r['closed_p99_ratio']}, p50 x{r['closed_p50_ratio']}, "
            f"throughput x{r['closed_rps_ratio']}"
        )
    lines.append(
        f"  shadow requests counted by the router: {r['shadow_requests']} "
        f"{r['shadow_requests_by_result']}; per open-loop run mirrored/sent "
        f"{r['open']['shadow']['shadow_sent_ratio']}"
    )
    other = max(r[k][a]["other_cpu_util_max"] for k, _ in sections for a in ("plain", "shadow"))
    if other > 0.25:
        lines.append(f"  NOTE other processes used up to {other:.2f} cores during runs: noisy")
    lines.append(f"elapsed {r['elapsed_s']}s")
    sys.stderr.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
