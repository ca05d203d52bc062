"""API keys at the router: who may call it, re-read from the keys file without a restart.

``--api-keys FILE`` turns authentication on (without it the router is open, as for a quick
local test). The file holds hashes only (turnout.core.api_keys says why SHA-256 and a dict
lookup are the right tools); in the chart it is a Secret volume, which the kubelet updates by
swapping a symlink, so the file is compared by content every second rather than watched.

A file that does not parse or has a bad entry is rejected: the last good keys stay in force,
and the problem shows on ``/routes``, in ``turnout_router_auth_keys_errors_total`` and in the
log. Neither the log nor a reply ever holds a key: refusals quote nothing the caller sent, and
the file's own errors never echo a value.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from services.router.asgi import header, respond
from turnout.core.api_keys import ApiKey, Denied, KeysError, KeySet, Reason, identify
from turnout.io.api_keys import parse_keys_text
from turnout_sdk import protocol as oip
from turnout_sdk.http import Scope, Send
from turnout_sdk.periodic import Periodic

log = logging.getLogger("turnout.router")

#: Paths answered without a key: probes, Prometheus and the server's own metadata.
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics", "/v2"})
_CHALLENGE = {"content-type": "application/json", "www-authenticate": 'Bearer realm="turnout"'}
_JSON = {"content-type": "application/json"}
#: Accepted Authorization headers remembered at most (a few clients' keys, typically).
ACCEPTED_CACHE = 1024


class Auth:
    """The keys in force, their file, and the refusal metrics (in the router's registry)."""

    def __init__(self, path: Path, registry: CollectorRegistry, *, interval: float = 1.0) -> None:
        """Load ``path`` or raise KeysError: at start there are no good keys to keep."""
        self.path = path
        self.keys = KeySet()
        self.loaded_at: datetime | None = None
        self.last_error: str | None = None
        refusals = Counter(
            "turnout_router_auth_refusals",
            "Requests refused for their API key, by reason: missing, malformed or unknown"
            " (401), scope (403: the key lacks the model or action)",
            ["reason"],
            registry=registry,
        )
        # Every reason exported at zero, and resolved once: no label lookup per refusal.
        self._refusals = {reason: refusals.labels(reason.value) for reason in Reason}
        self._loaded = Gauge(
            "turnout_router_auth_keys",
            "API keys in force (the last good keys file)",
            registry=registry,
        )
        self._loaded_at = Gauge(
            "turnout_router_auth_keys_loaded_timestamp_seconds",
            "When the keys in force were loaded",
            registry=registry,
        )
        self._errors = Counter(
            "turnout_router_auth_keys_errors",
            "Keys files rejected (unreadable, not YAML/JSON or a bad entry); the last good keys"
            " stayed in force",
            registry=registry,
        )
        self._seen: bytes | None = None
        #: Authorization headers already accepted under the keys in force -> their key, so a
        #: client's every request after its first costs a dict lookup, not a SHA-256. Only
        #: accepted keys, emptied when the keys change and when full.
        self._accepted: dict[str, ApiKey] = {}
        self._poller = Periodic(self.poll, interval)
        text = self._read()
        if text is None:
            raise KeysError(f"{path}: cannot read the keys file")
        self._apply(text)
        if self.last_error is not None:
            raise KeysError(self.last_error)

    # --- the keys file --------------------------------------------------------------------

    def _read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except OSError:
            return None

    def poll(self) -> None:
        """Load the file if its content changed since the last look (content, not mtime: a
        Secret volume swaps a symlink, and two writes can share a timestamp)."""
        text = self._read()
        if text is None:
            if self._seen is not None:  # reported once, not every second
                self._seen = None
                self._reject(f"{self.path}: cannot read the keys file")
            return
        if text != self._seen:
            self._apply(text)

    def _apply(self, text: bytes) -> None:
        self._seen = text
        try:
            keys = parse_keys_text(text.decode("utf-8", "replace"), source=str(self.path))
        except KeysError as exc:
            self._reject(str(exc))
            return
        self.keys = keys
        self._accepted = {}
        self.loaded_at = datetime.now(UTC)
        self.last_error = None
        self._loaded.set(len(keys.keys))
        self._loaded_at.set(time.time())
        log.info("API keys loaded from %s: %s", self.path, ", ".join(keys.names) or "none")

    def _reject(self, reason: str) -> None:
        self.last_error = reason
        self._errors.inc()
        log.error(
            "API keys file rejected, keeping the %d keys in force: %s", len(self.keys.keys), reason
        )

    def start(self) -> None:
        self._poller.start()

    async def stop(self) -> None:
        await self._poller.stop()

    def describe(self) -> dict[str, Any]:
        """For ``/routes``: which keys (names only) are in force, from when, and any problem."""
        return {
            "enabled": True,
            "file": str(self.path),
            "keys": self.keys.names,
            "loadedAt": self.loaded_at.isoformat() if self.loaded_at else None,
            "lastError": self.last_error,
        }

    # --- requests -------------------------------------------------------------------------

    def identify(self, scope: Scope) -> ApiKey | Denied:
        authorization = header(scope, b"authorization")
        if authorization is not None and (known := self._accepted.get(authorization)):
            return known
        found = identify(authorization, self.keys)
        if isinstance(found, ApiKey) and authorization is not None:
            if len(self._accepted) >= ACCEPTED_CACHE:
                self._accepted = {}
            self._accepted[authorization] = found
        return found

    async def refuse(self, send: Send, denied: Denied) -> None:
        """Answer 401 or 403 with ``{"error": message}`` and count it by reason."""
        self._refusals[denied.reason].inc()
        body = oip.error_body(denied.message)
        await respond(send, denied.status, body, _CHALLENGE if denied.status == 401 else _JSON)
