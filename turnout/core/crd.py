"""The ModelDeployment CustomResourceDefinition, generated from turnout/core/spec.py.

The pydantic models are the single source, so what the API server admits cannot drift from
what the operator parses; this module turns their JSON Schema (draft
2020-12) into the *structural* OpenAPI v3.0 schema Kubernetes requires:

- every ``$ref`` is inlined (a CRD schema has no ``$defs``), and ``anyOf: [X, null]`` becomes
  X with ``nullable: true`` (``null`` is added to a nullable ``enum``, which OpenAPI needs);
- ``const`` becomes a one-value ``enum``; a fixed-length tuple (``prefixItems``) becomes an
  array of one item type with ``minItems``/``maxItems``; numeric ``exclusiveMinimum`` becomes
  ``minimum`` plus ``exclusiveMinimum: true`` (and the same for maximum);
- ``title`` and ``examples`` are dropped; ``description`` (class docstrings, ``Field``
  descriptions; ``#:`` comments are not in the JSON Schema) and ``default`` are kept, with a
  ``default_factory``'s list or dict as the default. A nested model's default is written as
  ``{}`` when the API server's defaulting of the fields inside gives the same object;
- ``additionalProperties: false`` (the models' ``extra="forbid"``) is dropped: a structural
  schema may not combine it with ``properties``. The API server prunes unknown fields
  instead, or rejects them under strict field validation (``kubectl``'s default), which is
  close to what the models do.

Validators the JSON Schema cannot show come back by hand: a pattern for ``Duration`` fields,
bounds on canary steps, and CEL rules (``x-kubernetes-validations``, see ``RULES``) for the
cross-field checks. CEL rules see the object after defaulting, so they may read defaulted
fields without ``has()``. Whatever else the models reject is left to the operator, which
reports it in a status condition.

Pure: functions return dicts and text; ``turnout render crd`` writes the file.
"""

from __future__ import annotations

import copy
import re
import typing
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, NoDefault
from pydantic_core import core_schema

from turnout.core.spec import (
    API_VERSION,
    KIND,
    Duration,
    Metadata,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
)

GROUP, VERSION = API_VERSION.split("/")
PLURAL = KIND.lower() + "s"
NAME = f"{PLURAL}.{GROUP}"
SHORT_NAMES = ["mdep"]
#: Where `turnout render crd` writes the CRD, relative to the project root.
CRD_PATH = f"manifests/crds/{NAME}.yaml"
HEADER = "# Generated from turnout/core/spec.py by `turnout render crd`; do not edit.\n"

#: What ``spec.seconds`` accepts and ``Duration`` keeps (longer than zero), as a pattern.
DURATION_PATTERN = r"^\s*([0-9]*[1-9][0-9]*(\.[0-9]+)?|0+\.[0-9]*[1-9][0-9]*)(ms|s|m|h|d)\s*$"

_POSITIVE_DURATION = typing.get_args(Duration)[1].func


@dataclass(frozen=True)
class Rule:
    """A CEL rule mirroring one of the models' validators, placed at a schema node."""

    at: tuple[str, ...]  # property names from the root of openAPIV3Schema
    rule: str
    message: str
    #: Where the API server reports a failure, relative to ``at``.
    field_path: str | None = None

    def validation(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message}
        if self.field_path is not None:
            out["fieldPath"] = self.field_path
        return out


_RATE_METRICS = "['concurrency', 'rps']"

#: Cross-field checks of spec.py's model validators, as x-kubernetes-validations.
RULES: tuple[Rule, ...] = (
    Rule(
        ("spec",),
        "!has(self.candidate) || self.candidate.version != self.stable.version",
        "candidate.version must differ from stable.version",
        ".candidate.version",
    ),
    Rule(
        ("spec", "strategy", "canary", "steps"),
        # isSorted() is from Kubernetes' CEL list library; exists_one rules out repeats.
        "self.isSorted() && self.all(w, self.exists_one(x, x == w))",
        "steps must increase",
    ),
    Rule(
        ("spec", "strategy", "abTest"),
        "self.maxSamplesPerArm >= self.minSamplesPerArm",
        "maxSamplesPerArm must be at least minSamplesPerArm",
        ".maxSamplesPerArm",
    ),
    Rule(
        ("spec", "serving"),
        "self.maxReplicas >= self.minReplicas",
        "maxReplicas must be at least minReplicas",
        ".maxReplicas",
    ),
    Rule(
        ("spec", "serving"),
        "self.minReplicas > 0 || self.deploymentMode == 'Knative'",
        "minReplicas 0 (scale to zero) needs deploymentMode Knative",
        ".minReplicas",
    ),
    Rule(
        ("spec", "serving"),
        f"self.deploymentMode != 'Knative' || self.scaleMetric in {_RATE_METRICS}",
        "deploymentMode Knative scales on scaleMetric concurrency or rps",
        ".scaleMetric",
    ),
    Rule(
        ("spec", "serving"),
        f"self.deploymentMode != 'Standard' || !(self.scaleMetric in {_RATE_METRICS})"
        " || self.autoscalerClass == 'keda'",
        "scaleMetric concurrency or rps in Standard mode needs autoscalerClass keda",
        ".autoscalerClass",
    ),
    Rule(
        ("spec", "fallback"),
        "self.mode != 'static' || has(self.probability)",
        "fallback mode 'static' needs 'probability'",
        ".probability",
    ),
)

#: Field validators' bounds that pydantic's JSON Schema leaves out, merged in by path.
_BOUNDS: dict[tuple[str, ...], dict[str, Any]] = {
    ("spec", "strategy", "canary", "steps"): {
        "items": {"minimum": 0, "exclusiveMinimum": True, "maximum": 100},
    },
}

_ORDER = (
    "description",
    "type",
    "format",
    "nullable",
    "enum",
    "default",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "multipleOf",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "x-kubernetes-validations",
)
_DROPPED = frozenset({"title", "examples", "$schema", "readOnly", "writeOnly", "deprecated"})
#: Formats that mean the same to pydantic and to the API server.
_FORMATS = frozenset({"date-time", "date"})


class _Generator(GenerateJsonSchema):
    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        # A factory's list or dict (``Field(default_factory=dict)``) is a default like any
        # other; anything else it might make (a timestamp, say) is not written into the CRD.
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            made = factory()  # type: ignore[call-arg]
            return made if isinstance(made, list | dict) else NoDefault
        return super().get_default_value(schema)

    def function_after_schema(
        self, schema: core_schema.AfterValidatorFunctionSchema
    ) -> JsonSchemaValue:
        inner = super().function_after_schema(schema)
        if schema["function"].get("function") is _POSITIVE_DURATION:
            inner = {**inner, "pattern": DURATION_PATTERN}
        return inner


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3.0 schema of one pydantic model (wire names, camelCase)."""
    source = model.model_json_schema(by_alias=True, mode="validation", schema_generator=_Generator)
    defs = source.pop("$defs", {})
    return _convert(source, defs, model.__name__)


def defaulted(schema: dict[str, Any], value: Any) -> Any:
    """``value`` with the schema's defaults filled in, as the API server's defaulting does.

    A missing property (or a null one that is not nullable) gets its default, then each
    property, map value and list item is defaulted in turn.
    """
    if isinstance(value, dict):
        props = schema.get("properties")
        if props is not None:
            out = dict(value)
            for name, sub in props.items():
                absent = name not in out or (out[name] is None and not sub.get("nullable"))
                if absent and "default" in sub:
                    out[name] = copy.deepcopy(sub["default"])
                if name in out:
                    out[name] = defaulted(sub, out[name])
            return out
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            return {k: defaulted(extra, v) for k, v in value.items()}
        return value
    if isinstance(value, list) and "items" in schema:
        return [defaulted(schema["items"], v) for v in value]
    return value


def openapi_schema() -> dict[str, Any]:
    """The CRD's openAPIV3Schema: spec and status from the models, plus RULES and bounds."""
    spec = _ordered(
        {
            "description": "Desired state: the versions to serve and how to roll out a candidate.",
            **model_schema(ModelDeploymentSpec),
        }
    )
    status = _ordered(
        {
            "description": "Observed state, written by the turnout operator.",
            **model_schema(ModelDeploymentStatus),
        }
    )
    name = model_schema(Metadata)["properties"]["name"]
    root: dict[str, Any] = {
        "description": (
            "One model endpoint: its stable version, the candidate being rolled out, and how "
            "(canary, shadow or A/B test), with the analysis that decides."
        ),
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            # Only metadata.name may be restricted: versions name InferenceServices after it.
            "metadata": {"type": "object", "properties": {"name": name}},
            "spec": spec,
            "status": status,
        },
    }
    for path, extra in _BOUNDS.items():
        _merge(_at(root, path), extra)
    for rule in RULES:
        node = _at(root, rule.at)
        node.setdefault("x-kubernetes-validations", []).append(rule.validation())
    _write_defaults_in_full(root)
    return root


def _write_defaults_in_full(node: dict[str, Any]) -> None:
    """Each object's default with its fields' defaults filled in: the API server checks a
    default against the CEL rules as written, so ``default: {}`` under a rule reading
    ``self.minReplicas`` makes the whole CRD invalid ("no such key: minReplicas")."""
    if isinstance(node.get("default"), dict):
        node["default"] = defaulted(node, node["default"])
    children = [
        *node.get("properties", {}).values(),
        node.get("items"),
        node.get("additionalProperties"),
    ]
    for child in children:
        if isinstance(child, dict):
            _write_defaults_in_full(child)


def crd() -> dict[str, Any]:
    """The apiextensions.k8s.io/v1 CustomResourceDefinition of ModelDeployment."""
    columns = [
        ("Stable", "string", ".spec.stable.version", "stable version"),
        ("Candidate", "string", ".spec.candidate.version", "version being rolled out"),
        ("Strategy", "string", ".spec.strategy.type", "Canary, Shadow or ABTest"),
        ("Weight", "number", ".status.routing.candidate.weight", "candidate traffic, percent"),
        ("Phase", "string", ".status.phase", "rollout phase"),
        ("Age", "date", ".metadata.creationTimestamp", None),
    ]
    printer = []
    for name, kind, path, description in columns:
        column = {"name": name, "type": kind, "jsonPath": path}
        if description is not None:
            column["description"] = description
        printer.append(column)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": NAME,
            "labels": {"app.kubernetes.io/name": "turnout", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": list(SHORT_NAMES),
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": printer,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


def crd_yaml() -> str:
    """The CRD as the deterministic YAML text checked in at ``CRD_PATH``."""
    return HEADER + yaml.dump(crd(), Dumper=_Dumper, sort_keys=False, width=100)


class _Dumper(yaml.SafeDumper):
    """Writes repeated values out in full: no YAML anchors and aliases in a manifest."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


# kubectl and helm read YAML 1.1, where a bare y or n is a boolean: the schema's property `n`
# (an A/B arm's count) would reach the API server as "false". Written quoted instead.
_Dumper.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:y|Y|n|N)$"), list("yYnN"))


# --- JSON Schema -> structural schema ----------------------------------------------------


def _convert(node: dict[str, Any], defs: dict[str, Any], where: str) -> dict[str, Any]:
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").removeprefix("#/$defs/")])
        return _convert({**target, **node}, defs, where)  # the field's own keys win
    if "anyOf" in node:
        variants = node.pop("anyOf")
        kinds = [v for v in variants if v != {"type": "null"}]
        if len(kinds) != 1:
            raise ValueError(f"{where}: a union of {len(kinds)} types has no structural schema")
        inner = _convert({**kinds[0], **node}, defs, where)
        if len(kinds) < len(variants):
            inner["nullable"] = True
            if "enum" in inner and None not in inner["enum"]:
                inner["enum"] = [*inner["enum"], None]
        return _ordered(inner)

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "prefixItems":
            items = [_convert(v, defs, f"{where}[]") for v in value]
            if any(item != items[0] for item in items):
                raise ValueError(f"{where}: a tuple of mixed types has no structural schema")
            out["items"] = items[0]
            out["minItems"] = out["maxItems"] = len(items)
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            if bound in node:
                raise ValueError(f"{where}: both {bound} and {key}")
            out[bound], out[key] = value, True
        elif key == "properties":
            out[key] = {k: _convert(v, defs, f"{where}.{k}") for k, v in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs, f"{where}[]")
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out[key] = _convert(value, defs, f"{where}{{}}")
            elif value is not False:
                raise ValueError(f"{where}: additionalProperties {value!r}")
        elif key == "format":
            if value not in _FORMATS:
                raise ValueError(f"{where}: format {value!r} may mean something else to Kubernetes")
            out[key] = value
        elif key == "default":
            if value is not None:
                out[key] = _without_nulls(value)
        elif key in _ORDER:
            out[key] = value
        else:
            raise ValueError(f"{where}: JSON Schema keyword {key!r} has no structural equivalent")

    if "type" not in out and "enum" in out:
        out["type"] = _enum_type(out["enum"], where)
    if "type" not in out:
        raise ValueError(f"{where}: no type (a structural schema needs one at every node)")
    if out["type"] == "object" and isinstance(out.get("default"), dict) and "properties" in out:
        bare = {k: v for k, v in out.items() if k != "default"}
        if defaulted(bare, {}) == out["default"]:
            out["default"] = {}
    return _ordered(out)


def _enum_type(values: list[Any], where: str) -> str:
    kinds = {type(v) for v in values}
    for kind, name in ((str, "string"), (bool, "boolean"), (int, "integer")):
        if kinds == {kind}:
            return name
    if kinds <= {int, float}:
        return "number"
    raise ValueError(f"{where}: enum of mixed types {sorted(k.__name__ for k in kinds)}")


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    return {key: node[key] for key in _ORDER if key in node}


def _at(root: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    node = root
    for name in path:
        node = node["properties"][name]
    return node


def _merge(node: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(node.get(key), dict):
            _merge(node[key], value)
        else:
            node[key] = value
    ordered = _ordered(node)
    node.clear()
    node.update(ordered)
