"""Assignment tokens at the router: the secret, and the token each experiment reply carries.

``--token-secret FILE`` names the HMAC secret (turnout.core.tokens: one per line, the first
signs); every replica must read the same one, so a token made by one is accepted by all. In the
chart it is the router Secret's ``token-secret``, a volume the kubelet updates by swapping a
symlink, so the file is compared by content every second, as the keys file is. A file that
becomes empty or short is rejected and the secrets in force are kept.

Without ``--token-secret`` the router makes a random secret at start and says so: tokens then
work with this one process only, and an outcome whose token came from before a restart is
refused as forged. That suits ``turnout route`` for a quick try; the local platform and the
chart always pass a file.

A reply carries a token when its request was assigned an arm of a split (a candidate taking
weighted traffic, as in an A/B test or a canary) and succeeded. The token names the arm the
request was *assigned*: when a failed candidate call was answered by stable, the outcome still
counts under candidate (intent to treat, as the sticky key always did), so the test's arms stay
the randomised groups the split made.
"""

from __future__ import annotations

import logging
import secrets as random_secrets
import time
from pathlib import Path

from turnout.core import tokens
from turnout.core.ab_ledger import route_experiment
from turnout.core.assign import Arm
from turnout.core.spec import ModelRoute
from turnout.core.tokens import TokenSecretError
from turnout_sdk.periodic import Periodic

log = logging.getLogger("turnout.router")


class Tokens:
    """The secrets in force, where they come from, and the tokens made with them."""

    def __init__(self, path: Path | None, *, ttl_s: float = tokens.DEFAULT_TTL_S) -> None:
        """Read ``path`` or raise TokenSecretError; None: a random secret for this process."""
        if ttl_s <= 0:
            raise TokenSecretError(f"--token-ttl must be longer than zero, not {ttl_s:g}s")
        self.path = path
        self.ttl_s = int(ttl_s)
        self.last_error: str | None = None
        self._seen: bytes | None = None
        self._poller = Periodic(self.poll, 1.0)
        #: Per model, the route its experiment id was computed for, and the id.
        self._experiments: dict[str, tuple[ModelRoute, str | None]] = {}
        if path is None:
            self.secrets: tuple[bytes, ...] = (random_secrets.token_urlsafe(32).encode(),)
            log.warning(
                "no --token-secret: A/B assignment tokens are signed with a random secret of "
                "this process; they will not be accepted after a restart or by another replica"
            )
            return
        try:
            text = path.read_bytes()
        except OSError as exc:
            why = f"{path}: cannot read the token secret: {exc.strerror}"
            raise TokenSecretError(why) from None
        self.secrets = tokens.parse_secrets(text.decode("utf-8", "replace"), source=str(path))
        self._seen = text

    def poll(self) -> None:
        if self.path is None:
            return
        try:
            text = self.path.read_bytes()
        except OSError as exc:
            self._reject(f"{self.path}: cannot read the token secret: {exc.strerror}")
            return
        if text == self._seen:
            return
        self._seen = text
        try:
            self.secrets = tokens.parse_secrets(
                text.decode("utf-8", "replace"), source=str(self.path)
            )
        except TokenSecretError as exc:
            self._reject(str(exc))
            return
        self.last_error = None
        log.info("token secret reloaded from %s (%d secret(s))", self.path, len(self.secrets))

    def _reject(self, reason: str) -> None:
        if reason != self.last_error:  # said once, not every second
            log.error("token secret rejected, keeping the one in force: %s", reason)
        self.last_error = reason

    def start(self) -> None:
        self._poller.start()

    async def stop(self) -> None:
        await self._poller.stop()

    def describe(self) -> dict[str, object]:
        """For ``/routes``: where the secret comes from (never the secret) and any problem."""
        return {
            "secretFile": str(self.path) if self.path else None,
            "ttlSeconds": self.ttl_s,
            "lastError": self.last_error,
        }

    # --- per request ----------------------------------------------------------------------

    def experiment(self, name: str, route: ModelRoute) -> str | None:
        """The route's experiment id, computed once per route table."""
        found = self._experiments.get(name)
        if found is None or found[0] is not route:
            found = self._experiments[name] = (route, route_experiment(name, route))
        return found[1]

    def issue(self, name: str, route: ModelRoute, arm: Arm) -> str | None:
        """The token for a reply of ``route`` assigned to ``arm``; None when no split runs."""
        candidate = route.candidate
        if candidate is None or candidate.weight <= 0:
            return None
        experiment = self.experiment(name, route)
        assert experiment is not None
        assignment = tokens.Assignment(
            model=name,
            arm=arm,
            version=candidate.version if arm is Arm.CANDIDATE else route.stable.version,
            experiment=experiment,
            request=random_secrets.token_urlsafe(12),
            expires=int(time.time()) + self.ttl_s,
        )
        return tokens.issue(assignment, self.secrets[0])
