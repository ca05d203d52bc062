"""Assignment tokens: proof that the router really assigned a request to an A/B arm.

An A/B outcome arrives long after the prediction. The router hands the caller a token with the
reply (header ``turnout-assignment``) and accepts an outcome only with it: the token says which
model, arm, version and experiment served the request, names the request (a random 96-bit id,
so the same request counts once however often its outcome is posted), expires, and is signed
with HMAC-SHA256 under a secret only the routers hold. Without it anyone could post outcomes for
any sticky key, as often as they liked.

Format: ``base64url(payload) "." base64url(HMAC-SHA256(secret, base64url(payload)))``, no
padding, the payload compact JSON. The MAC covers the payload exactly as sent, and the check
compares the expected signature's text with the text sent (``hmac.compare_digest``), so any
changed character is refused, even one that decodes to the same bytes.

Secrets: a secrets file holds one per line; the first signs, every one verifies, so a secret is
rotated by putting the new one first and dropping the old one once the tokens it signed
(``--token-ttl``, 7 days by default) have expired.

Pure: ``now`` is passed in, random request ids are made by the caller.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from turnout.core.assign import Arm

#: A secret shorter than this is refused: 32 characters of a random alphabet, >= 190 bits.
MIN_SECRET_LENGTH = 32
#: Tokens live this long unless the router is told otherwise (--token-ttl).
DEFAULT_TTL_S = 7 * 24 * 3600
#: Longest token read; longer is refused before any work (a real one is about 200).
MAX_TOKEN_LENGTH = 1024
#: The reply header that carries the token.
HEADER = "turnout-assignment"
_FIELDS = {"m", "a", "v", "x", "r", "e"}
_ARMS = {"s": Arm.STABLE, "c": Arm.CANDIDATE}


class TokenSecretError(ValueError):
    """A secrets file that cannot sign tokens; the message never holds a secret."""


class Problem(StrEnum):
    """Why feedback was refused: the ``reason`` in the error body and the refusal counter."""

    BODY = "body"  # not JSON, or not an object (400)
    KEY_ONLY = "key_only"  # the old {"key": ...} form, which anyone could forge (400)
    MISSING = "missing"  # no token (400)
    MALFORMED = "malformed"  # not a token turnout makes (400)
    OUTCOME = "outcome"  # outcome missing, not a number, a bool or not finite (400)
    FORGED = "forged"  # the signature does not match (403)
    EXPIRED = "expired"  # past its expiry (410)
    OTHER_MODEL = "other_model"  # a token for another model (400)
    ENDED = "ended"  # its experiment is over: candidate or salt changed since (409)
    REPLAYED = "replayed"  # this request's outcome was counted already (409)


@dataclass(frozen=True)
class Refused:
    status: int
    problem: Problem
    message: str


@dataclass(frozen=True)
class Assignment:
    """What a token says about one request."""

    model: str
    arm: Arm
    version: str
    #: The experiment the request belongs to (turnout.core.ab_ledger.experiment_id).
    experiment: str
    #: Random, 96 bits base64url: the request's identity in the ledger.
    request: str
    #: Unix seconds after which the token is refused.
    expires: int


@dataclass(frozen=True)
class Feedback:
    """A feedback request that parsed: the token as sent and a finite outcome."""

    token: str
    outcome: float


def parse_secrets(text: str, *, source: str) -> tuple[bytes, ...]:
    """The secrets in a secrets file: one per non-empty line, the first signing."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise TokenSecretError(
            f"{source}: no secret; put a random one of at least {MIN_SECRET_LENGTH} characters "
            "in it"
        )
    for i, line in enumerate(lines, 1):
        if len(line) < MIN_SECRET_LENGTH:
            raise TokenSecretError(
                f"{source}: line {i}: a secret of {len(line)} characters is too short to sign "
                f"tokens (at least {MIN_SECRET_LENGTH})"
            )
    return tuple(line.encode() for line in lines)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: bytes, payload: str) -> str:
    return _b64(hmac.new(secret, payload.encode("ascii"), hashlib.sha256).digest())


def issue(assignment: Assignment, secret: bytes) -> str:
    """The token for ``assignment``, signed with ``secret``."""
    a = assignment
    doc = {
        "m": a.model,
        "a": "c" if a.arm is Arm.CANDIDATE else "s",
        "v": a.version,
        "x": a.experiment,
        "r": a.request,
        "e": a.expires,
    }
    payload = _b64(orjson.dumps(doc))
    return f"{payload}.{_signature(secret, payload)}"


def verify(token: str, *, secrets: tuple[bytes, ...], now: float) -> Assignment | Refused:
    """The assignment a token proves, or why it is refused: malformed (400), forged (403),
    expired (410). No message repeats the token."""
    malformed = Refused(
        400,
        Problem.MALFORMED,
        f"'token' is not an assignment token: send the {HEADER} header of the infer reply as is",
    )
    if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
        return malformed
    payload, _, signature = token.partition(".")
    if not payload or not signature or not payload.isascii() or not signature.isascii():
        return malformed
    if not any(hmac.compare_digest(_signature(s, payload), signature) for s in secrets):
        return Refused(
            403,
            Problem.FORGED,
            "forged assignment token: its signature does not match (not made by this "
            "platform's routers, or changed since)",
        )
    try:
        doc = orjson.loads(_unb64(payload))
    except (binascii.Error, ValueError):
        return malformed
    assignment = _assignment(doc)
    if assignment is None:
        return malformed
    if now >= assignment.expires:
        return Refused(
            410,
            Problem.EXPIRED,
            f"assignment token expired {_ago(now - assignment.expires)} ago: outcomes are "
            "accepted for a limited time after the reply (the router's --token-ttl)",
        )
    return assignment


def _assignment(doc: Any) -> Assignment | None:
    if not isinstance(doc, dict) or set(doc) != _FIELDS:
        return None
    m, a, v, x, r, e = (doc[k] for k in ("m", "a", "v", "x", "r", "e"))
    if not all(isinstance(s, str) and s for s in (m, v, x, r)) or a not in _ARMS:
        return None
    if isinstance(e, bool) or not isinstance(e, int):
        return None
    return Assignment(model=m, arm=_ARMS[a], version=v, experiment=x, request=r, expires=e)


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def parse_feedback(doc: Any) -> Feedback | Refused:
    """``{"token": "...", "outcome": number}``, or the 400 naming what is wrong."""
    if not isinstance(doc, dict):
        return Refused(
            400, Problem.BODY, 'feedback must be a JSON object: {"token": "...", "outcome": number}'
        )
    token = doc.get("token")
    if token is None and "key" in doc:
        return Refused(
            400,
            Problem.KEY_ONLY,
            f"feedback now needs 'token': the {HEADER} header of the infer reply (a sticky key "
            "alone could be sent by anyone, any number of times)",
        )
    if not isinstance(token, str) or not token:
        return Refused(
            400,
            Problem.MISSING,
            f"feedback needs 'token': the {HEADER} header of the infer reply",
        )
    outcome = doc.get("outcome")
    if isinstance(outcome, bool) or not isinstance(outcome, int | float):
        return Refused(400, Problem.OUTCOME, "feedback needs 'outcome': a finite number")
    try:
        value = float(outcome)
    except OverflowError:  # an int beyond float's range
        value = math.inf
    if not math.isfinite(value):
        return Refused(400, Problem.OUTCOME, "feedback needs 'outcome': a finite number")
    return Feedback(token=token, outcome=value)


def admit(
    token: str, *, secrets: tuple[bytes, ...], model: str, experiment: str | None, now: float
) -> Assignment | Refused:
    """A token that may count for ``model``'s running ``experiment`` (None: none runs), or why
    not. Replays are the caller's to find: they need the ledger."""
    found = verify(token, secrets=secrets, now=now)
    if isinstance(found, Refused):
        return found
    if found.model != model:
        return Refused(
            400,
            Problem.OTHER_MODEL,
            f"assignment token is for model {found.model!r}, not {model!r}: post it to "
            f"/v2/models/{found.model}/feedback",
        )
    if found.experiment != experiment:
        return Refused(
            409,
            Problem.ENDED,
            f"the experiment this request belonged to has ended (model {model!r} now routes "
            f"{'another experiment' if experiment else 'no experiment'}: its candidate or salt "
            "changed since); the outcome is not counted",
        )
    return found


def replayed(assignment: Assignment) -> Refused:
    return Refused(
        409,
        Problem.REPLAYED,
        f"already counted: request {assignment.request}'s outcome was accepted before (each "
        "request counts once)",
    )
