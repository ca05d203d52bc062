"""Run a pipeline in-process, in dependency order, as Argo would run it in a cluster.

A step runs when every step it depends on succeeded and its ``when`` holds; otherwise it is
recorded as skipped with the reason. A failed step (an exception, or an output that is a
designed stop such as a failed gate) stops everything after it. Exit handlers run last,
whatever happened. Each step's output goes to ``<run dir>/<step>.json`` (and an error to
``<step>.error.json``), exactly as ``turnout pipeline step`` writes them in a pod, so the
exit handler reads the same files either way.

The timeline (step, status, seconds, one line) is what ``turnout pipeline run`` prints.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from workflows.pipeline import StepContext, StepSpec, check_order
from workflows.records import Record

log = logging.getLogger("turnout.workflows")


class StepStatus(StrEnum):
    OK = "ok"  # ran and returned its output
    SKIPPED = "skipped"  # not run: a dependency did not succeed, or its condition was false
    FAILED = "failed"  # raised, or its output is a designed stop (the gate failed)


class Outcome(StrEnum):
    COMPLETED = "completed"  # every step ran
    SKIPPED = "skipped"  # stopped early as designed (no drift)
    FAILED = "failed"  # a step failed or the gate refused the candidate


@dataclass(frozen=True)
class StepRecord:
    name: str
    status: StepStatus
    seconds: float
    summary: str
    #: The step's output values for conditions and Argo (``skip``, ``passed``, ...).
    outputs: tuple[tuple[str, str], ...] = ()

    def line(self, width: int = 12) -> str:
        took = f"{self.seconds:6.1f}s" if self.status != StepStatus.SKIPPED else "      -"
        return f"  {self.name:<{width}} {self.status.value:<8} {took}  {self.summary}"


@dataclass(frozen=True)
class RunResult:
    pipeline: str
    run_dir: Path
    #: Main steps in order, then the exit handlers.
    records: tuple[StepRecord, ...]
    #: Names of the exit handlers (they never decide the outcome).
    handlers: tuple[str, ...] = ()

    @property
    def main(self) -> tuple[StepRecord, ...]:
        return tuple(r for r in self.records if r.name not in self.handlers)

    @property
    def outcome(self) -> Outcome:
        if any(r.status == StepStatus.FAILED for r in self.main):
            return Outcome.FAILED
        if any(r.status == StepStatus.SKIPPED for r in self.main):
            return Outcome.SKIPPED
        return Outcome.COMPLETED

    @property
    def exit_code(self) -> int:
        return 1 if self.outcome == Outcome.FAILED else 0

    def record(self, name: str) -> StepRecord:
        for r in self.records:
            if r.name == name:
                return r
        raise KeyError(name)

    def reason(self) -> str:
        """Why the run ended as it did: the failing step's line, else the stop's, else done."""
        main = self.main
        for r in main:
            if r.status == StepStatus.FAILED:
                return f"{r.name} failed: {r.summary}"
        for before, after in itertools.pairwise(main):
            if after.status == StepStatus.SKIPPED and before.status == StepStatus.OK:
                return f"stopped after {before.name}: {before.summary}"
        return "all steps ran"

    def timeline(self) -> str:
        width = max((len(r.name) for r in self.records), default=8)
        lines = [f"{self.pipeline}  (run dir {self.run_dir})"]
        lines += [r.line(width) for r in self.records]
        lines.append(f"{self.outcome.value}: {self.reason()}")
        return "\n".join(lines)


def run_step(
    spec: StepSpec, ctx: StepContext, *, outputs_dir: Path | None = None
) -> tuple[StepRecord, Record | None]:
    """Run one step: write its output (or its error) to the run dir, and its output values to
    ``outputs_dir`` for Argo. Never raises for a failing step; the record says it failed."""
    run = ctx.run
    run.begin(spec.name)
    start = time.perf_counter()
    try:
        output = spec.fn(ctx)
    except Exception as exc:
        seconds = time.perf_counter() - start
        message = _one_line(str(exc)) or type(exc).__name__
        if not isinstance(exc, ValueError | LookupError | RuntimeError | OSError):
            log.exception("step %s raised", spec.name)
            message = f"{type(exc).__name__}: {message}"
        run.write_error(spec.name, message)
        return StepRecord(spec.name, StepStatus.FAILED, seconds, message), None
    seconds = time.perf_counter() - start
    run.write(spec.name, output)
    values = output.outputs()
    if outputs_dir is not None:
        _write_outputs(outputs_dir, spec, output, values)
    failure = output.failure()
    status = StepStatus.FAILED if failure else StepStatus.OK
    summary = failure or output.summary()
    record = StepRecord(spec.name, status, seconds, summary, tuple(sorted(values.items())))
    return record, output


def run(
    pipeline: tuple[StepSpec, ...],
    ctx: StepContext,
    *,
    name: str = "retrain",
    on_record: Callable[[StepRecord], None] | None = None,
) -> RunResult:
    """Run every step of ``pipeline`` in order, then its exit handlers."""
    check_order(pipeline)
    records: dict[str, StepRecord] = {}
    main = [s for s in pipeline if not s.exit_handler]
    handlers = [s for s in pipeline if s.exit_handler]
    for spec in main:
        reason = _blocked(spec, records)
        if reason is not None:
            ctx.run.begin(spec.name)
            record = StepRecord(spec.name, StepStatus.SKIPPED, 0.0, reason)
        else:
            record, _ = run_step(spec, ctx)
        records[spec.name] = record
        if on_record is not None:
            on_record(record)
    for spec in handlers:
        record, _ = run_step(spec, ctx)
        records[spec.name] = record
        if on_record is not None:
            on_record(record)
    return RunResult(
        pipeline=name,
        run_dir=ctx.run_dir,
        records=tuple(records.values()),
        handlers=tuple(s.name for s in handlers),
    )


def _blocked(spec: StepSpec, records: dict[str, StepRecord]) -> str | None:
    for dep in spec.depends:
        if records[dep].status != StepStatus.OK:
            return f"not run: {dep} {records[dep].status.value}"
    when = spec.when
    if when is not None:
        outputs = dict(records[when.step].outputs)
        if not when.holds(outputs):
            return f"not run: {when.step} {when.output}={outputs.get(when.output, '(none)')}"
    return None


def _write_outputs(directory: Path, spec: StepSpec, output: Record, values: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{spec.name}.json").write_text(_json(output))
    for key in spec.outputs:
        (directory / key).write_text(values.get(key, ""))


def _json(output: Record) -> str:
    return json.dumps(output.to_dict(), allow_nan=False)


def _one_line(text: str) -> str:
    return " ".join(text.split())
