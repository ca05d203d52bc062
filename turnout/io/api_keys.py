"""API keys on disk: the router's keys file (hashes) and the local platform's own key.

The keys file (YAML or JSON, see turnout.core.api_keys) is what ``turnout route --api-keys``
reads and what the chart's Secret holds; ``turnout keys create`` adds to it. The local platform
(``turnout up``, the demo) keeps one all-scopes key in TURNOUT_HOME/api-key, readable by its
owner only, so the clients it starts can send it, as kubectl keeps its token in ~/.kube/config.
Beside it, TURNOUT_HOME/token-secret signs the local router's A/B assignment tokens.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

import yaml

from turnout.core.api_keys import (
    KEY_PREFIX,
    Action,
    KeysError,
    KeySet,
    add_key,
    digest,
    dump_keys,
    parse_keys,
    remove_key,
)

#: The local platform's keys file and its own key, under TURNOUT_HOME.
LOCAL_KEYS_FILE = "api-keys.yaml"
LOCAL_KEY_FILE = "api-key"
#: The name of the local platform's key in its keys file.
LOCAL_KEY_NAME = "local"
#: The local router's secret for A/B assignment tokens, under TURNOUT_HOME.
LOCAL_TOKEN_SECRET_FILE = "token-secret"
_HEADER = (
    "# turnout router API keys: SHA-256 hashes only, never the keys. "
    "`turnout keys create NAME` adds one.\n"
)


def new_key() -> str:
    """32 random bytes, base64url: ``tk_`` + 43 characters."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def read_keys(path: Path) -> KeySet:
    """The keys in ``path``, or KeysError naming the file and the problem."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise KeysError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_keys_text(text, source=str(path))


def parse_keys_text(text: str, *, source: str) -> KeySet:
    try:
        doc = yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as exc:
        # The problem and where, not PyYAML's own message: it quotes the offending line.
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise KeysError(f"{source}: not valid YAML/JSON{at}: {problem}") from None
    try:
        return parse_keys(doc)
    except KeysError as exc:
        raise KeysError(f"{source}: {exc}") from None


def keys_text(keys: KeySet) -> str:
    return _HEADER + yaml.safe_dump(dump_keys(keys), sort_keys=False)


def write_keys(path: Path, keys: KeySet) -> None:
    _write_private(path, keys_text(keys))


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` at once (a router polling it never reads half a file), mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def create_key(
    path: Path, *, name: str, models: list[str], actions: list[Action]
) -> tuple[str, KeySet]:
    """Make a key, add its hash to the keys file at ``path`` (created if absent); return the
    key, which is shown once and stored nowhere, and the new key set."""
    keys = read_keys(path) if path.exists() else KeySet()
    key = new_key()
    keys = add_key(keys, name=name, key=key, models=models, actions=actions)
    write_keys(path, keys)
    return key, keys


def revoke_key(path: Path, name: str) -> KeySet:
    keys = remove_key(read_keys(path), name)
    write_keys(path, keys)
    return keys


def local_key(home: Path) -> tuple[str, bool]:
    """The local platform's key, and whether it was made just now.

    Made on first use (or when the stored one is no longer in the keys file): an all-scopes
    key named ``local``, its hash added to TURNOUT_HOME/api-keys.yaml and the key itself
    written to TURNOUT_HOME/api-key. Other keys in the file are kept. Raises KeysError when
    the keys file is there but bad (it is the user's to fix, not to overwrite).
    """
    keys_path, key_path = home / LOCAL_KEYS_FILE, home / LOCAL_KEY_FILE
    keys = read_keys(keys_path) if keys_path.exists() else KeySet()
    try:
        stored = key_path.read_text().strip()
    except FileNotFoundError:
        stored = ""
    if stored and digest(stored) in keys.by_hash:
        return stored, False
    if LOCAL_KEY_NAME in keys.names:
        keys = remove_key(keys, LOCAL_KEY_NAME)
    key = new_key()
    keys = add_key(keys, name=LOCAL_KEY_NAME, key=key, models=["*"], actions=list(Action))
    _write_private(key_path, key + "\n")
    write_keys(keys_path, keys)
    return key, True


def local_token_secret(home: Path) -> Path:
    """The local router's token secret file, made with a random secret on first use (kept
    afterwards, so tokens outlive a restart of ``turnout up``)."""
    path = home / LOCAL_TOKEN_SECRET_FILE
    try:
        if path.read_text().strip():
            return path
    except FileNotFoundError:
        pass
    _write_private(path, secrets.token_urlsafe(48) + "\n")
    return path


def read_local_key(home: Path) -> str | None:
    """The key the local platform made in ``home``, if any."""
    try:
        return (home / LOCAL_KEY_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None
