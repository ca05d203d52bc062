"""The Kubernetes API calls of the operator, the router's route source and the plugin.

The operator, the router's cluster route source and the kubectl plugin talk to the cluster
only through :class:`Kube` (the routers' A/B ledgers, ConfigMaps, are written by
turnout.io.ab_store on a Kube's connection). Objects go in and come out as plain dicts (the
JSON the API serves), so the callers' logic is unit-tested against an in-memory fake of this
class, and tests/k8s runs the real thing against a real kube-apiserver.

Errors come out as :class:`KubeError` with the HTTP status, and the three a caller acts on
as subclasses: :class:`NotFound`, :class:`Conflict` (someone else wrote first) and
:class:`Gone` (a watch's resourceVersion is too old: list again).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, cast

from urllib3.exceptions import HTTPError

from turnout.core.crd import GROUP, PLURAL, VERSION

log = logging.getLogger("turnout.io.kube")

KSERVE_GROUP = "serving.kserve.io"
KSERVE_VERSION = "v1beta1"
KSERVE_PLURAL = "inferenceservices"
#: Seconds any API call may take: a hung connection must not hold a reconcile forever.
REQUEST_TIMEOUT_S = 30.0
#: Who posts the events, as ``kubectl describe`` shows it.
COMPONENT = "turnout-operator"
#: Where a pod finds its own namespace.
_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

Obj = dict[str, Any]


class KubeError(RuntimeError):
    """An API call failed; ``status`` is the HTTP status (0 when the server was unreachable)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    pass


class Gone(KubeError):
    pass


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED or BOOKMARK
    object: Obj


class KubeApi(Protocol):
    """What the operator, router and plugin need from the cluster (``Kube`` or a fake)."""

    def default_namespace(self) -> str: ...

    def get_deployment(self, namespace: str, name: str) -> Obj: ...

    def list_deployments(self, namespace: str | None) -> tuple[list[Obj], str]: ...

    def watch_deployments(
        self, namespace: str | None, resource_version: str, *, timeout_s: int
    ) -> Iterator[WatchEvent]: ...

    def patch_deployment(self, namespace: str, name: str, patch: Obj) -> Obj: ...

    def patch_deployment_status(
        self, namespace: str, name: str, status: Obj, *, resource_version: str | None = None
    ) -> Obj: ...

    def list_inference_services(self, namespace: str, selector: str) -> list[Obj]: ...

    def get_inference_service(self, namespace: str, name: str) -> Obj: ...

    def create_inference_service(self, body: Obj) -> Obj: ...

    def patch_inference_service(self, namespace: str, name: str, patch: Obj) -> Obj: ...

    def delete_inference_service(self, namespace: str, name: str) -> None: ...

    def emit_event(self, obj: Obj, *, type: str, reason: str, message: str) -> None: ...


class Kube:
    """The real cluster, through the official ``kubernetes`` client."""

    def __init__(self, api_client: Any, *, namespace: str = "default") -> None:
        from kubernetes import client

        self._client = api_client
        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self._namespace = namespace

    @classmethod
    def connect(
        cls,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        connections: int | None = None,
    ) -> Kube:
        """In a pod: the service account. Elsewhere: the kubeconfig, as kubectl reads it.

        ``connections``: kept-alive connections to the API server, for callers that make
        calls from that many threads at once (the client's default is a few per CPU)."""
        from kubernetes import client, config

        settings = client.Configuration()
        explicit = kubeconfig is not None or context is not None or "KUBECONFIG" in os.environ
        if not explicit and _SA_NAMESPACE.exists():
            config.load_incluster_config(client_configuration=settings)
            namespace = _SA_NAMESPACE.read_text().strip()
        else:
            try:
                config.load_kube_config(
                    config_file=kubeconfig, context=context, client_configuration=settings
                )
                contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
            except config.ConfigException as exc:
                raise KubeError(0, f"kubeconfig: {exc}") from None
            if context is not None:
                active = next((c for c in contexts if c["name"] == context), active)
            namespace = (active or {}).get("context", {}).get("namespace") or "default"
        if connections is not None:
            settings.connection_pool_maxsize = connections
        return cls(client.ApiClient(settings), namespace=namespace)

    def default_namespace(self) -> str:
        return self._namespace

    # --- ModelDeployments --------------------------------------------------------------

    def get_deployment(self, namespace: str, name: str) -> Obj:
        return self._call(
            self._custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name
        )

    def list_deployments(self, namespace: str | None) -> tuple[list[Obj], str]:
        if namespace is None:
            out = self._call(self._custom.list_cluster_custom_object, GROUP, VERSION, PLURAL)
        else:
            out = self._call(
                self._custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL
            )
        return list(out.get("items", [])), str(out.get("metadata", {}).get("resourceVersion", ""))

    def watch_deployments(
        self, namespace: str | None, resource_version: str, *, timeout_s: int
    ) -> Iterator[WatchEvent]:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        func: Any
        args: tuple[str, ...]
        if namespace is None:
            func, args = self._custom.list_cluster_custom_object, (GROUP, VERSION, PLURAL)
        else:
            func = self._custom.list_namespaced_custom_object
            args = (GROUP, VERSION, namespace, PLURAL)
        stream = watch.Watch().stream(
            func,
            *args,
            resource_version=resource_version,
            timeout_seconds=timeout_s,
            allow_watch_bookmarks=True,
            # The server ends the watch at timeout_s; a half-open connection must end too.
            _request_timeout=(REQUEST_TIMEOUT_S, timeout_s + REQUEST_TIMEOUT_S),
        )
        try:
            for event in stream:
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":
                    code = int(obj.get("code", 0))
                    raise (Gone if code == 410 else KubeError)(code, obj.get("message", ""))
                yield WatchEvent(kind, obj)
        except ApiException as exc:
            raise _error(exc) from None
        except (OSError, HTTPError) as exc:
            raise KubeError(0, f"watch interrupted: {exc}") from None

    def patch_deployment(self, namespace: str, name: str, patch: Obj) -> Obj:
        """A JSON merge patch; with ``metadata.resourceVersion`` in it, a Conflict if stale."""
        return self._call(
            self._custom.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            patch,
            _content_type="application/merge-patch+json",
        )

    def patch_deployment_status(
        self, namespace: str, name: str, status: Obj, *, resource_version: str | None = None
    ) -> Obj:
        """A JSON merge patch of the status; with ``resource_version``, a Conflict if the
        object changed since (status and spec share one resourceVersion)."""
        body: Obj = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        return self._call(
            self._custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            body,
            _content_type="application/merge-patch+json",
        )

    # --- InferenceServices -------------------------------------------------------------

    def list_inference_services(self, namespace: str, selector: str) -> list[Obj]:
        out = self._call(
            self._custom.list_namespaced_custom_object,
            KSERVE_GROUP,
            KSERVE_VERSION,
            namespace,
            KSERVE_PLURAL,
            label_selector=selector,
        )
        return list(out.get("items", []))

    def get_inference_service(self, namespace: str, name: str) -> Obj:
        return self._call(
            self._custom.get_namespaced_custom_object,
            KSERVE_GROUP,
            KSERVE_VERSION,
            namespace,
            KSERVE_PLURAL,
            name,
        )

    def create_inference_service(self, body: Obj) -> Obj:
        return self._call(
            self._custom.create_namespaced_custom_object,
            KSERVE_GROUP,
            KSERVE_VERSION,
            body["metadata"]["namespace"],
            KSERVE_PLURAL,
            body,
        )

    def patch_inference_service(self, namespace: str, name: str, patch: Obj) -> Obj:
        return self._call(
            self._custom.patch_namespaced_custom_object,
            KSERVE_GROUP,
            KSERVE_VERSION,
            namespace,
            KSERVE_PLURAL,
            name,
            patch,
            _content_type="application/merge-patch+json",
        )

    def delete_inference_service(self, namespace: str, name: str) -> None:
        with contextlib.suppress(NotFound):
            self._call(
                self._custom.delete_namespaced_custom_object,
                KSERVE_GROUP,
                KSERVE_VERSION,
                namespace,
                KSERVE_PLURAL,
                name,
            )

    # --- Events --------------------------------------------------------------------------

    def emit_event(self, obj: Obj, *, type: str, reason: str, message: str) -> None:
        """A core/v1 Event on ``obj``, shown by ``kubectl describe`` and ``kubectl get events``.

        An event is informative: failing to post one is logged, never raised.
        """
        meta = obj["metadata"]
        now = datetime.now(UTC)
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": obj["apiVersion"],
                "kind": obj["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT},
            "firstTimestamp": now.isoformat(),
            "lastTimestamp": now.isoformat(),
            "count": 1,
        }
        try:  # the reply is not needed: skip parsing it into the client's models
            self._call(
                self._core.create_namespaced_event, meta["namespace"], body, _preload_content=False
            )
        except KubeError as exc:
            log.warning("could not post event %s on %s: %s", reason, meta["name"], exc)

    def _call(self, func: Any, *args: Any, **kwargs: Any) -> Obj:
        from kubernetes.client.exceptions import ApiException

        kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT_S)
        try:
            out = func(*args, **kwargs)
        except ApiException as exc:
            raise _error(exc) from None
        except (OSError, HTTPError) as exc:  # urllib3's errors are not OSErrors
            raise KubeError(0, f"API server unreachable: {exc}") from None
        if hasattr(out, "to_dict"):  # a typed model (core API): the JSON it stands for
            out = self._client.sanitize_for_serialization(out)
        return cast(Obj, out)


def _error(exc: Any) -> KubeError:
    status = int(getattr(exc, "status", 0) or 0)
    message = str(getattr(exc, "reason", "")) or "API error"
    with contextlib.suppress(TypeError, ValueError, AttributeError):
        # The API server explains itself in a Status object.
        message = json.loads(exc.body).get("message", message)
    kind = {404: NotFound, 409: Conflict, 410: Gone}.get(status, KubeError)
    return kind(status, message)
