"""Validate Kubernetes objects the way an API server would, without one.

- Core kinds (Deployment, Service, RBAC, ...): ``kubernetes-validate`` in strict mode, for
  ``K8S_VERSION``.
- Custom resources: the official CRD schemas in ``../shared/schemas/`` (KServe, Argo Workflows,
  Prometheus Operator), our own CRD generated from turnout/core/spec.py, and any CRD passed in (the
  chart ships kopf's peering CRDs). Unknown fields are rejected, as ``kubectl apply`` does.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from turnout.core.crd import crd, defaulted
from turnout.io.processes import project_root

#: A current Kubernetes release; kubernetes-validate ships its schemas.
K8S_VERSION = "1.35.0"

SHARED_SCHEMAS = Path(
    os.environ.get("TURNOUT_SHARED_SCHEMAS", project_root().parent / "shared" / "schemas")
)

#: Where each custom kind's CRD lives under SHARED_SCHEMAS (loaded on first use: they are big).
_SHARED_FILES = {
    "InferenceService": "kserve/serving.kserve.io_inferenceservices.yaml",
    "InferenceGraph": "kserve/serving.kserve.io_inferencegraphs.yaml",
    "CronWorkflow": "argo/argoproj.io_cronworkflows.yaml",
    "Workflow": "argo/argoproj.io_workflows.yaml",
    "WorkflowTemplate": "argo/argoproj.io_workflowtemplates.yaml",
    "ServiceMonitor": "prometheus-operator/monitoring.coreos.com_servicemonitors.yaml",
    "PodMonitor": "prometheus-operator/monitoring.coreos.com_podmonitors.yaml",
    "PrometheusRule": "prometheus-operator/monitoring.coreos.com_prometheusrules.yaml",
}


def as_jsonschema(node: dict[str, Any], *, strict: bool = True) -> dict[str, Any]:
    """Draft 4 form of a structural schema; ``strict`` rejects unknown fields like kubectl."""
    out = {
        k: v
        for k, v in node.items()
        if k not in ("nullable", "x-kubernetes-validations", "x-kubernetes-int-or-string")
    }
    if node.get("nullable") and "type" in node:
        out["type"] = [node["type"], "null"]
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in node:
        out["properties"] = {
            # ObjectMeta has many more fields than a CRD restricts (name only).
            k: as_jsonschema(v, strict=strict and k != "metadata")
            for k, v in node["properties"].items()
        }
        if strict and not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if "items" in node:
        out["items"] = as_jsonschema(node["items"], strict=strict)
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = as_jsonschema(node["additionalProperties"], strict=strict)
    for key in ("anyOf", "allOf", "oneOf"):
        if key in node:
            out[key] = [as_jsonschema(n, strict=False) for n in node[key]]
    return out


_FORMATS = jsonschema.FormatChecker(formats=())


@_FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    return not isinstance(value, str) or datetime.fromisoformat(value).tzinfo is not None


def validator(schema: dict[str, Any]) -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(as_jsonschema(schema), format_checker=_FORMATS)


def _versions(definition: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    group, kind = definition["spec"]["group"], definition["spec"]["names"]["kind"]
    return {
        (f"{group}/{v['name']}", kind): v["schema"]["openAPIV3Schema"]
        for v in definition["spec"]["versions"]
    }


@functools.cache
def _shared(kind: str) -> dict[tuple[str, str], dict[str, Any]]:
    if kind == "ModelDeployment":
        return _versions(crd())
    if kind not in _SHARED_FILES:
        return {}
    path = SHARED_SCHEMAS / _SHARED_FILES[kind]
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: the official CRD schemas are missing (set TURNOUT_SHARED_SCHEMAS)"
        )
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for doc in yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader):
        if doc and doc.get("kind") == "CustomResourceDefinition":
            schemas.update(_versions(doc))
    return schemas


@functools.cache
def _validator(key: tuple[str, str]) -> jsonschema.Draft4Validator | None:
    schema = _shared(key[1]).get(key)
    return None if schema is None else validator(schema)


def _path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(root)"


def errors(obj: dict[str, Any], *, crds: Iterable[dict[str, Any]] = ()) -> list[str]:
    """Every reason the API server would refuse ``obj``; empty when it is valid."""
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    extra: dict[tuple[str, str], dict[str, Any]] = {}
    for definition in crds:
        extra.update(_versions(definition))
    check = validator(extra[key]) if key in extra else _validator(key)
    if check is not None:
        if key[1] == "ModelDeployment":
            obj = defaulted(check.schema, obj)  # the API server defaults before it validates
        return sorted(f"{_path(e)}: {e.message}" for e in check.iter_errors(obj))
    group = key[0].rpartition("/")[0]
    if "." in group and not group.endswith(".k8s.io"):
        return [f"no schema for {key[0]} {key[1]}: pass its CRD"]
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{_path(exc)}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no schema for {key[0]} {key[1]} in Kubernetes {K8S_VERSION}"]
    return []
