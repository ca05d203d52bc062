"""The ModelDeployment CRD on a real API server: installed, validating, defaulting, with status.

tests/unit/test_crd.py checks the schema without a server (jsonschema, cel-python, our own
defaulting); here the same documents go through `kubectl apply` to kube-apiserver, so the
messages are the ones a user sees, and what the server does differently shows up.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from tests.k8s.cluster import Cluster
from tests.k8s.conftest import ROOT
from tests.unit import test_crd as schema_only
from turnout.core.crd import GROUP, NAME, RULES
from turnout.core.spec import ModelDeploymentSpec, dump, parse_deployment
from turnout.io.kube import Kube

pytestmark = pytest.mark.cluster

NAMESPACE = "crd-tests"


def _params(test: Callable[..., None]) -> list[Any]:
    """The cases a test of tests/unit/test_crd.py is parametrized with: the same documents."""
    return next(m for m in test.pytestmark if m.name == "parametrize").args[1]  # type: ignore[attr-defined]


BAD_DOCUMENTS = _params(schema_only.test_bad_documents_are_rejected_at_the_field)
SPEC_CASES = [c for c in BAD_DOCUMENTS if not c.values[1][0].startswith("status")]
STATUS_CASES = [c for c in BAD_DOCUMENTS if c.values[1][0].startswith("status")]

#: What the API server says for each failed OpenAPI keyword.
SERVER_SAYS = {
    "enum": "Unsupported value",
    "maximum": "should be less than",  # "... or equal to" unless exclusive
    "minimum": "should be greater than",
    "minItems": "should have at least",
    "maxLength": "Too long",
    "pattern": "should match",
    "type": "must be of type",
    "format": "must be of type date-time",
    "required": "Required value",
}
#: The server prunes a null under a field that is not nullable before it validates, so
#: `stable: null` is reported as missing rather than as the wrong type.
SERVER_SAYS_INSTEAD = {"null-stable": "Required value"}


@pytest.fixture(scope="module")
def ns(cluster: Cluster, turnout_crds: list[str]) -> str:
    return cluster.namespace(NAMESPACE)


def _doc(name: str, change: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The unit tests' full ModelDeployment, named ``name``, in our namespace, changed."""
    doc = schema_only.full_deployment()
    doc["metadata"].update(name=name, namespace=NAMESPACE)
    if change is not None:
        change(doc)
    return doc


def _field(path: str) -> str:
    """A dotted path as the API server writes it: ``steps.1`` -> ``steps[1]``."""
    return re.sub(r"\.(\d+)", r"[\1]", path)


def _apply(cluster: Cluster, doc: dict[str, Any]) -> Any:
    return cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))


# --- the CRD itself ---------------------------------------------------------------------


def test_crd_is_established_and_served(cluster: Cluster, turnout_crds: list[str]) -> None:
    assert f"customresourcedefinition.apiextensions.k8s.io/{NAME}" in turnout_crds
    conditions = {
        c["type"]: c["status"]
        for c in cluster.get("crd", NAME)["status"]["conditions"]  # type: ignore[index]
    }
    assert conditions["Established"] == conditions["NamesAccepted"] == "True"
    resources = cluster.ok("api-resources", f"--api-group={GROUP}", "--no-headers").split()
    assert resources[:2] == ["modeldeployments", "mdep"]


def test_printer_columns_show_what_the_models_wrote(cluster: Cluster, ns: str) -> None:
    assert _apply(cluster, _doc("columns")).returncode == 0
    table = cluster.ok("get", "mdep", "columns", "-n", ns).splitlines()
    assert table[0].split() == ["NAME", "STABLE", "CANDIDATE", "STRATEGY", "WEIGHT", "PHASE", "AGE"]
    # Status is not written through the main resource, so WEIGHT and PHASE are empty.
    assert table[1].split()[:4] == ["columns", "v3", "v4", "Canary"]


# --- validation: what `kubectl apply` answers ---------------------------------------------


@pytest.mark.parametrize(("change", "error", "model_error"), SPEC_CASES)
def test_server_rejects_a_bad_spec_at_the_field(
    cluster: Cluster,
    ns: str,
    request: pytest.FixtureRequest,
    change: Callable[[dict[str, Any]], None],
    error: tuple[str, str],
    model_error: str,
) -> None:
    name = request.node.callspec.id
    out = _apply(cluster, _doc(name, change))
    assert out.returncode != 0, out.stdout
    path, keyword = error
    if keyword == "additionalProperties":  # strict field validation, before the schema
        assert f'unknown field "{model_error}"' in out.stderr
    else:
        # A missing field is reported where it is missing, like the models report it.
        field = _field(model_error if keyword == "required" else path)
        assert f"{field}: " in out.stderr, out.stderr
        assert SERVER_SAYS_INSTEAD.get(name, SERVER_SAYS[keyword]) in out.stderr, out.stderr
    assert not cluster.exists("mdep", name, "-n", ns)


@pytest.mark.parametrize(("change", "failures"), schema_only.CEL_CASES)
def test_server_cel_rules_reject_what_the_models_reject(
    cluster: Cluster,
    ns: str,
    request: pytest.FixtureRequest,
    change: Callable[[dict[str, Any]], None],
    failures: list[tuple[str, str]],
) -> None:
    name = request.node.callspec.id
    out = _apply(cluster, _doc(name, change))
    if not failures:
        assert out.returncode == 0, out.stderr
        assert cluster.exists("mdep", name, "-n", ns)
        return
    assert out.returncode != 0, out.stdout
    for path, message in failures:
        assert re.search(rf"{re.escape(path)}: Invalid value: .*: {re.escape(message)}", out.stderr)
    assert not cluster.exists("mdep", name, "-n", ns)


@pytest.fixture(scope="module")
def with_status(cluster: Cluster, ns: str) -> str:
    """A ModelDeployment whose status the tests patch through the status subresource."""
    assert _apply(cluster, _doc("with-status")).returncode == 0
    return "with-status"


def _status_patch(
    cluster: Cluster, name: str, status: dict[str, Any], *, kind: str = "merge"
) -> Any:
    body: Any = (
        {"status": status}
        if kind == "merge"
        else [{"op": "add", "path": "/status", "value": status}]
    )
    return cluster.kubectl(
        "patch", "mdep", name, "-n", NAMESPACE, "--subresource=status", f"--type={kind}",
        "-p", json.dumps(body),
    )  # fmt: skip


@pytest.mark.parametrize(("change", "error", "model_error"), STATUS_CASES)
def test_server_rejects_a_bad_status_at_the_field(
    cluster: Cluster,
    with_status: str,
    change: Callable[[dict[str, Any]], None],
    error: tuple[str, str],
    model_error: str,
) -> None:
    doc = _doc(with_status, change)
    # A JSON patch: a merge patch would drop the nulls the models write (see below).
    out = _status_patch(cluster, with_status, doc["status"], kind="json")
    assert out.returncode != 0, out.stdout
    path, keyword = error
    field = _field(model_error if keyword == "required" else path)
    assert f"{field}: " in out.stderr, out.stderr
    assert SERVER_SAYS[keyword] in out.stderr, out.stderr


def test_the_operators_status_patch_writes_every_status_the_models_write(
    cluster: Cluster, with_status: str
) -> None:
    """The operator writes status with a JSON merge patch (turnout/io/kube.py). A merge patch
    drops every null, even inside a list, so a check with no data (``value: null``) must not
    be a field the CRD requires."""
    status = _doc(with_status)["status"]
    assert any(c["value"] is None for c in status["checks"])
    Kube.connect(kubeconfig=str(cluster.kubeconfig)).patch_deployment_status(
        NAMESPACE, with_status, status
    )
    written = cluster.get("mdep", with_status, "-n", NAMESPACE)["status"]
    assert (
        parse_deployment({**_doc(with_status), "status": written}).status
        == parse_deployment(_doc(with_status)).status
    )


# --- defaulting ---------------------------------------------------------------------------


@pytest.mark.parametrize("spec", _params(schema_only.test_api_server_defaults_match_the_models))
def test_server_defaults_match_the_models(
    cluster: Cluster, ns: str, request: pytest.FixtureRequest, spec: dict[str, Any]
) -> None:
    name = f"defaults-{request.node.callspec.id.replace('spec', '')}".rstrip("-")
    body = {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": copy.deepcopy(spec),
    }
    stored = json.loads(cluster.ok("apply", "-f", "-", "-o", "json", input=json.dumps(body)))
    by_models = dump(ModelDeploymentSpec.model_validate(schema_only.meaningful(spec)))
    assert schema_only.meaningful(stored["spec"]) == schema_only.meaningful(by_models)


# --- the status subresource ---------------------------------------------------------------


def test_status_and_spec_are_written_apart(cluster: Cluster, ns: str) -> None:
    """Status only through /status, spec only through the object; only spec bumps generation."""
    body = _doc("subresource")
    status = body.pop("status")
    created = json.loads(cluster.ok("apply", "-f", "-", "-o", "json", input=json.dumps(body)))
    assert created["metadata"]["generation"] == 1
    assert "status" not in created

    # A status patch carrying a spec change: the status lands, the spec does not.
    patch = {"spec": {"stable": {"version": "v9"}}, "status": {"phase": "Progressing"}}
    cluster.ok(
        "patch", "mdep", "subresource", "-n", ns, "--subresource=status", "--type=merge",
        "-p", json.dumps(patch),
    )  # fmt: skip
    got = cluster.get("mdep", "subresource", "-n", ns)
    assert got["status"]["phase"] == "Progressing"
    assert got["spec"]["stable"]["version"] == "v3"
    assert got["metadata"]["generation"] == 1

    # A spec patch carrying status: the spec lands and bumps generation, the status does not.
    patch = {
        "spec": {"candidate": None},
        "status": {"phase": "Failed", "message": status["message"]},
    }
    cluster.ok("patch", "mdep", "subresource", "-n", ns, "--type=merge", "-p", json.dumps(patch))
    got = cluster.get("mdep", "subresource", "-n", ns)
    assert "candidate" not in got["spec"]
    assert got["status"]["phase"] == "Progressing"
    assert got["status"].get("message") != status["message"]
    assert got["metadata"]["generation"] == 2

    # The action annotation (`kubectl annotate ... turnout.dev/action=abort`) is metadata.
    cluster.ok("annotate", "mdep", "subresource", "-n", ns, "turnout.dev/action=abort")
    assert cluster.get("mdep", "subresource", "-n", ns)["metadata"]["generation"] == 2


# --- the README's list -------------------------------------------------------------------


def readme_refusals() -> tuple[list[tuple[str, str]], str]:
    """The README's table of what the API server refuses (field, message), and its example."""
    text = (ROOT / "README.md").read_text()
    part = text[text.index("<!-- api-server-refuses -->") :]
    part = part[: part.index("\n\n**", 1)]
    rows = re.findall(r"^\| `([^`]+)` \| ([^|]+?) \|$", part, re.M)
    (example,) = re.findall(r"```console\n\$ [^\n]+\n(.*?)\n```", part, re.S)
    return rows, example


def test_each_refusal_the_readme_lists_is_what_kubectl_apply_answers(
    cluster: Cluster, ns: str
) -> None:
    rows, example = readme_refusals()
    assert sorted(m for _, m in rows) == sorted(rule.message for rule in RULES), "one row a rule"
    by_message = {m: case for case in schema_only.CEL_CASES for _, m in case.values[1]}
    answers = []
    for i, (field, message) in enumerate(rows):
        change = by_message[message].values[0]
        out = _apply(cluster, _doc(f"readme-{i}", change))
        assert out.returncode != 0, out.stdout
        assert f"{field}: Invalid value: " in out.stderr and message in out.stderr, out.stderr
        answers.append(out.stderr.replace(f'"readme-{i}"', '"fraud"'))
    assert any(example in answer for answer in answers), answers
