"""``kubectl turnout`` and the README's plain kubectl recipes, against a real API server.

The real kubectl binary finds the plugin on PATH (the venv's ``bin``, where ``pip install .``
puts ``kubectl-turnout``) and runs it with a token the API server issued to an on-call
ServiceAccount whose Role grants what the plugin and the recipes use, and nothing else:
``get``, ``list`` and ``patch`` on ModelDeployments in one namespace. No operator runs here:
the test writes the status an operator would have written (a candidate in flight, two past
stable versions), and each command is judged by what it prints and what the object holds
afterwards.

The README's rollback recipes ("Running on Kubernetes", **Roll back.**) are taken from
README.md and run as written, through bash, in the README's namespace and with its names.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.k8s.cluster import Cluster
from tests.k8s.conftest import ROOT, TOOLS
from turnout.cli import kubectl
from turnout.core import actions
from turnout.core.spec import ModelDeploymentSpec, ModelDeploymentStatus, dump
from turnout.io.kube import Conflict, Kube, Obj

pytestmark = pytest.mark.cluster

#: The README's namespace and ModelDeployment.
NS, NAME = "risk", "fraud"
#: Where `pip install .` put kubectl-turnout: next to this interpreter.
VENV_BIN = Path(sys.executable).parent
IMAGE = "registry.example.com/fraud:{}"
RESOURCE = "modeldeployment.turnout.dev/fraud"
#: status.history as the operator writes it, newest first.
HISTORY = [
    {"version": "v3", "image": IMAGE.format("v3"), "promotedAt": "2026-11-20T09:30:00Z",
     "reason": "Promoted"},
    {"version": "v2", "image": IMAGE.format("v2"), "promotedAt": "2026-10-02T14:05:00Z",
     "reason": "Promoted"},
]  # fmt: skip
#: What an on-call engineer is granted to use the plugin and the recipes.
ROLLOUT_VERBS = ["get", "list", "patch"]


# --- the README ---------------------------------------------------------------------------


def _readme_part(start: str, end: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Running on Kubernetes") :]
    section = section[: section.index("\n## ")]
    return section[section.index(start) : section.index(end)]


@dataclass
class Step:
    """One ``$ command`` of a console block (continuation lines kept), and the lines shown
    after it."""

    command: str
    shown: list[str] = field(default_factory=list)


def console_steps(block: str) -> list[Step]:
    steps: list[Step] = []
    lines = iter(block.splitlines())
    for line in lines:
        if line.startswith("$ "):
            command = line[2:]
            while command.endswith("\\"):
                command += "\n" + next(lines)
            steps.append(Step(command))
        elif steps and line and not line.startswith("#"):
            steps[-1].shown.append(line)
    return steps


def rollback_recipes() -> tuple[list[Step], list[Step]]:
    """The two console blocks under **Roll back.**: the plugin's, and kubectl alone."""
    part = _readme_part("**Roll back.**", "**When something is wrong.**")
    plugin, plain = re.findall(r"```console\n(.*?)```", part, re.S)
    return console_steps(plugin), console_steps(plain)


def readme_fraud_yaml() -> str:
    part = _readme_part("**Serve a model.**", "**Canary a new version.**")
    (doc,) = re.findall(r"```yaml\n(# fraud.yaml\n.*?)```", part, re.S)
    return str(doc)


# --- the cluster, as the on-call engineer sees it -----------------------------------------


def _rbac(account: str, verbs: list[str]) -> list[Obj]:
    rbac = "rbac.authorization.k8s.io"
    rule = {"apiGroups": ["turnout.dev"], "resources": ["modeldeployments"], "verbs": verbs}
    meta = {"name": account, "namespace": NS}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": f"{rbac}/v1", "kind": "Role", "metadata": meta, "rules": [rule]},
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": rbac, "kind": "Role", "name": account},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": NS}],
        },
    ]


@dataclass(frozen=True)
class Shell:
    """Commands as the on-call engineer types them: kubectl from .tools/bin, the plugin from
    the venv, a kubeconfig with their token."""

    cluster: Cluster
    kubeconfig: Path
    cwd: Path

    def env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        path = os.pathsep.join([str(VENV_BIN), str(TOOLS), os.environ.get("PATH", "")])
        return {**self.cluster.env(kubeconfig or self.kubeconfig), "PATH": path}

    def kubectl(
        self, *args: str, kubeconfig: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(self.cluster.kubectl_path), *args]
        return self._run(argv, kubeconfig)

    def bash(self, command: str) -> subprocess.CompletedProcess[str]:
        return self._run(["bash", "-c", command], None)

    def _run(self, argv: list[str], kubeconfig: Path | None) -> subprocess.CompletedProcess[str]:
        env = self.env(kubeconfig)
        return subprocess.run(
            argv, capture_output=True, text=True, cwd=self.cwd, env=env, timeout=120
        )


def ok(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 0, f"{out.args}:\n{out.stdout}{out.stderr}"
    return out.stdout


def refused(out: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused command prints."""
    assert out.returncode == 1, f"{out.args}:\n{out.stdout}{out.stderr}"
    assert out.stdout == "" and "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    return line


@pytest.fixture(scope="module")
def shell(
    cluster: Cluster, turnout_crds: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Shell:
    cluster.namespace(NS)
    cluster.apply([*_rbac("oncall", ROLLOUT_VERBS), *_rbac("viewer", ["get", "list"])])
    return Shell(
        cluster,
        cluster.service_account_kubeconfig(NS, "oncall"),
        tmp_path_factory.mktemp("kubectl"),
    )


@pytest.fixture(scope="module")
def viewer(cluster: Cluster, shell: Shell) -> Path:
    return cluster.service_account_kubeconfig(NS, "viewer")


@pytest.fixture(scope="module")
def admin(cluster: Cluster) -> Kube:
    return Kube.connect(kubeconfig=str(cluster.kubeconfig))


@pytest.fixture
def fraud(cluster: Cluster, shell: Shell, admin: Kube) -> Iterator[Callable[[], Obj]]:
    """The README's fraud.yaml, with a canary of v4 at 25 % as the operator reports it after
    v2 and v3 were promoted in turn. Yields a function reading the object (as admin)."""
    cluster.ok("delete", "mdep", NAME, "-n", NS, "--ignore-not-found", "--wait")
    cluster.ok("apply", "-f", "-", input=readme_fraud_yaml())
    candidate = {"version": "v4", "image": IMAGE.format("v4")}
    admin.patch_deployment(NS, NAME, {"spec": {"candidate": candidate}})
    base = "http://fraud-{}-predictor.risk.svc.cluster.local"
    routing = {
        "stable": {"version": "v3", "url": base.format("v3")},
        "candidate": {"version": "v4", "url": base.format("v4"), "weight": 25},
    }
    status = {"phase": "Progressing", "step": 1, "routing": routing, "history": HISTORY}
    admin.patch_deployment_status(NS, NAME, status)
    yield lambda: admin.get_deployment(NS, NAME)
    cluster.ok("delete", "mdep", NAME, "-n", NS, "--ignore-not-found", "--wait")


# --- the plugin ---------------------------------------------------------------------------


def test_kubectl_finds_the_plugin_on_path(shell: Shell) -> None:
    listed = ok(shell.kubectl("plugin", "list", "--name-only"))
    assert "kubectl-turnout" in listed.split()
    assert "Roll out model versions in the cluster" in ok(shell.kubectl("turnout", "--help"))


@pytest.mark.parametrize(
    ("args", "allowed"),
    [
        (("get", "modeldeployments"), True),
        (("list", "modeldeployments"), True),
        (("patch", "modeldeployments"), True),
        (("patch", "modeldeployments", "--subresource=status"), False),  # the operator's
        (("update", "modeldeployments"), False),
        (("delete", "modeldeployments"), False),
        (("create", "modeldeployments"), False),
        (("get", "secrets"), False),
        (("patch", "inferenceservices.serving.kserve.io"), False),
    ],
)
def test_the_on_call_role_holds_only_what_the_commands_use(
    shell: Shell, args: tuple[str, ...], allowed: bool
) -> None:
    out = shell.kubectl("auth", "can-i", *args, "-n", NS)
    assert out.stdout.strip() == ("yes" if allowed else "no"), out.stderr


def test_status_shows_what_kubectl_get_shows(shell: Shell, fraud: Callable[[], Obj]) -> None:
    table = ok(shell.kubectl("turnout", "status", "-n", NS)).splitlines()
    printed = ok(shell.kubectl("get", "mdep", "-n", NS)).splitlines()
    assert [row.split()[:-1] for row in table] == [row.split()[:-1] for row in printed]  # no AGE
    assert table[1].split()[:-1] == ["fraud", "v3", "v4", "Canary", "25", "Progressing"]

    detail = ok(shell.kubectl("turnout", "status", NAME, "-n", NS))
    assert f"Stable:     v3 ({IMAGE.format('v3')})" in detail
    assert f"Candidate:  v4 ({IMAGE.format('v4')})" in detail
    assert "Step:       2 of 3 (25%)" in detail
    rows = [line.split() for line in detail.splitlines()]
    assert ["candidate", "v4", "25%", "http://fraud-v4-predictor.risk.svc.cluster.local"] in rows


def test_each_command_prints_what_it_changed_and_the_object_holds_it(
    shell: Shell, fraud: Callable[[], Obj]
) -> None:
    def spec() -> Any:
        return fraud()["spec"]

    def action() -> Any:
        return fraud()["metadata"].get("annotations", {}).get("turnout.dev/action")

    story: list[tuple[list[str], str, Callable[[], bool]]] = [
        (["pause"], "paused; weights frozen (spec.paused=true)", lambda: spec()["paused"]),
        (["pause"], "paused; weights frozen (spec.paused=true) (no change)",
         lambda: spec()["paused"]),
        (["resume"], "resumed (spec.paused=false)", lambda: not spec()["paused"]),
        (["promote"], "promote of v4 requested (annotation turnout.dev/action=promote)",
         lambda: action() == "promote"),
        (["abort"], "abort of v4 requested (annotation turnout.dev/action=abort)",
         lambda: action() == "abort"),
        (["rollback"], "removed candidate v4; v3 serves all traffic",
         lambda: "candidate" not in spec() and spec()["stable"]["version"] == "v3"),
        (["rollback", "--to", "v2"], "stable v3 -> v2 (served as stable since 2026-10-02 14:05)",
         lambda: spec()["stable"] == {"version": "v2", "image": IMAGE.format("v2"), "env": {}}),
        (["rollback"], "stable v2 -> v3 (served as stable since 2026-11-20 09:30)",
         lambda: spec()["stable"]["version"] == "v3"),
    ]  # fmt: skip
    for args, said, holds in story:
        out = ok(shell.kubectl("turnout", *args, NAME, "-n", NS))
        assert out == f"{RESOURCE}: {said}\n", args
        assert holds(), (args, fraud())


def test_a_refused_command_says_why_in_one_line_and_changes_nothing(
    shell: Shell, viewer: Path, fraud: Callable[[], Obj]
) -> None:
    ok(shell.kubectl("turnout", "rollback", NAME, "-n", NS))
    before = fraud()["metadata"]["resourceVersion"]
    run = shell.kubectl
    assert refused(run("turnout", "promote", NAME, "-n", NS)) == (
        "error: fraud has no candidate to promote"
    )
    assert refused(run("turnout", "rollback", NAME, "-n", NS, "--to", "v9")) == (
        "error: 'v9' is not a past stable version of fraud (history: v2, v3)"
    )
    assert refused(run("turnout", "pause", "nope", "-n", NS)) == (
        f'error: {RESOURCE.split("/")[0]} "nope" not found in namespace "{NS}"'
    )
    # The API server's refusals too: a read-only user, and a namespace the Role does not cover.
    assert refused(run("turnout", "pause", NAME, "-n", NS, kubeconfig=viewer)) == (
        'error: modeldeployments.turnout.dev "fraud" is forbidden: User '
        f'"system:serviceaccount:{NS}:viewer" cannot patch resource "modeldeployments" in API '
        f'group "turnout.dev" in the namespace "{NS}"'
    )
    assert "cannot list resource" in refused(run("turnout", "status", "-A"))
    assert "v3" in ok(run("turnout", "status", NAME, "-n", NS, kubeconfig=viewer))
    assert fraud()["metadata"]["resourceVersion"] == before


class RacingKube(Kube):
    """The plugin's client, with the operator writing status right after the plugin's first
    ``races`` reads: the patch that follows carries a stale resourceVersion."""

    operator: Kube
    races = 0
    conflicts = 0

    def get_deployment(self, namespace: str, name: str) -> Obj:
        obj = super().get_deployment(namespace, name)
        if self.races:
            self.races -= 1
            self.operator.patch_deployment_status(
                namespace, name, {"message": f"pass {self.races}"}
            )
        return obj

    def patch_deployment(self, namespace: str, name: str, patch: Obj) -> Obj:
        try:
            return super().patch_deployment(namespace, name, patch)
        except Conflict:
            self.conflicts += 1
            raise


@pytest.mark.parametrize("races", [2, 3])
def test_a_status_write_between_read_and_patch_is_retried(
    shell: Shell,
    admin: Kube,
    fraud: Callable[[], Obj],
    monkeypatch: pytest.MonkeyPatch,
    races: int,
) -> None:
    """In process, so the operator's write lands exactly between the plugin's read and its
    patch; the API server answers 409 and the plugin reads and decides again, up to 3 times."""
    kube = RacingKube.connect(kubeconfig=str(shell.kubeconfig))
    assert isinstance(kube, RacingKube)
    kube.operator, kube.races = admin, races
    monkeypatch.setattr(kubectl, "connect", lambda **_: kube)
    result = CliRunner().invoke(kubectl.cli, ["pause", NAME, "-n", NS])
    obj = fraud()
    assert obj["status"]["message"] == "pass 0"  # the operator's writes all kept
    if races < kubectl.ATTEMPTS:
        assert result.exit_code == 0, result.output
        assert result.output == f"{RESOURCE}: paused; weights frozen (spec.paused=true)\n"
        assert kube.conflicts == races and obj["spec"]["paused"] is True
    else:
        assert result.exit_code == 1
        assert result.output.strip() == (
            f"error: {RESOURCE} changed under every one of 3 attempts; try again"
        )
        assert kube.conflicts == 3 and obj["spec"]["paused"] is False


# --- the README's recipes, verbatim ---------------------------------------------------------


def test_readme_plugin_rollback_recipe(shell: Shell, fraud: Callable[[], Obj]) -> None:
    plugin, _ = rollback_recipes()
    drop, to_v2 = plugin
    assert drop.command == "kubectl turnout rollback fraud -n risk"
    assert ok(shell.bash(drop.command)).splitlines() == drop.shown
    assert "candidate" not in fraud()["spec"]
    assert "--to v2" in to_v2.command
    ok(shell.bash(to_v2.command))
    assert fraud()["spec"]["stable"] == {"version": "v2", "image": IMAGE.format("v2"), "env": {}}


def _plugin_would_leave(obj: Obj, to: str | None = None) -> dict[str, Any]:
    """The spec ``kubectl turnout rollback [--to]`` would leave, decided from the same object."""
    spec = ModelDeploymentSpec.model_validate(obj["spec"])
    history = ModelDeploymentStatus.model_validate(obj["status"]).history
    return dump(actions.rollback(spec, name=NAME, history=history, to=to).spec)


def test_readme_kubectl_recipes_verbatim(
    shell: Shell, admin: Kube, fraud: Callable[[], Obj]
) -> None:
    """Each recipe does what its comment promises, and the two rollbacks leave the spec the
    plugin's own patches would (the README says they are the same)."""
    # The running stable was started with settings of its own; a past version brings its own.
    admin.patch_deployment(NS, NAME, {"spec": {"stable": {"env": {"LOG_LEVEL": "debug"}}}})
    _, plain = rollback_recipes()
    wanted: dict[str, Callable[[Obj, Obj, str], None]] = {}

    def expect(fragment: str) -> Callable[[Callable[[Obj, Obj, str], None]], None]:
        def register(check: Callable[[Obj, Obj, str], None]) -> None:
            wanted[fragment] = check

        return register

    @expect('{"spec":{"candidate":null}}')
    def _(before: Obj, after: Obj, out: str) -> None:
        assert "candidate" not in after["spec"]
        assert dump(ModelDeploymentSpec.model_validate(after["spec"])) == _plugin_would_leave(
            before
        )

    @expect("jsonpath=")
    def _(before: Obj, after: Obj, out: str) -> None:
        assert out.splitlines() == [f"{h['version']}\t{h['image']}" for h in HISTORY]

    @expect('"stable":{"version":"v2"')
    def _(before: Obj, after: Obj, out: str) -> None:
        assert after["spec"]["stable"] == {"version": "v2", "image": IMAGE.format("v2"), "env": {}}
        spec = dump(ModelDeploymentSpec.model_validate(after["spec"]))
        assert spec == _plugin_would_leave(before, to="v2")

    @expect("turnout.dev/action=abort")
    def _(before: Obj, after: Obj, out: str) -> None:
        assert after["metadata"]["annotations"]["turnout.dev/action"] == "abort"

    @expect('{"spec":{"paused":true}}')
    def _(before: Obj, after: Obj, out: str) -> None:
        assert after["spec"]["paused"] is True

    ran = []
    for step in plain:
        (fragment,) = [f for f in wanted if f in step.command]
        before = fraud()
        out = ok(shell.bash(step.command))
        wanted[fragment](before, fraud(), out)
        ran.append(fragment)
        program, _, kind, *_ = shlex.split(step.command, comments=True)
        assert (program, kind) == ("kubectl", "mdep"), step.command  # kubectl alone
    assert ran == list(wanted)  # every recipe, in the README's order
