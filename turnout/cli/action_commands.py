"""The five rollout actions, as commands, written once for ``turnout`` and ``kubectl turnout``.

Both front doors offer promote, abort, pause, resume and rollback with the same words and the
same decisions (turnout.core.actions); they differ only in where the ModelDeployment lives
(the local file store, or the API server). Each front door passes a ``run`` function that
reads the object, calls the decision and writes the change its own way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import click

from turnout.core import actions
from turnout.core.actions import Change
from turnout.core.spec import ModelDeploymentSpec, ModelDeploymentStatus

#: What an action decides from the object as read: its spec and status.
Decide = Callable[[ModelDeploymentSpec, ModelDeploymentStatus], Change]
#: How a front door carries a decision out for the ModelDeployment NAME.
Run = Callable[[click.Context, str, Decide], None]


@dataclass(frozen=True)
class ActionCommand:
    name: str
    #: First line: the one-line description in --help listings.
    help: str
    #: decide(name, to) -> the decision; ``to`` is rollback's --to, else None.
    decide: Callable[[str, str | None], Decide]


ACTIONS = (
    ActionCommand(
        "promote",
        "Promote the candidate now, skipping the remaining steps.",
        lambda name, _: lambda spec, _st: actions.promote(spec, name=name),
    ),
    ActionCommand(
        "abort",
        "Roll the candidate back now; it stays in history as rolled back.",
        lambda name, _: lambda spec, _st: actions.abort(spec, name=name),
    ),
    ActionCommand(
        "pause",
        "Freeze the rollout's weights; no analysis runs until resume.",
        lambda name, _: lambda spec, _st: actions.pause(spec),
    ),
    ActionCommand(
        "resume",
        "Continue a paused rollout; the current step starts again.",
        lambda name, _: lambda spec, _st: actions.resume(spec),
    ),
    ActionCommand(
        "rollback",
        "Drop the candidate now, or return stable to a past version.\n\n"
        "With a candidate in flight, it is removed at once and stable keeps serving. Without "
        "one (or with --to), stable goes back to the previous (or the named) version from the "
        "history.",
        lambda name, to: (
            lambda spec, st: actions.rollback(spec, name=name, history=st.history, to=to)
        ),
    ),
)


def add_action_commands(
    group: click.Group,
    *,
    run: Run,
    decorators: Sequence[Callable[[Any], Any]] = (),
) -> None:
    """Add the five commands to ``group``; ``decorators`` add a front door's own flags."""
    for action in ACTIONS:
        command = _command(action, run)
        for decorate in decorators:
            command = decorate(command)
        group.add_command(command)


def _command(action: ActionCommand, run: Run) -> click.Command:
    def callback(name: str, to: str | None = None) -> None:
        run(click.get_current_context(), name, action.decide(name, to))

    params: list[click.Parameter] = [click.Argument(["name"])]
    if action.name == "rollback":
        params.append(
            click.Option(
                ["--to"],
                metavar="VERSION",
                help="a version from the history to make stable (default: the previous one)",
            )
        )
    return click.Command(action.name, callback=callback, params=params, help=action.help)
