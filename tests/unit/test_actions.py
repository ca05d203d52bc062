"""The operator actions (turnout/core/actions.py) shared by ``turnout`` and ``kubectl turnout``.

Table-driven: a spec and a history go in; the spec written back, the annotation set, the
lines shown and the merge patch sent to the cluster come out, or a refusal naming why. The
local CLI's commands are checked last, over a file store: what they print and save.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.k8s.fake_kube import merge_patch as apply_merge_patch
from turnout.core import actions
from turnout.core.actions import ActionError, Change
from turnout.core.spec import (
    ACTION_ANNOTATION,
    HistoryEntry,
    Metadata,
    ModelDeployment,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    dump,
)
from turnout.io.deployments import DeploymentStore, State

T = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)


def spec(
    stable: str = "v3", candidate: str | None = "v4", *, paused: bool = False, **extra: Any
) -> ModelDeploymentSpec:
    doc: dict[str, Any] = {
        "model": "fraud",
        "stable": {"version": stable, "image": f"reg/fraud:{stable}", **extra},
        "paused": paused,
    }
    if candidate is not None:
        doc["candidate"] = {"version": candidate, "image": f"reg/fraud:{candidate}"}
    return ModelDeploymentSpec.model_validate(doc)


def hist(*versions: str) -> list[HistoryEntry]:
    """History newest first, as the controller keeps it (the current stable included)."""
    return [
        HistoryEntry(version=v, image=f"reg/fraud:{v}", promoted_at=T, reason="promoted")
        for v in versions
    ]


# --- rollback ------------------------------------------------------------------------------

ROLLBACKS = [
    pytest.param(
        spec("v3", "v4"),
        hist("v3", "v2"),
        None,
        ("v3", None),
        ["removed candidate v4; v3 serves all traffic"],
        id="candidate-in-flight-is-removed",
    ),
    pytest.param(
        spec("v3", None),
        hist("v3", "v2", "v1"),
        None,
        ("v2", None),
        ["stable v3 -> v2 (served as stable since 2026-11-20 09:30)"],
        id="no-candidate-goes-to-newest-past-stable",
    ),
    pytest.param(
        spec("v3", None),
        hist("v3", "v2", "v1"),
        "v1",
        ("v1", None),
        ["stable v3 -> v1 (served as stable since 2026-11-20 09:30)"],
        id="to-a-named-version",
    ),
    pytest.param(
        spec("v3", "v4"),
        hist("v3", "v2", "v1"),
        "v1",
        ("v1", None),
        [
            "removed candidate v4; v3 serves all traffic",
            "stable v3 -> v1 (served as stable since 2026-11-20 09:30)",
        ],
        id="to-with-candidate-removes-it-too",
    ),
    pytest.param(
        spec("v3", None),
        hist("v2", "v3", "v1"),
        None,
        ("v2", None),
        ["stable v3 -> v2 (served as stable since 2026-11-20 09:30)"],
        id="newest-entry-other-than-stable",
    ),
]


@pytest.mark.parametrize(("before", "history", "to", "after", "said"), ROLLBACKS)
def test_rollback(
    before: ModelDeploymentSpec,
    history: list[HistoryEntry],
    to: str | None,
    after: tuple[str, str | None],
    said: list[str],
) -> None:
    change = actions.rollback(before, name="fraud", history=history, to=to)
    candidate = change.spec.candidate.version if change.spec.candidate else None
    assert (change.spec.stable.version, candidate) == after
    assert list(change.said) == said
    assert change.annotations == {}
    assert change.spec.stable.image == f"reg/fraud:{after[0]}"


REFUSALS = [
    pytest.param(
        spec("v1", None),
        hist("v1"),
        None,
        "fraud has no earlier stable version to roll back to",
        id="nothing-to-roll-back-to",
    ),
    pytest.param(
        spec("v1", None), [], None, "fraud has no earlier stable version", id="empty-history"
    ),
    pytest.param(
        spec("v3", None),
        hist("v3", "v2"),
        "v9",
        "'v9' is not a past stable version of fraud (history: v2, v3)",
        id="unknown-to-names-the-known-ones",
    ),
    pytest.param(
        spec("v3", "v4"),
        hist("v3", "v2"),
        "v9",
        "'v9' is not a past stable version of fraud (history: v2, v3)",
        id="unknown-to-with-candidate",
    ),
    pytest.param(
        spec("v3", None),
        [],
        "v2",
        "'v2' is not a past stable version of fraud (history: none)",
        id="to-without-history",
    ),
    pytest.param(
        spec("v3", None),
        hist("v3", "v2"),
        "v3",
        "'v3' is the stable version of fraud already",
        id="to-the-current-stable",
    ),
]


@pytest.mark.parametrize(("before", "history", "to", "message"), REFUSALS)
def test_rollback_refuses(
    before: ModelDeploymentSpec, history: list[HistoryEntry], to: str | None, message: str
) -> None:
    with pytest.raises(ActionError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        actions.rollback(before, name="fraud", history=history, to=to)


# --- pause, resume, promote, abort -----------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "paused_before", "paused_after", "line"),
    [
        (actions.pause, False, True, "paused; weights frozen (spec.paused=true)"),
        (actions.pause, True, True, "paused; weights frozen (spec.paused=true)"),
        (actions.resume, True, False, "resumed (spec.paused=false)"),
        (actions.resume, False, False, "resumed (spec.paused=false)"),
    ],
)
def test_pause_and_resume_set_spec_paused(
    action: Any, paused_before: bool, paused_after: bool, line: str
) -> None:
    before = spec(paused=paused_before)
    change = action(before)
    assert change.spec == before.model_copy(update={"paused": paused_after})
    assert change.said == (line,)
    assert change.annotations == {}


@pytest.mark.parametrize(
    ("action", "word"), [(actions.promote, "promote"), (actions.abort, "abort")]
)
def test_promote_and_abort_annotate_without_touching_the_spec(action: Any, word: str) -> None:
    before = spec("v3", "v4")
    change = action(before, name="fraud")
    assert change.spec == before
    assert change.annotations == {ACTION_ANNOTATION: word}
    assert change.said == (f"{word} of v4 requested (annotation turnout.dev/action={word})",)


@pytest.mark.parametrize(
    ("action", "word"), [(actions.promote, "promote"), (actions.abort, "abort")]
)
def test_promote_and_abort_refuse_without_a_candidate(action: Any, word: str) -> None:
    with pytest.raises(ActionError, match=f"^fraud has no candidate to {word}$"):
        action(spec("v3", None), name="fraud")


# --- writing the change back -----------------------------------------------------------------


def test_apply_keeps_other_annotations() -> None:
    md = ModelDeployment(
        metadata=Metadata(name="fraud", annotations={"team": "risk"}), spec=spec("v3", "v4")
    )
    out = actions.apply(md, actions.promote(md.spec, name="fraud"))
    assert out.metadata.annotations == {"team": "risk", ACTION_ANNOTATION: "promote"}
    assert out.spec == md.spec


PATCHES = [
    pytest.param(
        spec("v3", "v4"),
        lambda s: actions.rollback(s, name="fraud", history=hist("v3"), to=None),
        {"spec": {"candidate": None}},
        id="removed-candidate-is-null",
    ),
    pytest.param(
        spec("v3", None),
        lambda s: actions.rollback(s, name="fraud", history=hist("v3", "v2"), to=None),
        {"spec": {"stable": {"version": "v2", "image": "reg/fraud:v2", "env": {}}}},
        id="stable-is-the-whole-version-ref",
    ),
    pytest.param(
        spec("v3", None, env={"TURNOUT_TORCH_THREADS": "2"}),
        lambda s: actions.rollback(s, name="fraud", history=hist("v3", "v2"), to=None),
        {
            "spec": {
                "stable": {
                    "version": "v2",
                    "image": "reg/fraud:v2",
                    "env": {"TURNOUT_TORCH_THREADS": None},
                }
            }
        },
        id="env-of-the-old-stable-is-removed",
    ),
    pytest.param(
        spec("v3", "v4"),
        lambda s: actions.rollback(s, name="fraud", history=hist("v3", "v2"), to="v2"),
        {
            "spec": {
                "candidate": None,
                "stable": {"version": "v2", "image": "reg/fraud:v2", "env": {}},
            }
        },
        id="rollback-to-with-candidate",
    ),
    pytest.param(spec(), actions.pause, {"spec": {"paused": True}}, id="pause"),
    pytest.param(spec(paused=True), actions.pause, {}, id="pause-when-paused-sends-nothing"),
    pytest.param(
        spec(),
        lambda s: actions.promote(s, name="fraud"),
        {"metadata": {"annotations": {ACTION_ANNOTATION: "promote"}}},
        id="promote-is-an-annotation",
    ),
]


@pytest.mark.parametrize(("before", "action", "patch"), PATCHES)
def test_merge_patch(before: ModelDeploymentSpec, action: Any, patch: dict[str, Any]) -> None:
    change: Change = action(before)
    assert actions.merge_patch(before, change) == patch


@pytest.mark.parametrize(("before", "action", "patch"), PATCHES)
def test_merge_patch_applied_to_the_live_object_gives_the_new_spec(
    before: ModelDeploymentSpec, action: Any, patch: dict[str, Any]
) -> None:
    """RFC 7386 on the stored spec gives exactly the spec the action decided on."""
    change: Change = action(before)
    live = {"spec": dump(before)}
    patched = apply_merge_patch(live, actions.merge_patch(before, change))
    assert ModelDeploymentSpec.model_validate(patched["spec"]) == change.spec


# --- the local CLI says and saves what the actions decide ---------------------------------------


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DeploymentStore:
    from turnout.cli import main as cli

    ds = DeploymentStore(tmp_path)
    monkeypatch.setattr(cli, "_store", lambda: ds)
    ds.save(ModelDeployment(metadata=Metadata(name="fraud"), spec=spec("v3", "v4")))
    status = ModelDeploymentStatus(history=hist("v3", "v2"))
    ds.save_state("fraud", State(status=status, spec=None))
    return ds


@pytest.mark.parametrize(
    ("args", "said", "stable", "candidate", "paused", "annotation"),
    [
        (["pause"], "fraud: paused; weights frozen (spec.paused=true)", "v3", "v4", True, None),
        (["resume"], "fraud: resumed (spec.paused=false)", "v3", "v4", False, None),
        (
            ["promote"],
            "fraud: promote of v4 requested (annotation turnout.dev/action=promote)",
            "v3",
            "v4",
            False,
            "promote",
        ),
        (
            ["abort"],
            "fraud: abort of v4 requested (annotation turnout.dev/action=abort)",
            "v3",
            "v4",
            False,
            "abort",
        ),
        (
            ["rollback"],
            "fraud: removed candidate v4; v3 serves all traffic",
            "v3",
            None,
            False,
            None,
        ),
        (
            ["rollback", "--to", "v2"],
            "fraud: removed candidate v4; v3 serves all traffic\n"
            "fraud: stable v3 -> v2 (served as stable since 2026-11-20 09:30)",
            "v2",
            None,
            False,
            None,
        ),
    ],
)
def test_local_cli_commands(
    store: DeploymentStore,
    args: list[str],
    said: str,
    stable: str,
    candidate: str | None,
    paused: bool,
    annotation: str | None,
) -> None:
    from turnout.cli import main as cli

    result = CliRunner().invoke(cli.main, [args[0], "fraud", *args[1:]])
    assert result.exit_code == 0, result.output
    assert result.output == said + "\n"
    md = store.load("fraud")
    assert md.spec.stable.version == stable
    assert (md.spec.candidate.version if md.spec.candidate else None) == candidate
    assert md.spec.paused is paused
    assert md.metadata.annotations.get(ACTION_ANNOTATION) == annotation


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["rollback", "fraud", "--to", "v9"], "'v9' is not a past stable version of fraud"),
        (["promote", "nope"], "nope"),
    ],
)
def test_local_cli_refusals_leave_the_file_alone(
    store: DeploymentStore, args: list[str], message: str
) -> None:
    from turnout.cli import main as cli

    before = store.path("fraud").read_text()
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert store.path("fraud").read_text() == before


def test_rollback_to_a_past_version_serves_it_as_it_was_served() -> None:
    """A user's model keeps its own service: history records it and rollback restores it."""
    past = HistoryEntry(
        version="v2", image="reg/digits:v2", service="/srv/digits", promoted_at=T, reason="x"
    )
    done = actions.rollback(spec(candidate=None), name="digits", history=[past], to="v2")
    assert done.spec.stable.version == "v2"
    assert done.spec.stable.service == "/srv/digits"
