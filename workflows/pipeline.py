"""The retrain DAG: which step follows which, and when a step is not run at all.

One description serves both ways of running it: the local runner (workflows/runner.py) walks
it in-process, and the Hera definitions (workflows/definitions.py) render it to an Argo
Workflows DAG whose task ``<name>`` runs ``turnout pipeline step <name> --run-dir /work/run
--param ...`` in the turnout image. So the rules live here as data:

- ``depends``: the steps that must have *succeeded* first (Argo: ``depends: "a.Succeeded"``;
  a skipped or failed dependency means the step is not run either);
- ``when``: a condition on an earlier step's output parameter (Argo: ``when:
  "{{tasks.check-drift.outputs.parameters.skip}} == false"``);
- ``outputs``: the small values a step writes to ``$TURNOUT_OUTPUTS_DIR/<output>``
  (default /tmp/outputs) for Argo output parameters, besides ``<step>.json`` (parameter
  ``result``);
- ``exit_handler``: runs last, however the run ended (Argo: ``onExit``).

The adapters below read a step's inputs from the run directory, so a step behaves the same
whether its predecessor ran in this process or in another pod.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from workflows import steps
from workflows.params import RetrainParams
from workflows.records import Candidate, DriftCheck, Package, Record, RunDir, Snapshot, Validation
from workflows.steps import (
    CHECK_DRIFT,
    NOTIFY,
    PACKAGE,
    PROPOSE,
    SNAPSHOT,
    TRAIN,
    VALIDATE,
    SmokeTest,
)
from workflows.targets import DeploymentTarget


@dataclass(frozen=True)
class StepContext:
    """Everything a step needs besides earlier outputs: parameters, run dir, where the
    ModelDeployment lives, and whether it runs in a cluster (package then builds a bento)."""

    params: RetrainParams
    run_dir: Path
    target: DeploymentTarget
    cluster: bool = False
    #: The serving smoke test (None: the real one, workflows/smoke.py).
    smoke: SmokeTest | None = None

    @property
    def run(self) -> RunDir:
        return RunDir(self.run_dir)


@dataclass(frozen=True)
class When:
    """Run a step only if ``step``'s output parameter ``output`` equals ``equals``."""

    step: str
    output: str
    equals: str

    def holds(self, outputs: dict[str, str]) -> bool:
        return outputs.get(self.output) == self.equals

    def describe(self) -> str:
        return f"{self.step}.{self.output} == {self.equals}"


@dataclass(frozen=True)
class StepSpec:
    name: str
    depends: tuple[str, ...]
    fn: Callable[[StepContext], Record]
    help: str
    when: When | None = None
    #: Output parameter names (files in the outputs dir), besides ``result``.
    outputs: tuple[str, ...] = ()
    exit_handler: bool = False


# --- adapters: read inputs from the run dir, call the step --------------------------------


def _snapshot(ctx: StepContext) -> Record:
    return steps.snapshot(ctx.params, run_dir=ctx.run_dir)


def _check_drift(ctx: StepContext) -> Record:
    snap = ctx.run.read(SNAPSHOT, Snapshot)
    return steps.check_drift(ctx.params, snap, run_dir=ctx.run_dir, target=ctx.target)


def _train(ctx: StepContext) -> Record:
    return steps.train(ctx.params, ctx.run.read(SNAPSHOT, Snapshot), run_dir=ctx.run_dir)


def _validate(ctx: StepContext) -> Record:
    run = ctx.run
    return steps.validate(
        ctx.params,
        run.read(SNAPSHOT, Snapshot),
        run.read(CHECK_DRIFT, DriftCheck),
        run.read(TRAIN, Candidate),
        run_dir=ctx.run_dir,
        smoke=ctx.smoke,
    )


def _package(ctx: StepContext) -> Record:
    run = ctx.run
    return steps.package(
        ctx.params,
        run.read(TRAIN, Candidate),
        run.read(VALIDATE, Validation),
        run.read(CHECK_DRIFT, DriftCheck),
        run_dir=ctx.run_dir,
        build_bento=ctx.cluster,
    )


def _propose(ctx: StepContext) -> Record:
    return steps.propose(ctx.params, ctx.run.read(PACKAGE, Package), target=ctx.target)


def _notify(ctx: StepContext) -> Record:
    return steps.notify(ctx.params, run_dir=ctx.run_dir)


RETRAIN: tuple[StepSpec, ...] = (
    StepSpec(
        SNAPSHOT,
        (),
        _snapshot,
        help="the plugin's data (train, newest, ...); write snapshot/",
    ),
    StepSpec(
        CHECK_DRIFT,
        (SNAPSHOT,),
        _check_drift,
        help="PSI/KS of the snapshot against the stable model's reference",
        outputs=("skip",),
    ),
    StepSpec(
        TRAIN,
        (CHECK_DRIFT,),
        _train,
        help="train the candidate (seeded) and stage it in candidate/, unregistered",
        when=When(CHECK_DRIFT, "skip", "false"),
        outputs=("tag", "version"),
    ),
    StepSpec(
        VALIDATE,
        (TRAIN,),
        _validate,
        help="the validation gate; report.json and report.md",
        outputs=("passed",),
    ),
    StepSpec(
        PACKAGE,
        (VALIDATE,),
        _package,
        help="register the candidate with its report (cluster: and write bento/)",
        when=When(VALIDATE, "passed", "true"),
        outputs=("tag", "version", "image"),
    ),
    StepSpec(
        PROPOSE,
        (PACKAGE,),
        _propose,
        help="set spec.candidate of the ModelDeployment",
    ),
    StepSpec(
        NOTIFY,
        (),
        _notify,
        help="log (and POST) how the run ended",
        exit_handler=True,
    ),
)

PIPELINES: dict[str, tuple[StepSpec, ...]] = {"retrain": RETRAIN}


def step(pipeline: tuple[StepSpec, ...], name: str) -> StepSpec:
    for spec in pipeline:
        if spec.name == name:
            return spec
    known = ", ".join(s.name for s in pipeline)
    raise KeyError(f"no step {name!r} (steps: {known})")


def check_order(pipeline: tuple[StepSpec, ...]) -> None:
    """Every dependency and condition names an earlier step (the order is a valid run order)."""
    seen: set[str] = set()
    for spec in pipeline:
        before = set(spec.depends) | ({spec.when.step} if spec.when else set())
        missing = before - seen
        if missing:
            raise ValueError(f"step {spec.name} depends on {sorted(missing)}, not earlier steps")
        seen.add(spec.name)
