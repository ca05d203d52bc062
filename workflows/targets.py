"""Where the retrain pipeline reads the stable version and proposes a candidate.

A ModelDeployment lives in the local file store on a laptop and in the API server in a
cluster; the pipeline needs the same two things from either: the spec (which version is
stable, which model it serves) and a way to set ``spec.candidate``. The decision is
:func:`propose_change`, pure and shared; :class:`LocalTarget` writes it with the file store's
locked update, :class:`ClusterTarget` as a JSON merge patch at the object's
``resourceVersion`` through turnout/io/kube.py, re-reading on Conflict (the operator writes the
object all the time), as ``kubectl turnout`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from turnout.core import actions
from turnout.core.actions import ActionError, Change
from turnout.core.spec import ModelDeployment, ModelDeploymentSpec, SpecError, VersionRef, describe
from turnout.io.deployments import DeploymentStore
from turnout.io.kube import Conflict, KubeApi, NotFound, Obj

#: Reads and patches before giving up when someone else keeps writing the object first.
ATTEMPTS = 3


class TargetError(LookupError):
    """The ModelDeployment cannot be read or changed; the message says which and why."""


@dataclass(frozen=True)
class Proposed:
    """What proposing did: the stable version it was proposed against, and whether it wrote."""

    stable: str
    changed: bool
    said: str


class DeploymentTarget(Protocol):
    """A place holding ModelDeployments: the local file store or a cluster."""

    @property
    def where(self) -> str:
        """Human-readable location, e.g. ``local store /x/deployments`` or ``namespace ml``."""
        ...

    def spec(self, name: str) -> ModelDeploymentSpec: ...

    def propose(self, name: str, ref: VersionRef) -> Proposed: ...


def propose_change(spec: ModelDeploymentSpec, *, name: str, ref: VersionRef) -> Change:
    """Set ``spec.candidate`` to ``ref``; the controller then rolls it out by the strategy.

    Idempotent (a retried step proposing the same version again changes nothing) and careful:
    a rollout already in flight is never replaced, and stable cannot be its own candidate.
    """
    if ref.version == spec.stable.version:
        raise ActionError(f"{name}: {ref.version} is the stable version already")
    if spec.candidate is not None:
        if spec.candidate.version == ref.version and spec.candidate.image == ref.image:
            return Change(spec=spec, said=(f"candidate {ref.version} already proposed",))
        raise ActionError(
            f"{name}: candidate {spec.candidate.version} is still rolling out; "
            f"not replacing it with {ref.version} (let it finish or `turnout rollback {name}`)"
        )
    if ref.service is None and spec.stable.service is not None:
        # A retrained version runs on the same serving code as the stable one.
        ref = ref.model_copy(update={"service": spec.stable.service})
    where = f" (image {ref.image})" if ref.image else ""
    return Change(
        spec=spec.model_copy(update={"candidate": ref}),
        said=(f"proposed {ref.version}{where} as candidate over stable {spec.stable.version}",),
    )


class LocalTarget:
    """ModelDeployments in ``$TURNOUT_HOME/deployments`` (turnout/io/deployments.py)."""

    def __init__(self, home: Path) -> None:
        self.store = DeploymentStore(home)

    @property
    def where(self) -> str:
        return f"local store {self.store.dir}"

    def spec(self, name: str) -> ModelDeploymentSpec:
        return self._load(name).spec

    def propose(self, name: str, ref: VersionRef) -> Proposed:
        done: list[Change] = []
        before: list[ModelDeploymentSpec] = []

        def change(md: ModelDeployment) -> ModelDeployment:
            before.append(md.spec)
            done.append(propose_change(md.spec, name=name, ref=ref))
            return actions.apply(md, done[-1])

        try:
            self.store.update(name, change)
        except (SpecError, ActionError) as exc:
            raise TargetError(str(exc)) from None
        except LookupError:
            raise TargetError(self._missing(name)) from None
        return Proposed(
            stable=before[-1].stable.version,
            changed=done[-1].spec != before[-1],
            said=done[-1].said[0],
        )

    def _load(self, name: str) -> ModelDeployment:
        try:
            return self.store.load(name)
        except SpecError as exc:
            raise TargetError(str(exc)) from None
        except LookupError:
            raise TargetError(self._missing(name)) from None

    def _missing(self, name: str) -> str:
        return (
            f"no ModelDeployment {name!r} in {self.store.dir} "
            f"(deploy a first version with `turnout deploy MODEL --version v1 --name {name}`)"
        )


class ClusterTarget:
    """ModelDeployments in a cluster, through turnout/io/kube.py; connects on first use."""

    def __init__(self, connect: Callable[[], KubeApi], *, namespace: str | None = None) -> None:
        self._connect = connect
        self._namespace = namespace

    @cached_property
    def api(self) -> KubeApi:
        return self._connect()

    @property
    def namespace(self) -> str:
        return self._namespace or self.api.default_namespace()

    @property
    def where(self) -> str:
        return f"namespace {self.namespace}"

    def spec(self, name: str) -> ModelDeploymentSpec:
        return self._spec(name, self._read(name))

    def propose(self, name: str, ref: VersionRef) -> Proposed:
        for _ in range(ATTEMPTS):
            obj = self._read(name)
            spec = self._spec(name, obj)
            try:
                change = propose_change(spec, name=name, ref=ref)
            except ActionError as exc:
                raise TargetError(str(exc)) from None
            body = actions.merge_patch(spec, change)
            if not body:
                return Proposed(stable=spec.stable.version, changed=False, said=change.said[0])
            body.setdefault("metadata", {})["resourceVersion"] = obj["metadata"]["resourceVersion"]
            try:
                self.api.patch_deployment(self.namespace, name, body)
            except Conflict:
                continue
            return Proposed(stable=spec.stable.version, changed=True, said=change.said[0])
        raise TargetError(
            f"ModelDeployment {self.namespace}/{name} changed under every one of {ATTEMPTS} "
            "attempts to propose; try again"
        )

    def _read(self, name: str) -> Obj:
        try:
            return self.api.get_deployment(self.namespace, name)
        except NotFound:
            raise TargetError(
                f"no ModelDeployment {name!r} in namespace {self.namespace}"
            ) from None

    def _spec(self, name: str, obj: Obj) -> ModelDeploymentSpec:
        try:
            return ModelDeploymentSpec.model_validate(obj.get("spec"))
        except ValidationError as exc:
            raise TargetError(
                f"ModelDeployment {self.namespace}/{name} has an invalid spec: {describe(exc)}"
            ) from None
