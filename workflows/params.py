"""The retrain pipeline's parameters: what a run may be told, typed and checked up front.

A run's parameters arrive as ``--param name=value`` strings (the CLI, every Argo task) or as
``argo submit -p`` overrides of the workflow's parameters, which are rendered from
:func:`param_info`. :meth:`RetrainParams.parse` turns them into one frozen object and refuses
the first bad one with a message naming it and what it should be, so a bad schedule or drift
is refused before any step starts rather than halfway through a run.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from training.data import Drift
from training.gate import GateConfig, Setting
from workflows import plugins

#: Fewest rows a snapshot may have: the newest window alone must hold a few hundred.
MIN_ROWS = 1000
#: ModelDeployment names, model names and versions become Kubernetes names: DNS labels.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class ParamError(ValueError):
    """A bad pipeline parameter; the message names it and what it should be."""


def _param(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class RetrainParams:
    """The run's parameters. On the command line each is ``--param name=value`` (a string);
    :meth:`parse` types and checks them, naming the first bad one."""

    model: str = _param("fraud", "model name in the model store")
    deployment: str = _param("", "ModelDeployment to propose to (default: the model's name)")
    plugin: str = _param(
        "workflows.fraud:PIPELINE", "the model's retraining plugin, module:attribute (PLUGINS.md)"
    )
    source: str = _param("synthetic", "'synthetic' or a .csv/.parquet file of labelled rows")
    rows: int = _param(60_000, "synthetic rows to generate; of a file, the newest rows kept")
    day: float = _param(0.0, "synthetic: the day the rows are drawn from")
    drift: str = _param("", "synthetic drift, e.g. covariate=0.8,concept=0.5,mode=sudden")
    seed: int = _param(0, "seed of the synthetic data and of training")
    window: float = _param(0.3, "share of newest rows the gate judges on (a file's last rows)")
    psi_threshold: float = _param(0.25, "retrain when some feature's PSI reaches this")
    force: bool = _param(False, "retrain even without drift")
    version: str = _param("", "version of the new model (default: the next vN)")
    gate: str = _param("", "changes to the plugin's gate, e.g. min_roc_auc=0.85,max_latency_ms=50")
    image_registry: str = _param("", "cluster: registry the candidate's image is pushed to")
    namespace: str = _param("", "cluster: namespace of the ModelDeployment (default: own)")
    webhook: str = _param("", "notify: URL to POST the run's summary to as JSON")
    workflow_status: str = _param("", "notify: the workflow's status, set by the exit handler")

    @classmethod
    def parse(cls, raw: Mapping[str, object]) -> RetrainParams:
        """Typed, checked parameters from ``name -> value`` (strings or already typed)."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in raw.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ParamError(f"unknown parameter {key!r} (known: {', '.join(known)})")
            values[name] = _convert(name, str(known[name].type), value)
        params = cls(**values)
        params.check()
        return params

    @classmethod
    def from_pairs(cls, pairs: tuple[str, ...] | list[str]) -> RetrainParams:
        """From ``name=value`` strings, as ``--param`` gives them."""
        raw: dict[str, str] = {}
        for pair in pairs:
            name, sep, value = pair.partition("=")
            if not sep or not name.strip():
                raise ParamError(f"parameter {pair!r} is not name=value")
            raw[name.strip()] = value.strip()
        return cls.parse(raw)

    def check(self) -> None:
        _require_label("model", self.model)
        if self.deployment:
            _require_label("deployment", self.deployment)
        if self.version:
            _require_label("version", self.version)
        if self.source != "synthetic" and not self.source.lower().endswith(
            (".csv", ".parquet", ".pq")
        ):
            raise ParamError(
                f"parameter 'source' must be 'synthetic' or a .csv/.parquet path, "
                f"got {self.source!r}"
            )
        if self.source != "synthetic":
            for name in ("drift", "day"):
                if getattr(self, name) != getattr(RetrainParams, name):
                    raise ParamError(f"parameter {name!r} applies only to source=synthetic")
        if self.rows < MIN_ROWS:
            raise ParamError(f"parameter 'rows' must be at least {MIN_ROWS}, got {self.rows}")
        if self.day < 0:
            raise ParamError(f"parameter 'day' must be zero or more, got {self.day:g}")
        if not 0.05 <= self.window <= 0.5:
            raise ParamError(f"parameter 'window' must be 0.05-0.5, got {self.window:g}")
        if self.psi_threshold <= 0:
            raise ParamError(
                f"parameter 'psi_threshold' must be above 0, got {self.psi_threshold:g}"
            )
        try:
            self.drift_spec()
        except ValueError as exc:
            raise ParamError(f"parameter 'drift': {exc}") from None
        self.gate_config()
        if self.webhook and not self.webhook.startswith(("http://", "https://")):
            raise ParamError(f"parameter 'webhook' must be an http(s) URL, got {self.webhook!r}")
        if "://" in self.image_registry or self.image_registry.endswith("/"):
            raise ParamError(
                "parameter 'image_registry' must be a registry path like registry.example/ml, "
                f"got {self.image_registry!r}"
            )

    @property
    def deployment_name(self) -> str:
        return self.deployment or self.model

    def drift_spec(self) -> Drift:
        return Drift.parse(self.drift)

    def load_plugin(self) -> plugins.Plugin:
        """The plugin the ``plugin`` parameter names, loaded (once per process)."""
        try:
            return plugins.load(self.plugin)
        except plugins.PluginError as exc:
            raise ParamError(f"parameter 'plugin': {exc}") from None

    def gate_config(self) -> GateConfig:
        """The plugin's gate with the ``gate`` parameter's changes."""
        base = self.load_plugin().gate
        known = base.settings()
        values: dict[str, Setting] = {}
        for part in filter(None, (p.strip() for p in self.gate.split(","))):
            key, sep, raw = part.partition("=")
            key = key.strip()
            if not sep:
                raise ParamError(f"parameter 'gate': {part!r} is not name=value")
            if key not in known:
                raise ParamError(
                    f"parameter 'gate': unknown threshold {key!r} (known: {', '.join(known)})"
                )
            values[key] = _convert(f"gate.{key}", type(known[key]).__name__, raw)
        return base.with_settings(values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_pairs(self) -> list[str]:
        """``name=value`` for each parameter that differs from its default."""
        default = RetrainParams()
        return [
            f"{f.name}={as_text(getattr(self, f.name))}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        ]


@dataclass(frozen=True)
class ParamInfo:
    name: str
    type: str
    default: str
    help: str


def param_info() -> tuple[ParamInfo, ...]:
    """Every parameter with its type, default (as a string) and help: for --help and Hera."""
    default = RetrainParams()
    return tuple(
        ParamInfo(
            name=f.name,
            type=str(f.type),
            default=as_text(getattr(default, f.name)),
            help=str(f.metadata.get("help", "")),
        )
        for f in fields(RetrainParams)
    )


_TYPE_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "text"}


def _convert(name: str, type_name: str, value: object) -> Any:
    text = str(value).strip()
    expected = _TYPE_NAMES.get(type_name, type_name)
    bad = ParamError(f"parameter {name!r} must be {expected}, got {text!r}")
    if type_name == "str":
        return text
    if type_name == "bool":
        lowered = text.lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0", ""):
            return False
        raise bad
    if type_name == "int":
        if isinstance(value, bool):
            raise bad
        try:
            return int(text)
        except ValueError:
            raise bad from None
    if type_name == "float":
        try:
            number = float(text)
        except ValueError:
            raise bad from None
        if not math.isfinite(number):
            raise bad
        return number
    raise ParamError(f"parameter {name!r} has an unsupported type {type_name}")


def _require_label(name: str, value: str) -> None:
    if len(value) > 40 or not _DNS_LABEL.match(value):
        raise ParamError(
            f"parameter {name!r} must be lowercase letters, digits and '-', at most 40, "
            f"starting and ending with a letter or digit (a Kubernetes name), got {value!r}"
        )


def as_text(value: object) -> str:
    """A parameter or output value as Argo and the CLI spell it (booleans lowercase)."""
    return str(value).lower() if isinstance(value, bool) else str(value)
