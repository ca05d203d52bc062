"""Benchmark: `turnout batch-predict` against a bare torch forward loop over the same rows
(target: ≥ 50 % of the bare loop's rows/s, so reading, checking and writing rows costs at
most as much as scoring them).

    .venv/bin/python bench/batch_predict.py [--rows 1000000] [--chunk-rows 65536] [--rounds 5]

Progress goes to stderr; the LAST line of stdout is one JSON object.

Setup: a temporary TURNOUT_HOME, `turnout train` registers fraud:v1, and the synthetic
generator writes `--rows` rows (features, label) to a Parquet file.

Each round, interleaved:
  cli    `turnout batch-predict fraud:v1 rows.parquet scored.parquet --json` as a subprocess.
         `rows_per_s` is the command's own figure: the whole scoring run (model load, read,
         checks, forward passes, writing Parquet, rename) over its rows. The subprocess' wall
         time, which adds the interpreter start and imports (torch, pandas, bentoml), is
         reported beside it as `wall_rows_per_s`, and their difference as `startup_s`.
  torch  in this process: the same model version's net (training.store.load), the same rows
         already in memory as one C-ordered float32 matrix, `sigmoid(net(x))` under
         `torch.inference_mode` in slices of `--chunk-rows`; no I/O, no checks. One untimed
         pass first, so its figure is the warm steady state (the CLI's includes its cold
         start), and the same glibc setting batch-predict makes (`keep_freed_memory`).
Both use `--threads` torch intra-op threads (default 1, batch-predict's default; the CLI's
read and write threads run beside it, the loop has none). Headline: median rows/s of
each over the rounds and `ratio_vs_torch` = cli / torch. The CLI's scores are checked
against the loop's (float32, 1e-6).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from support.harness import PY, ROOT, TURNOUT, log, ratio, run_in_tempdir, train, turnout_env

MODEL_TAG = "fraud:v1"
TARGET = 0.5


def cli_command() -> list[str]:
    """`turnout batch-predict`, or the same click command run as a module while the
    subcommand is not registered in turnout/cli/main.py yet."""
    probe = subprocess.run([TURNOUT, "batch-predict", "--help"], capture_output=True, cwd=ROOT)
    if probe.returncode == 0:
        return [TURNOUT, "batch-predict"]
    log("`turnout batch-predict` is not registered; running `python -m workflows.batch_cli`")
    return [PY, "-m", "workflows.batch_cli"]


def run_cli(cmd: list[str], env: dict[str, str], args: list[str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = subprocess.run([*cmd, *args, "--json"], env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"batch-predict failed ({out.returncode}): {out.stderr[-2000:]}")
    doc: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    doc["wall_s"] = wall
    return doc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows in the Parquet file")
    ap.add_argument("--chunk-rows", type=int, default=65_536, help="rows per forward pass")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads, both sides")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return run_in_tempdir("turnout-bench-batch-", ap.parse_args(), run)


def run(args: argparse.Namespace, tmp: Path, procs: Any, started: float) -> int:
    env = turnout_env(tmp)
    os.environ.update(TURNOUT_HOME=str(tmp), BENTOML_HOME=str(tmp / "bentoml"))
    env["BENTOML_HOME"] = os.environ["BENTOML_HOME"]
    train(tmp, "v1")

    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from training import store
    from training.data import features_matrix, generate
    from workflows.batch_cli import keep_freed_memory

    t = time.perf_counter()
    data = tmp / "rows.parquet"
    frame = generate(args.rows, seed=5)
    frame.to_parquet(data)
    x = np.ascontiguousarray(features_matrix(frame))
    del frame
    log(f"wrote {args.rows:,} rows to {data.name} ({data.stat().st_size / 1e6:.0f} MB) "
        f"in {time.perf_counter() - t:.1f}s")  # fmt: skip

    net = store.load(MODEL_TAG).net
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # the allocator setting batch-predict makes for itself (both sides)

    def torch_loop() -> tuple[float, np.ndarray]:
        t0 = time.perf_counter()
        parts = []
        with torch.inference_mode():
            for i in range(0, len(x), args.chunk_rows):
                parts.append(torch.sigmoid(net(torch.from_numpy(x[i : i + args.chunk_rows]))))
        seconds = time.perf_counter() - t0
        return seconds, torch.cat(parts).numpy()

    torch_loop()  # warm-up
    cmd = cli_command()
    out = tmp / "scored.parquet"
    cli_args = [MODEL_TAG, str(data), str(out), "--chunk-rows", str(args.chunk_rows)]
    cli_args += ["--torch-threads", str(args.threads)]
    rounds: list[dict[str, Any]] = []
    for rnd in range(args.rounds):
        order = ("cli", "torch") if rnd % 2 == 0 else ("torch", "cli")
        row: dict[str, Any] = {}
        for who in order:
            if who == "cli":
                doc = run_cli(cmd, env, cli_args)
                if doc["rows"] != args.rows:
                    raise RuntimeError(f"batch-predict scored {doc['rows']} of {args.rows} rows")
                row.update(
                    cli_rows_per_s=doc["rows_per_s"],
                    cli_s=doc["seconds"],
                    wall_s=round(doc["wall_s"], 3),
                    wall_rows_per_s=round(args.rows / doc["wall_s"], 1),
                )
            else:
                seconds, scores = torch_loop()
                row.update(
                    torch_s=round(seconds, 3), torch_rows_per_s=round(args.rows / seconds, 1)
                )
        row["ratio"] = ratio(row["cli_rows_per_s"], row["torch_rows_per_s"])
        rounds.append(row)
        log(
            f"round {rnd + 1}/{args.rounds}: cli {row['cli_rows_per_s']:,.0f} rows/s "
            f"({row['cli_s']:.2f}s; wall {row['wall_s']:.2f}s) | torch "
            f"{row['torch_rows_per_s']:,.0f} rows/s ({row['torch_s']:.2f}s) | ratio {row['ratio']}"
        )

    got = pq.read_table(out, columns=["probability"]).column(0).to_numpy()
    max_diff = float(np.max(np.abs(got - scores)))
    if max_diff > 1e-6:
        raise RuntimeError(f"batch-predict and the torch loop disagree by up to {max_diff:g}")

    def med(key: str) -> float:
        return round(statistics.median(r[key] for r in rounds), 1)

    cli_rps, torch_rps, wall_rps = (
        med("cli_rows_per_s"),
        med("torch_rows_per_s"),
        med("wall_rows_per_s"),
    )
    ratio_vs_torch = ratio(cli_rps, torch_rps)
    result = {
        "bench": "batch_predict",
        "rows": args.rows,
        "chunk_rows": args.chunk_rows,
        "rows_per_s": cli_rps,
        "torch_rows_per_s": torch_rps,
        "ratio_vs_torch": ratio_vs_torch,
        "target": TARGET,
        "target_met": ratio_vs_torch is not None and ratio_vs_torch >= TARGET,
        "wall_rows_per_s": wall_rps,
        "ratio_wall_vs_torch": ratio(wall_rps, torch_rps),
        "startup_s": round(statistics.median(r["wall_s"] - r["cli_s"] for r in rounds), 2),
        "max_abs_diff_vs_torch": max_diff,
        "rounds": rounds,
        "cli": " ".join(Path(c).name for c in cmd),
        "input": "parquet",
        "output": "parquet",
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    log(
        f"batch-predict {cli_rps:,.0f} rows/s vs bare torch {torch_rps:,.0f} rows/s: "
        f"x{ratio_vs_torch} (target {TARGET}); with process start {wall_rps:,.0f} rows/s"
    )
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
