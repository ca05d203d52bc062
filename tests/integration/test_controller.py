"""The local controller as a real process with real model servers and a real router.

One platform for the module: a canary is put in place, the controller is killed mid-rollout
and restarted (it adopts the running servers and resumes at the same step), a bad edit is
rejected while traffic keeps flowing, and `turnout rollback` empties the candidate's share.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.servers import eventually, free_port, turnout
from turnout.cli.platform import LocalPlatform
from turnout.cli.traffic import Traffic
from turnout.io.deployments import DeploymentStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


@pytest.fixture(scope="module")
def platform(trained, tmp_path_factory) -> Iterator[tuple[LocalPlatform, Traffic]]:
    from training import store

    result, _ = trained
    if not store.exists("fraud:v2"):
        store.save(result, name="fraud", version="v2")
    home = tmp_path_factory.mktemp("platform")
    out = turnout("deploy", "fraud", "--version", "v1", home=home)
    assert out.returncode == 0, out.stderr
    plat = LocalPlatform(home, port=free_port(), prometheus=False)
    with plat:
        traffic = Traffic(plat.url, "fraud", rate=40, api_key=plat.api_key).start()
        try:
            yield plat, traffic
        finally:
            traffic.stop()


def routes(plat: LocalPlatform) -> dict:
    return yaml.safe_load(plat.routes_file.read_text())["models"]["fraud"]


def router_candidate(plat: LocalPlatform) -> dict | None:
    table = httpx.get(f"{plat.url}/routes", headers=plat.headers, timeout=2).json()["table"]
    return table["models"]["fraud"]["candidate"]


def controller_log(home: Path) -> str:
    return (home / "logs" / "controller.log").read_text()


def servers(plat: LocalPlatform) -> dict:
    return json.loads((plat.home / "run" / "servers.json").read_text())


def test_rollout_survives_a_controller_crash_bad_input_and_rolls_back(platform) -> None:
    plat, traffic = platform
    home = plat.home
    store = DeploymentStore(home)
    out = turnout(
        "deploy", "fraud", "--version", "v2", "--steps", "20,50", "--interval", "1h", home=home
    )
    assert out.returncode == 0, out.stderr
    assert "rolling out v2 over v1" in out.stdout
    eventually(lambda: (routes(plat).get("candidate") or {}).get("weight") == 20.0, "20% on v2")
    eventually(lambda: traffic.counts.served_by("v2") > 10, "requests answered by v2")
    # The controller's log tells its decisions, not the HTTP requests it made to reach them.
    eventually(
        lambda: "fraud: Progressing canary v2 at 20%" in controller_log(home), "the step logged"
    )
    assert "fraud: Started Canary of v2 over stable v1 started" in controller_log(home)
    assert "HTTP Request" not in controller_log(home)
    before = store.state("fraud").status
    pids = {k: v["pid"] for k, v in servers(plat).items()}

    # A crash: SIGKILL leaves no chance to clean up. Servers and router keep serving.
    plat.procs["controller"].send_signal(signal.SIGKILL)
    plat.procs["controller"].wait()
    served = traffic.counts.served_by("v2")
    eventually(lambda: traffic.counts.served_by("v2") > served + 5, "v2 serving meanwhile")

    plat.procs.pop("controller")
    plat.start_controller()
    eventually(
        lambda: controller_log(home).count("adopting") >= 2,
        "the new controller adopting both servers",
    )
    log = controller_log(home)
    after = store.state("fraud").status
    assert (after.step, after.step_started_at, after.routing) == (
        before.step,
        before.step_started_at,
        before.routing,
    )
    assert {k: v["pid"] for k, v in servers(plat).items()} == pids  # adopted, not restarted
    assert "starting fraud:v2" not in log[log.rfind("adopting") :]

    # A bad edit is rejected with the field named; the rollout keeps its weight.
    good = store.path("fraud").read_text()
    bad = yaml.safe_load(good)
    bad["spec"]["strategy"]["canary"]["steps"] = [20, 150]
    store.path("fraud").write_text(yaml.safe_dump(bad))
    eventually(lambda: store.state("fraud").spec_error is not None, "the edit rejected")
    assert "spec.strategy.canary.steps: step 1 is 150" in str(store.state("fraud").spec_error)
    shown = turnout("status", "fraud", home=home).stdout
    assert "spec rejected, the last good spec keeps running" in shown
    assert routes(plat)["candidate"]["weight"] == 20.0
    store.path("fraud").write_text(good)
    eventually(lambda: store.state("fraud").spec_error is None, "the fixed file accepted")

    # Rollback: after the command returns, the candidate's share empties within a second.
    out = turnout("rollback", "fraud", home=home)
    returned = time.monotonic()
    assert out.returncode == 0, out.stderr
    assert "removed candidate v2; v1 serves all traffic" in out.stdout
    eventually(lambda: routes(plat)["candidate"] is None, "the candidate out of the routes", 1.0)
    eventually(lambda: router_candidate(plat) is None, "the router's table without v2", 1.0)
    settled = traffic.counts.served_by("v2")
    total = sum(traffic.counts.replies.values())
    eventually(lambda: sum(traffic.counts.replies.values()) > total + 40, "more traffic")
    assert traffic.counts.served_by("v2") == settled
    assert time.monotonic() - returned < 10
    eventually(lambda: store.state("fraud").status.phase.value == "RolledBack", "RolledBack")
