"""`turnout demo`'s stories of a second model: a user's digits classifier beside fraud.

The digits example (examples/digits: a small torch CNN on scikit-learn's bundled 8x8 digits,
served through turnout's serving SDK) is deployed as its own ModelDeployment behind the same
router as fraud, exactly as a user would deploy their own Bento:

- it answers the Open Inference Protocol v2 through the router, JSON and binary tensors;
- a better-trained version is canaried and promoted;
- a version that confuses two digits (3 and 8) is shadowed and blocked: its top class agrees
  with stable's on too few rows, and it never answers a user;
- a version trained on shuffled labels is A/B-tested on user feedback (was the predicted
  digit right?) and loses: rolled back with both arms' accuracy in the experiment;
- the retraining pipeline, with the example's plugin and gate, proposes a version that is
  canaried and promoted;
- a file of images is batch-scored with the serving version.

Its versions are trained the way the example's README says (``python examples/digits/train.py``).
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click
import numpy as np
import numpy.typing as npt

from turnout.core.spec import Phase

if TYPE_CHECKING:
    from turnout.cli.demo import Demo, Verdict

DIGITS = "digits"
#: Two healthy versions (seeds 0 and 1); each story's candidate is whichever is not stable.
HEALTHY = ("v1", "v2")
SHUFFLED = "v3"  # trained on shuffled labels: right about one time in ten
CONFUSED = "v4"  # trained with the labels of 3 and 8 swapped
VERSIONS = {
    "v1": ("--seed", "0"),
    "v2": ("--seed", "1"),
    SHUFFLED: ("--seed", "0", "--shuffle-labels"),
    CONFUSED: ("--seed", "0", "--confuse", "3,8"),
}
EPOCHS = "12"
AB_MIN_SAMPLES = 60


def example_dir() -> str:
    from turnout.io.processes import project_root

    return str(project_root() / "examples" / "digits")


def ensure_models() -> None:
    """Train the digits versions the stories use, as the example's README does."""
    import bentoml

    from turnout_sdk.server import model_ref  # noqa: F401  (bentoml reads BENTOML_HOME first)

    for version, options in VERSIONS.items():
        tag = f"{DIGITS}:{version}"
        if bentoml.models.BentoModel(tag).stored is not None:
            click.echo(f"{tag} exists")
            continue
        cmd = [sys.executable, f"{example_dir()}/train.py", "--version", version]
        cmd += ["--epochs", EPOCHS, *options]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"training {tag} failed: {done.stderr.strip()[-400:]}")
        click.echo(f"{tag}: {' '.join(options)} ({done.stdout.strip().splitlines()[0]})")


def deploy_args() -> tuple[str, ...]:
    """How the demo first deploys digits: its own Bento, compared by top class."""
    return ("--service", example_dir(), "--comparison", "multiclass")


def served_on_v2(demo: Demo) -> Verdict:
    """The router answers digits over v2, JSON and binary tensors (tritonclient when
    installed), with the top class right on held-out images."""
    from sklearn.datasets import load_digits

    from turnout.cli.demo import Verdict

    data = load_digits()
    images = data.images[-100:].astype(np.float32).reshape(-1, 1, 8, 8)
    labels = data.target[-100:]
    said = []
    ok = True
    for binary in (False, True):
        probabilities = _infer(
            demo.platform.url, images, binary=binary, headers=demo.platform.headers
        )
        accuracy = float((probabilities.argmax(axis=1) == labels).mean())
        ok = ok and probabilities.shape == (100, 10) and accuracy >= 0.9
        said.append(f"{'binary' if binary else 'JSON'} accuracy {accuracy:.2f}")
    return Verdict(ok, f"{DIGITS} over v2 through the router: {', '.join(said)}")


def _infer(
    url: str, images: npt.NDArray[Any], *, binary: bool, headers: dict[str, str]
) -> npt.NDArray[Any]:
    host = url.removeprefix("http://")
    try:
        import tritonclient.http as triton
    except ImportError:  # tritonclient is a test dependency: plain JSON without it
        import httpx

        body: dict[str, Any] = {
            "inputs": [{"name": "image", "shape": [100, 1, 8, 8], "datatype": "FP32"}]
        }
        body["inputs"][0]["data"] = np.asarray(images).ravel().tolist()
        reply = httpx.post(
            f"{url}/v2/models/{DIGITS}/infer", json=body, headers=headers, timeout=10
        )
        doc = reply.json()
        return np.asarray(doc["outputs"][0]["data"]).reshape(100, 10)
    client = triton.InferenceServerClient(url=host)
    tensor = triton.InferInput("image", [100, 1, 8, 8], "FP32")
    tensor.set_data_from_numpy(images, binary_data=binary)
    wanted = triton.InferRequestedOutput("probabilities", binary_data=binary)
    result = client.infer(DIGITS, [tensor], outputs=[wanted], headers=headers)
    result = result.as_numpy("probabilities")
    return np.asarray(result)


def canary(demo: Demo) -> Verdict:
    from turnout.cli.demo import Verdict

    d = demo.of(DIGITS, HEALTHY)
    old, version = d.stable(), d.healthy_candidate()
    st = d.canary(version)[0].status
    stable = st.routing.stable.version if st.routing.stable else "-"
    passed = st.phase is Phase.PROMOTED and stable == version
    return Verdict(passed, f"{st.phase.value}: {DIGITS} {version} over {old}")


def confused_shadow(demo: Demo) -> Verdict:
    from turnout.cli.demo import Verdict
    from turnout.core.spec import seconds

    d = demo.of(DIGITS, HEALTHY)
    duration = f"{2 * seconds(d.interval):g}s"
    since = d.deploy(
        CONFUSED, "--strategy", "shadow", "--duration", duration, "--then", "Canary",
        "--interval", d.interval,
    )  # fmt: skip
    st = d.finish(CONFUSED, since).status
    check = next((c for c in st.checks if c.name.startswith("shadowAgreement")), None)
    served = d.traffic.counts.served_by(CONFUSED)
    passed = st.phase is Phase.ROLLED_BACK and check is not None and not check.passed
    passed = passed and served == 0
    value = check.describe() if check else "no shadowAgreement check"
    return Verdict(passed, f"{st.phase.value}: {value}; users served by it: {served}")


def shuffled_ab(demo: Demo) -> Verdict:
    from turnout.cli.demo import Verdict
    from turnout.cli.traffic import top_class_right

    d = demo.of(DIGITS, HEALTHY)
    d.traffic.set_judge(top_class_right)
    click.echo("  feedback: 1 when the predicted digit was right, else 0")
    try:
        since = d.deploy(
            SHUFFLED, "--strategy", "abtest", "--split", "50",
            "--min-samples", str(AB_MIN_SAMPLES), "--mde", "0.2", "--interval", d.interval,
            "--set", "strategy.abTest.metric=accuracy",
        )  # fmt: skip
        st = d.finish(SHUFFLED, since).status
    finally:
        d.traffic.set_judge(None)
    endings = [e["reason"] for e in d.events(since) if e["reason"] in ("StableWon", "RolledBack")]
    ex = st.experiment
    numbers = ""
    if ex is not None and len(ex.arms) == 2:
        s, c = ex.arms["stable"], ex.arms["candidate"]
        numbers = (
            f": accuracy stable {s.mean or 0:.2f} vs candidate {c.mean or 0:.2f}, "
            f"n={s.n:.0f}/{c.n:.0f}"
        )
    passed = st.phase is Phase.ROLLED_BACK and "StableWon" in endings
    return Verdict(passed, f"{st.phase.value} ({', '.join(endings) or 'no ending'}){numbers}")


RETRAINED = "v5"
PLUGIN = "examples.digits.pipeline:PIPELINE"


def retrain(demo: Demo) -> Verdict:
    """The retraining pipeline with the digits plugin and its own gate proposes a version,
    which the controller canaries like any other, and promotes."""
    import json

    from turnout.cli.demo import Verdict, canary_policy, run_pipeline

    d = demo.of(DIGITS, HEALTHY)
    canary_policy(d)
    run_dir = d.store.dir.parent / "runs" / f"{DIGITS}-{RETRAINED}"
    since = datetime.now(UTC)
    code = run_pipeline(
        run_dir,
        f"model={DIGITS}",
        f"plugin={PLUGIN}",
        f"version={RETRAINED}",
        "force=true",
        "gate=max_latency_ms=250",  # p99 of single calls on a busy 2-core machine
    )
    if code != 0:
        return Verdict(False, f"the pipeline failed (exit {code}); see {run_dir}")
    gate = json.loads((run_dir / "validate.json").read_text())
    st = d.finish(RETRAINED, since).status
    stable = st.routing.stable.version if st.routing.stable else "-"
    said = f"gate {gate['checks']} checks passed; {st.phase.value}: {stable} serves"
    return Verdict(st.phase is Phase.PROMOTED and stable == RETRAINED, said)


def batch(demo: Demo) -> Verdict:
    """`turnout batch-predict` scores a file of images with the serving version."""
    import tempfile
    from pathlib import Path

    from sklearn.datasets import load_digits

    from turnout.cli.demo import Verdict

    d = demo.of(DIGITS, HEALTHY)
    data = load_digits()
    images = data.images[:500].astype(np.float32).reshape(-1, 1, 8, 8)
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "images.npz", Path(tmp) / "scored.npz"
        np.savez(source, image=images)
        tag = f"{DIGITS}:{d.stable()}"
        args = [sys.executable, "-m", "turnout", "batch-predict", tag, str(source), str(target)]
        click.echo(f"$ turnout batch-predict {tag} images.npz scored.npz")
        done = subprocess.run(args, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return Verdict(False, f"exit {done.returncode}: {done.stderr.strip()[-300:]}")
        probabilities = np.load(target)["probabilities"]
    accuracy = float((probabilities.argmax(axis=1) == data.target[:500]).mean())
    passed = probabilities.shape == (500, 10) and accuracy >= 0.9
    return Verdict(passed, f"{len(probabilities)} images scored by {tag}, accuracy {accuracy:.3f}")
