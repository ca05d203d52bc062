"""The KServe InferenceService that serves one model version, as a pure function: the
operator sends, and the tests validate against KServe's own schema, the same object.

One InferenceService per served version, named ``<model>-<version>``: the version's Bento image
as a custom predictor container on port 3000, probed at ``/readyz`` and ``/livez``, scraped by
Prometheus, sized and scaled from ``spec.serving``:

- Standard mode (Deployments): HPA on cpu/memory through ``minReplicas/maxReplicas/scaleMetric/
  scaleTarget``; or KEDA (``serving.kserve.io/autoscalerClass: keda``) through ``autoScaling``,
  where rps and concurrency come from the router's metrics in Prometheus.
- Knative mode: Knative's autoscaler on concurrency or rps, and ``minReplicas: 0`` scales an
  idle version to zero.

Traffic between versions is the router's job, so KServe's own canary fields stay unset.
The ModelDeployment owns each InferenceService: deleting it deletes its versions.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from turnout.core.crd import GROUP, VERSION
from turnout.core.spec import ModelDeploymentSpec, Serving, VersionRef

API_VERSION = "serving.kserve.io/v1beta1"
KIND = "InferenceService"
#: The Bento's HTTP port (BentoML's default).
PORT = 3000
#: BentoML's images run as the user ``bentoml``, uid and gid 1034.
BENTO_UID = 1034

#: Labels on every InferenceService turnout manages; the operator lists by them.
MANAGED_BY = "app.kubernetes.io/managed-by"
DEPLOYMENT_LABEL = "turnout.dev/deployment"
MODEL_LABEL = "turnout.dev/model"
VERSION_LABEL = "turnout.dev/version"
#: Pod label the chart's PodMonitor selects model servers by.
MODEL_SERVER_LABEL = "turnout.dev/model-server"
#: When a version left the routing table; the operator deletes it after a drain period.
RETIRED_ANNOTATION = "turnout.dev/retired-at"
#: Hash of what turnout asked for. KServe's webhooks default fields into the live spec, so the
#: operator compares this, not the live spec, to know whether its object needs a patch.
HASH_ANNOTATION = "turnout.dev/spec-hash"
#: Predictor fields a mode or autoscaler may set; a patch clears those the new one does not.
SCALING_FIELDS = ("minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "autoScaling")


#: Longest InferenceService name: KServe names the predictor's Service ``<name>-predictor``,
#: which must fit a 63-character DNS label.
MAX_NAME = 63 - len("-predictor")


def name(model: str, version: str) -> str:
    return f"{model}-{version}"


def name_problem(model: str, version: str) -> str | None:
    """Why ``<model>-<version>`` cannot name an InferenceService, or None."""
    full = name(model, version)
    if not model[:1].isalpha():
        return f"InferenceService names start with a letter; model {model!r} does not"
    if len(full) > MAX_NAME:
        return (
            f"InferenceService name {full!r} is {len(full)} characters; KServe allows "
            f"{MAX_NAME} (model + '-' + version)"
        )
    return None


def mode(obj: dict[str, Any]) -> str | None:
    """The deployment mode an InferenceService was created with."""
    notes = obj.get("metadata", {}).get("annotations") or {}
    value = notes.get("serving.kserve.io/deploymentMode")
    return None if value is None else str(value)


def selector(deployment: str) -> str:
    """Label selector of the InferenceServices one ModelDeployment owns."""
    return f"{MANAGED_BY}=turnout,{DEPLOYMENT_LABEL}={deployment}"


def inference_service(
    *,
    deployment: str,
    namespace: str,
    uid: str,
    spec: ModelDeploymentSpec,
    ref: VersionRef,
    prometheus_url: str | None = None,
) -> dict[str, Any]:
    """The InferenceService for version ``ref`` of the ModelDeployment ``deployment``.

    ``ref.image`` must be set (the caller reports a missing image as a spec problem).
    ``prometheus_url`` is where KEDA reads rps and concurrency from.
    """
    if not ref.image:
        raise ValueError(f"version {ref.version} has no image")
    serving = spec.serving
    labels = {
        MANAGED_BY: "turnout",
        DEPLOYMENT_LABEL: deployment,
        MODEL_LABEL: spec.model,
        VERSION_LABEL: ref.version,
    }
    annotations: dict[str, str] = {"serving.kserve.io/deploymentMode": serving.deployment_mode}
    if serving.deployment_mode == "Standard":
        annotations["serving.kserve.io/autoscalerClass"] = serving.autoscaler_class
    predictor: dict[str, Any] = {
        "minReplicas": serving.min_replicas,
        "maxReplicas": serving.max_replicas,
        "labels": {**labels, MODEL_SERVER_LABEL: "true"},
        "annotations": {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(PORT),
            "prometheus.io/path": "/metrics",
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": BENTO_UID,
            "runAsGroup": BENTO_UID,
            "fsGroup": BENTO_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(spec, ref)],
        "volumes": [{"name": v, "emptyDir": {}} for v, _ in _SCRATCH],
        **_scaling(serving, model=spec.model, version=ref.version, prometheus=prometheus_url),
    }
    body_spec = {"predictor": predictor}
    annotations[HASH_ANNOTATION] = _hash([labels, annotations, body_spec])
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name(spec.model, ref.version),
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "ModelDeployment",
                    "name": deployment,
                    "uid": uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": body_spec,
    }


def _hash(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def outdated(live: dict[str, Any], body: dict[str, Any]) -> bool:
    """The live object is not the one ``body`` describes (or was marked retired)."""
    notes = live.get("metadata", {}).get("annotations") or {}
    return notes.get(HASH_ANNOTATION) != body["metadata"]["annotations"][HASH_ANNOTATION] or (
        RETIRED_ANNOTATION in notes
    )


def update_patch(body: dict[str, Any]) -> dict[str, Any]:
    """A merge patch that turns a live InferenceService into ``body``: scaling fields the
    body leaves out are nulled (switching hpa to keda must drop scaleMetric) and the retired
    mark is removed (a version can come back before it was deleted)."""
    meta = body["metadata"]
    predictor = {**{f: None for f in SCALING_FIELDS}, **body["spec"]["predictor"]}
    return {
        "metadata": {
            "labels": meta["labels"],
            "annotations": {**meta["annotations"], RETIRED_ANNOTATION: None},
            "ownerReferences": meta["ownerReferences"],
        },
        "spec": {**body["spec"], "predictor": predictor},
    }


#: Writable scratch the model server needs under a read-only root filesystem.
_SCRATCH = (
    ("tmp", "/tmp"),
    ("bentoml-tmp", "/home/bentoml/tmp"),
    ("prometheus-multiproc", "/home/bentoml/prometheus_multiproc_dir"),
)


def _container(spec: ModelDeploymentSpec, ref: VersionRef) -> dict[str, Any]:
    env = {"TURNOUT_MODEL": f"{spec.model}:{ref.version}", **ref.env}
    resources = spec.serving.resources

    def probe(path: str, period: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": path, "port": PORT},
            "periodSeconds": period,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        }

    return {
        "name": "kserve-container",
        "image": ref.image,
        "ports": [{"name": "http1", "containerPort": PORT, "protocol": "TCP"}],
        "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
        "readinessProbe": probe("/readyz", 5),
        "livenessProbe": {**probe("/livez", 10), "initialDelaySeconds": 10},
        "resources": {"requests": dict(resources.requests), "limits": dict(resources.limits)},
        "securityContext": {
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": v, "mountPath": path} for v, path in _SCRATCH],
    }


def _scaling(
    serving: Serving, *, model: str, version: str, prometheus: str | None
) -> dict[str, Any]:
    """Autoscaling fields of the predictor for the mode and autoscaler chosen."""
    if serving.deployment_mode == "Knative" or serving.autoscaler_class == "hpa":
        # KServe turns these into Knative's autoscaling annotations or an HPA.
        return {"scaleMetric": serving.scale_metric, "scaleTarget": serving.scale_target}
    if serving.scale_metric in ("cpu", "memory"):
        metric: dict[str, Any] = {
            "type": "Resource",
            "resource": {
                "name": serving.scale_metric,
                "target": {"type": "Utilization", "averageUtilization": serving.scale_target},
            },
        }
    else:
        if prometheus is None:
            raise ValueError("KEDA on rps or concurrency needs a Prometheus URL")
        metric = {
            "type": "External",
            "external": {
                "metric": {
                    "backend": "prometheus",
                    "serverAddress": prometheus,
                    "query": _keda_query(serving.scale_metric, model=model, version=version),
                },
                "target": {"type": "AverageValue", "averageValue": str(serving.scale_target)},
            },
        }
    return {"autoScaling": {"metrics": [metric]}}


def _keda_query(metric: str, *, model: str, version: str) -> str:
    """Requests per second, or requests in flight, that the router sends this version."""
    sel = f'{{model="{model}",version="{version}"}}'
    if metric == "rps":
        return f"sum(rate(turnout_router_upstream_calls_total{sel}[1m])) or vector(0)"
    # Little's law: requests in flight = arrival rate x mean time in the server.
    return f"sum(rate(turnout_router_upstream_duration_seconds_sum{sel}[1m])) or vector(0)"


def ready_url(obj: dict[str, Any]) -> str | None:
    """The in-cluster URL of a Ready InferenceService whose status is current, else None.

    Ready means KServe's ``Ready`` condition is True for the spec we last wrote
    (``observedGeneration`` caught up), so a version is never sent traffic on a stale verdict.
    """
    status = obj.get("status") or {}
    generation = obj.get("metadata", {}).get("generation")
    if generation is not None and status.get("observedGeneration") not in (None, generation):
        return None
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    if not ready:
        return None
    url = (status.get("address") or {}).get("url") or status.get("url")
    return str(url).rstrip("/") if url else None
