"""API keys: who may call the router, for which models and which actions.

The keys file holds a name, a SHA-256 hash, models and actions per key, never a key itself.
A key is 32 random bytes (``tk_`` + 43 base64url characters, made by turnout.io.api_keys), so a
fast hash is the right store, as for GitHub's and Stripe's tokens: bcrypt or argon2 slow down
guessing a low-entropy password, but nobody guesses 256 random bits, and a slow hash would cost
the router milliseconds per request.

A request's key is checked by looking its hash up in a dict, not by comparing strings. The
lookup's timing depends on the hash of what the caller sent, which they can compute anyway, not
on the stored key: learning how many leading bits of some stored hash match theirs does not
help them find a key with that hash (preimage resistance). So no ``hmac.compare_digest`` loop
over the keys is needed, and the check costs one SHA-256 of ~50 bytes whatever the key count.

Pure: parsing, checking and the refusal messages; reading files and making keys live in
turnout.io.api_keys, the router's use of them in services/router/auth.py.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

#: A key's model scope that covers every model.
ALL_MODELS = "*"
#: Keys turnout makes start with this, so a secret scanner can spot a leaked one.
KEY_PREFIX = "tk_"
#: Longest Authorization header read; longer is refused before any hashing (401).
MAX_HEADER_LENGTH = 256
#: RFC 6750's token68: what a Bearer token may contain.
_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class Action(StrEnum):
    """What a key may do; a request needs one of them."""

    INFER = "infer"  # /predict, v2 infer, a model's metadata and readiness
    FEEDBACK = "feedback"  # A/B outcomes: POST /v2/models/{name}/feedback
    ADMIN = "admin"  # /routes: the route table and the keys' status (not per model)


class Reason(StrEnum):
    """Why a request was refused: the ``reason`` label of the refusal counter."""

    MISSING = "missing"  # no Authorization header (401)
    MALFORMED = "malformed"  # not "Bearer <token>", or too long (401)
    UNKNOWN = "unknown"  # no key with that hash: mistyped, revoked or never made (401)
    SCOPE = "scope"  # a known key without the model or action (403)


class KeysError(ValueError):
    """A keys file that is not valid; the message names the entry and field, never a value
    that could be a key."""


@dataclass(frozen=True)
class ApiKey:
    name: str
    #: Hex SHA-256 of the key.
    sha256: str
    #: Model names, or ALL_MODELS.
    models: frozenset[str]
    actions: frozenset[Action]

    def allows(self, model: str | None, action: Action) -> bool:
        if action not in self.actions:
            return False
        return action is Action.ADMIN or ALL_MODELS in self.models or model in self.models

    def scopes(self) -> str:
        """``infer, feedback on fraud`` / ``admin``: what the key may do, for messages."""
        per_model = sorted(a.value for a in self.actions if a is not Action.ADMIN)
        said = []
        if per_model:
            on = "every model" if ALL_MODELS in self.models else ", ".join(sorted(self.models))
            said.append(f"{', '.join(per_model)} on {on}")
        if Action.ADMIN in self.actions:
            said.append("admin")
        return "; ".join(said)


@dataclass(frozen=True)
class KeySet:
    keys: tuple[ApiKey, ...] = ()
    by_hash: Mapping[str, ApiKey] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_hash", {k.sha256: k for k in self.keys})

    @property
    def names(self) -> list[str]:
        return [k.name for k in self.keys]


@dataclass(frozen=True)
class Denied:
    """A refused request: its HTTP status, the counter's reason and the caller's message."""

    status: int
    reason: Reason
    message: str


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def identify(authorization: str | None, keys: KeySet) -> ApiKey | Denied:
    """The key an ``Authorization`` header names, or why the request is refused (401).

    No message repeats what the caller sent: it may be a real key sent to the wrong place.
    """
    if authorization is None:
        return Denied(
            401, Reason.MISSING, 'no API key: send the header "Authorization: Bearer <key>"'
        )
    if len(authorization) > MAX_HEADER_LENGTH:
        return Denied(
            401,
            Reason.MALFORMED,
            f"Authorization header too long ({len(authorization)} > {MAX_HEADER_LENGTH} "
            'characters): send "Authorization: Bearer <key>"',
        )
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not _TOKEN.fullmatch(token):
        return Denied(
            401,
            Reason.MALFORMED,
            'malformed Authorization header: expected "Bearer <key>"',
        )
    found = keys.by_hash.get(digest(token))
    if found is None:
        return Denied(401, Reason.UNKNOWN, "unknown API key (revoked, mistyped or never made)")
    return found


def permit(key: ApiKey, model: str | None, action: Action) -> Denied | None:
    """None when ``key`` may do ``action`` on ``model``; else the 403 naming the missing scope."""
    if key.allows(model, action):
        return None
    wanted = action.value if action is Action.ADMIN else f"{action.value} on model {model!r}"
    has = key.scopes() or "nothing"
    return Denied(
        403, Reason.SCOPE, f"API key {key.name!r} lacks the scope {wanted} (it has: {has})"
    )


# --- the keys file ----------------------------------------------------------------------------


def parse_keys(doc: Any) -> KeySet:
    """Validate a parsed keys file (``{"keys": [{name, sha256, models, actions}, ...]}``)."""
    if not isinstance(doc, dict) or set(doc) != {"keys"} or not isinstance(doc["keys"], list):
        raise KeysError("expected one field, keys: a list of {name, sha256, models, actions}")
    keys: list[ApiKey] = []
    for i, entry in enumerate(doc["keys"], 1):
        key = _entry(i, entry)
        if key.name in {k.name for k in keys}:
            raise KeysError(f"key {i}: the name {key.name!r} is used twice")
        if key.sha256 in {k.sha256 for k in keys}:
            raise KeysError(f"key {i} ({key.name}): the same sha256 as another key")
        keys.append(key)
    return KeySet(tuple(keys))


def _entry(i: int, entry: Any) -> ApiKey:
    fields = {"name", "sha256", "models", "actions"}
    if not isinstance(entry, dict):
        raise KeysError(f"key {i}: expected an object with {', '.join(sorted(fields))}")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise KeysError(
            f"key {i}: name must be 1-63 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    where = f"key {i} ({name})"
    if unknown := set(entry) - fields:
        raise KeysError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    if missing := fields - set(entry):
        raise KeysError(f"{where}: missing {', '.join(sorted(missing))}")
    sha = entry["sha256"]
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        # Never the value: someone may have pasted the key itself here.
        raise KeysError(f"{where}: sha256 must be 64 lowercase hexadecimal characters")
    models = _strings(where, "models", entry["models"])
    if bad := [m for m in models if m != ALL_MODELS and not m.strip()]:
        raise KeysError(f"{where}: models: empty model name ({len(bad)})")
    actions = _strings(where, "actions", entry["actions"])
    known = [a.value for a in Action]
    if bad := sorted(set(actions) - set(known)):
        raise KeysError(f"{where}: unknown action(s) {', '.join(bad)}; known: {', '.join(known)}")
    return ApiKey(
        name=name,
        sha256=sha,
        models=frozenset(models),
        actions=frozenset(Action(a) for a in actions),
    )


def _strings(where: str, what: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise KeysError(f"{where}: {what} must be a non-empty list of strings")
    return value


def dump_keys(keys: KeySet) -> dict[str, Any]:
    """The keys file's document; ``parse_keys(dump_keys(k)) == k``."""
    return {
        "keys": [
            {
                "name": k.name,
                "sha256": k.sha256,
                "models": sorted(k.models),
                "actions": [a.value for a in Action if a in k.actions],
            }
            for k in keys.keys
        ]
    }


def add_key(
    keys: KeySet, *, name: str, key: str, models: Iterable[str], actions: Iterable[Action]
) -> KeySet:
    """``keys`` plus a new entry for ``key``, validated as the file would be."""
    entry = {
        "name": name,
        "sha256": digest(key),
        "models": sorted(set(models)),
        "actions": sorted({Action(a).value for a in actions}),
    }
    return parse_keys({"keys": [*dump_keys(keys)["keys"], entry]})


def remove_key(keys: KeySet, name: str) -> KeySet:
    if name not in keys.names:
        raise KeysError(f"no key named {name!r}; keys: {', '.join(keys.names) or '(none)'}")
    return KeySet(tuple(k for k in keys.keys if k.name != name))
