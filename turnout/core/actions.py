"""What an operator can do to a ModelDeployment by hand, decided purely.

``turnout`` (the local file store) and ``kubectl turnout`` (the cluster) offer the same
commands and must mean the same by them, so both ask these functions what to change and
repeat what they say; each then writes the change its own way: the CLI saves the changed
object (:func:`apply`), the plugin sends a JSON merge patch (:func:`merge_patch`).

- rollback: with a candidate in flight, remove it (stable serves everything); without one, or
  with ``to``, set stable back to the newest (or the named) past stable version in history.
- pause / resume: ``spec.paused`` (weights freeze, analyses stop).
- promote / abort: the ``turnout.dev/action`` annotation, which the controller acts on and
  clears; refused when there is no candidate to act on.

No I/O and no clock: a function takes the spec (and the history) and returns a
:class:`Change`, or raises :class:`ActionError` with a message to show as it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from turnout.core.spec import (
    ACTION_ANNOTATION,
    Action,
    HistoryEntry,
    ModelDeployment,
    ModelDeploymentSpec,
    VersionRef,
    dump,
)


class ActionError(ValueError):
    """The action cannot be done to this deployment; the message says why."""


@dataclass(frozen=True)
class Change:
    """One action's outcome: the spec to write, annotations to set, and what was done."""

    spec: ModelDeploymentSpec
    #: Set on ``metadata.annotations`` (others are kept).
    annotations: Mapping[str, str] = field(default_factory=dict)
    #: One line per thing done, without the object's name (the caller prefixes it).
    said: tuple[str, ...] = ()


def pause(spec: ModelDeploymentSpec) -> Change:
    """Freeze the weights where they are; no analysis runs until :func:`resume`."""
    return _set_paused(spec, paused=True)


def resume(spec: ModelDeploymentSpec) -> Change:
    """Continue a paused rollout."""
    return _set_paused(spec, paused=False)


def promote(spec: ModelDeploymentSpec, *, name: str) -> Change:
    """Ask the controller to promote the candidate now, skipping the remaining steps."""
    return _request(spec, Action.PROMOTE, name=name)


def abort(spec: ModelDeploymentSpec, *, name: str) -> Change:
    """Ask the controller to roll the candidate back now."""
    return _request(spec, Action.ABORT, name=name)


def rollback(
    spec: ModelDeploymentSpec,
    *,
    name: str,
    history: Sequence[HistoryEntry],
    to: str | None = None,
) -> Change:
    """Send all traffic back to safety.

    With a candidate in flight it is removed and stable keeps serving; without one (or with
    ``to`` as well) stable goes back to the newest (or the named) version in ``history``
    other than the current stable. ``history`` is ``status.history``, newest first.
    """
    said: list[str] = []
    if spec.candidate is not None:
        said.append(
            f"removed candidate {spec.candidate.version}; {spec.stable.version} serves all traffic"
        )
        spec = spec.model_copy(update={"candidate": None})
        if to is None:
            return Change(spec=spec, said=tuple(said))
    target = _rollback_target(spec, name=name, history=history, to=to)
    said.append(
        f"stable {spec.stable.version} -> {target.version} "
        f"(served as stable since {target.promoted_at:%Y-%m-%d %H:%M})"
    )
    ref = VersionRef(version=target.version, image=target.image, service=target.service)
    return Change(spec=spec.model_copy(update={"stable": ref}), said=tuple(said))


def apply(md: ModelDeployment, change: Change) -> ModelDeployment:
    """The object with the change made (how the local store writes it)."""
    notes = {**md.metadata.annotations, **change.annotations}
    metadata = md.metadata.model_copy(update={"annotations": notes})
    return md.model_copy(update={"spec": change.spec, "metadata": metadata})


def merge_patch(before: ModelDeploymentSpec, change: Change) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that makes a live object with spec ``before`` changed.

    Only the top-level spec fields that change are sent, each whole in its wire form; a field
    that becomes absent is ``null`` (``{"spec": {"candidate": null}}``), and so is a map key
    the new value no longer has (a merge patch would otherwise keep it). Empty when nothing
    changes.
    """
    old, new = dump(before), dump(change.spec)
    spec = {
        key: _replacing(old.get(key), value) for key, value in new.items() if old.get(key) != value
    }
    patch: dict[str, Any] = {}
    if spec:
        patch["spec"] = spec
    if change.annotations:
        patch["metadata"] = {"annotations": dict(change.annotations)}
    return patch


# --- helpers ------------------------------------------------------------------------------


def _set_paused(spec: ModelDeploymentSpec, *, paused: bool) -> Change:
    line = "paused; weights frozen" if paused else "resumed"
    return Change(
        spec=spec.model_copy(update={"paused": paused}),
        said=(f"{line} (spec.paused={str(paused).lower()})",),
    )


def _request(spec: ModelDeploymentSpec, action: Action, *, name: str) -> Change:
    if spec.candidate is None:
        raise ActionError(f"{name} has no candidate to {action.value}")
    return Change(
        spec=spec,
        annotations={ACTION_ANNOTATION: action.value},
        said=(
            f"{action.value} of {spec.candidate.version} requested "
            f"(annotation {ACTION_ANNOTATION}={action.value})",
        ),
    )


def _rollback_target(
    spec: ModelDeploymentSpec, *, name: str, history: Sequence[HistoryEntry], to: str | None
) -> HistoryEntry:
    past = [h for h in history if h.version != spec.stable.version]
    if to is not None:
        if to == spec.stable.version:
            raise ActionError(f"{to!r} is the stable version of {name} already")
        past = [h for h in past if h.version == to]
        if not past:
            known = ", ".join(sorted({h.version for h in history})) or "none"
            raise ActionError(f"{to!r} is not a past stable version of {name} (history: {known})")
    if not past:
        raise ActionError(f"{name} has no earlier stable version to roll back to")
    return past[0]


def _replacing(old: Any, new: Any) -> Any:
    """``new`` as a merge patch over ``old``: keys ``old`` has and ``new`` lacks become null."""
    if not isinstance(new, dict):
        return new
    if not isinstance(old, dict):
        old = {}
    # An unset optional field that was unset before says nothing: leave it out.
    out = {
        key: _replacing(old.get(key), value)
        for key, value in new.items()
        if value is not None or old.get(key) is not None
    }
    out.update({key: None for key in old if key not in new})
    return out
