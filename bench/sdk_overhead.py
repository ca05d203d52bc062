"""Benchmark: what turnout's serving SDK costs per request over bare BentoML.

    .venv/bin/python bench/sdk_overhead.py [--rate 200] [--duration 5] [--rounds 3]

Progress and a summary go to stderr; the LAST line of stdout is one JSON object.

The same model, weights and predict (the digits example's torch CNN, softmax over one 8x8
image) behind each contender; one worker process, one torch thread, access log off:
  sdk           examples/digits/service.py, ``@turnout_sdk.model_server``:
                POST /v2/models/digits/infer (v2 JSON); with it come the v2 checks, the
                micro-batcher, the monitor (score histogram, drift window), the version header
  bare_sync     bench/support/bentoml_digits.py: ``@bentoml.api def predict(image)`` (BentoML
                runs a sync API in its thread pool), POST /predict {"image": [...]}
  bare_async    the same with ``async def`` (on the event loop, as the SDK runs small batches)
  bare_traced   bare_sync with BentoML's default OpenTelemetry span on /predict, which the SDK
                and the two above leave out: what a BentoML user gets without configuring it

Measure: CPU seconds of each server's process tree per request, at a fixed rate (open loop,
bench/support/aioclient.py openloop, --rate req/s), so every contender does the same work per
second and requests arrive one at a time (the SDK's batcher runs each alone: no batching gain).
Cross-check: closed loop at one connection (wrk -t1 -c1), CPU per request and req/s; and at 16
connections, where the SDK's batching does pay (reported, not the headline).
Headline: ``cpu_per_request_ratio`` = the SDK's CPU per request over the cheapest of bare_sync
and bare_async (BentoML configured as the SDK configures it), open loop; target <= 1.1.
Rounds interleave the contenders, the order reversed every round; figures are medians.
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
    PY,
    ROOT,
    Meter,
    Processes,
    Server,
    digits_image,
    digits_probabilities,
    digits_sdk_cmd,
    digits_v2_body,
    free_port,
    http,
    log,
    median,
    ratio,
    run_in_tempdir,
    run_openloop,
    run_wrk,
    server_home,
    start,
    train_digits,
    tree_cpu_seconds,
    turnout_env,
    wrk_missing,
)

TARGET = 1.1
BARE = {
    "bare_sync": {"BENCH_BARE_API": "sync", "BENCH_BARE_TRACING": "off"},
    "bare_async": {"BENCH_BARE_API": "async", "BENCH_BARE_TRACING": "off"},
    "bare_traced": {"BENCH_BARE_API": "sync", "BENCH_BARE_TRACING": "on"},
}
#: The contenders configured as the SDK configures BentoML: the headline's baseline.
SAME_CONFIG = ("bare_sync", "bare_async")


def make_servers(tmp: Path, tag: str) -> list[Server]:
    def env(name: str, **extra: str) -> dict[str, str]:
        e = turnout_env(tmp)
        e.update(
            BENTOML_HOME=str(server_home(tmp, name)),
            TURNOUT_MODEL=tag,
            TURNOUT_ACCESS_LOG="off",
            **extra,
        )
        return e

    port = free_port()
    servers = [
        Server("sdk", digits_sdk_cmd(port), env("sdk"), port, "/readyz", tmp / "sdk.log"),
    ]
    for name, extra in BARE.items():
        port = free_port()
        cmd = [
            PY, "-m", "bentoml", "serve", "bench.support.bentoml_digits:DigitsBare",
            "--working-dir", str(ROOT), "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip
        servers.append(Server(name, cmd, env(name, **extra), port, "/readyz", tmp / f"{name}.log"))
    return servers


def path_of(server: Server) -> str:
    return "/v2/models/digits/infer" if server.name == "sdk" else "/predict"


def check_outputs(servers: list[Server], bodies: dict[str, Path]) -> list[float]:
    """Every contender answers the benchmark image with the same probabilities."""
    got: dict[str, list[float]] = {}
    for s in servers:
        status, reply = http("POST", s.base + path_of(s), bodies[s.name].read_bytes())
        if status != 200:
            raise RuntimeError(f"{s.name} answered {status}: {reply[:300]!r}")
        got[s.name] = digits_probabilities(reply) if s.name == "sdk" else json.loads(reply)[0]
    ref = got["sdk"]
    if any(abs(a - b) > 1e-6 for p in got.values() for a, b in zip(p, ref, strict=True)):
        raise RuntimeError(f"contenders disagree on the benchmark image: {got}")
    return ref


def measure(
    server: Server, body: Path, *, rate: float, duration: float, warmup: float
) -> dict[str, Any]:
    """One contender: open loop at ``rate``, then closed loop at 1 and 16 connections."""
    assert server.proc is not None
    url = server.base + path_of(server)
    root = server.proc.pid
    out: dict[str, Any] = {}
    run_openloop(url, body, rate, warmup, 0.0)  # warm-up, discarded
    meter, cpu0 = Meter([server]), tree_cpu_seconds(root)
    r = run_openloop(url, body, rate, duration, 0.0)
    cpu = tree_cpu_seconds(root) - cpu0
    noise = meter.stop()
    out["openloop"] = {
        "requests": r["requests"],
        "cpu_us_per_req": round(1e6 * cpu / max(1, r["requests"])),
        "p50_ms": r["p50_ms"],
        "p99_ms": r["p99_ms"],
        "non_2xx": r["requests"] - r["ok"],
        "other_cpu_util": noise["other_cpu_util"],
    }
    for c in (1, 16):
        run_wrk(url, body, c, warmup)  # warm-up, discarded
        meter, cpu0 = Meter([server]), tree_cpu_seconds(root)
        w = run_wrk(url, body, c, duration)
        cpu = tree_cpu_seconds(root) - cpu0
        noise = meter.stop()
        out[f"c{c}"] = {
            "rps": w["rps"],
            "cpu_us_per_req": round(1e6 * cpu / max(1, w["requests"])),
            "p50_ms": w["p50_ms"],
            "p99_ms": w["p99_ms"],
            "non_2xx": w["non_2xx"] + w["errors"],
            "other_cpu_util": noise["other_cpu_util"],
        }
    o, c1, c16 = out["openloop"], out["c1"], out["c16"]
    log(
        f"  {server.name:12s} open {rate:.0f}/s: {o['cpu_us_per_req']:5d} us/req p99 "
        f"{o['p99_ms']:6.2f} ms | c=1: {c1['rps']:7.1f} req/s {c1['cpu_us_per_req']:5d} us/req | "
        f"c=16: {c16['rps']:7.1f} req/s {c16['cpu_us_per_req']:5d} us/req "
        f"| other load {o['other_cpu_util']:.2f}"
    )
    return out


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section in ("openloop", "c1", "c16"):
        rows = [r[section] for r in runs]
        out[section] = {
            key: median([row[key] for row in rows])
            for key in rows[0]
            if key not in ("non_2xx", "requests")
        }
        out[section]["non_2xx"] = sum(row["non_2xx"] for row in rows)
    out["openloop"]["cpu_us_per_req_rounds"] = [r["openloop"]["cpu_us_per_req"] for r in runs]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=200.0, help="open-loop requests per second")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measured run")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    if wrk_missing():
        return 2
    return run_in_tempdir("turnout-sdk-overhead-", args, run)


def run(args: argparse.Namespace, tmp: Path, procs: Processes, started: float) -> int:
    log(f"temporary store {tmp}")
    env = turnout_env(tmp)
    env["BENTOML_HOME"] = str(tmp / "bentoml")
    tag = train_digits(env)
    bodies = {"sdk": tmp / "v2.json"}
    bodies["sdk"].write_bytes(digits_v2_body())
    bare_body = tmp / "bare.json"
    bare_body.write_bytes(json.dumps({"image": [digits_image()]}).encode())
    bodies.update({name: bare_body for name in BARE})

    servers = make_servers(tmp, tag)
    start(procs, servers)
    probabilities = check_outputs(servers, bodies)
    log(f"all contenders read the benchmark image as {probabilities.index(max(probabilities))}")

    runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
    for rnd in range(args.rounds):
        order = servers if rnd % 2 == 0 else servers[::-1]
        log(f"round {rnd + 1}/{args.rounds}")
        for s in order:
            runs[s.name].append(
                measure(
                    s, bodies[s.name], rate=args.rate, duration=args.duration, warmup=args.warmup
                )
            )
    summary = {name: summarize(r) for name, r in runs.items()}

    def cpu(name: str, section: str = "openloop") -> float:
        value: float = summary[name][section]["cpu_us_per_req"]
        return value

    baseline = min(SAME_CONFIG, key=cpu)
    baseline_c1 = min(SAME_CONFIG, key=lambda n: cpu(n, "c1"))
    headline = ratio(cpu("sdk"), cpu(baseline))
    result: dict[str, Any] = {
        "bench": "sdk_overhead",
        "cpu_per_request_ratio": headline,
        "target": TARGET,
        "target_met": headline is not None and headline <= TARGET,
        "baseline": baseline,
        "sdk_cpu_us_per_req": cpu("sdk"),
        "baseline_cpu_us_per_req": cpu(baseline),
        "cpu_per_request_ratio_rounds": [
            ratio(a, b)
            for a, b in zip(
                summary["sdk"]["openloop"]["cpu_us_per_req_rounds"],
                summary[baseline]["openloop"]["cpu_us_per_req_rounds"],
                strict=True,
            )
        ],
        "cpu_per_request_ratio_vs": {
            name: ratio(cpu("sdk"), cpu(name)) for name in summary if name != "sdk"
        },
        "c1_cpu_per_request_ratio": ratio(cpu("sdk", "c1"), cpu(baseline_c1, "c1")),
        "c1_rps_ratio": ratio(summary["sdk"]["c1"]["rps"], summary[baseline_c1]["c1"]["rps"]),
        "c16_cpu_per_request_ratio": ratio(cpu("sdk", "c16"), cpu(baseline, "c16")),
        "c16_rps_ratio": ratio(summary["sdk"]["c16"]["rps"], summary[baseline]["c16"]["rps"]),
        "contenders": summary,
        "settings": {
            "rate": args.rate,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "cpus": os.cpu_count(),
            "workers": 1,
            "torch_threads": 1,
            "model": tag,
        },
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    print_summary(result)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


def print_summary(r: dict[str, Any]) -> None:
    lines = ["", "== SDK overhead: digits through the SDK vs bare BentoML (1 worker each) =="]
    lines.append("               open-loop us/req  p99 ms | c=1 req/s  us/req | c=16 req/s  us/req")
    for name, s in r["contenders"].items():
        o, c1, c16 = s["openloop"], s["c1"], s["c16"]
        lines.append(
            f"  {name:12s} {o['cpu_us_per_req']:15.0f} {o['p99_ms']:7.2f} | {c1['rps']:9.1f} "
            f"{c1['cpu_us_per_req']:7.0f} | {c16['rps']:10.1f} {c16['cpu_us_per_req']:7.0f}"
        )
    lines.append(
        f"SDK CPU per request x{r['cpu_per_request_ratio']} of {r['baseline']} at "
        f"{r['settings']['rate']:.0f} req/s (target <= {r['target']}: "
        f"{'met' if r['target_met'] else 'not met'}); at c=1 x{r['c1_cpu_per_request_ratio']}"
        f", at c=16 x{r['c16_cpu_per_request_ratio']} (throughput x{r['c16_rps_ratio']})"
    )
    lines.append(f"elapsed {r['elapsed_s']}s")
    sys.stderr.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
