"""`turnout demo` as a user runs it: every scripted rollout story must behave, exit code 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1000)]

STORIES = (
    "1. healthy canary: Promoted",
    "2. errors: RolledBack: errorRate",
    "3. NaN scores: RolledBack: errorRate",
    "4. 3x latency: RolledBack: latency",
    "5. divergent shadow: RolledBack (ShadowBlocked): shadowAgreement",
    "6. A/B with lift: Promoted (CandidateWon)",
    "7. A/B without lift: RolledBack (",
    "8. drift, retrain: max PSI",
    "9. gate refuses: exit 1, rocAuc",
    "10. digits over v2: digits over v2 through the router: JSON accuracy",
    "11. digits canary: Promoted: digits",
    "12. digits confused: RolledBack: shadowAgreement (top class)",
    "13. digits shuffled A/B: RolledBack (StableWon",
    "14. digits retrain: gate",
    "15. digits batch: 500 images scored",
)


def test_every_demo_story_behaves_and_leaves_the_users_home_alone(tmp_path: Path) -> None:
    env = {**os.environ, "TURNOUT_HOME": str(tmp_path)}
    env.pop("BENTOML_HOME", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "turnout", "demo"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        # SIGTERM lets the demo stop its platform (and the model servers) before it exits.
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        pytest.fail(f"turnout demo did not finish in 900 s:\n{out}")
    assert proc.returncode == 0, out
    for story in STORIES:
        assert f"PASS {story}" in out, f"no PASS line for {story!r}:\n{out}"
    assert f"{len(STORIES)} of {len(STORIES)} stories behaved" in out
    # The demo's state is its own: the user's TURNOUT_HOME holds no deployment of it.
    assert not (tmp_path / "deployments").exists()
    assert [p.parent.name for p in tmp_path.glob("demo/*/deployments")]
