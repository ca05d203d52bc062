"""API keys as the router judges them: the keys file, 401s and 403s with their messages.

turnout.core.api_keys is pure, so the table of callers and scopes runs here in microseconds;
tests/integration/test_router_auth.py runs the same cases against a real router process.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from turnout.core.api_keys import (
    Action,
    ApiKey,
    Denied,
    KeysError,
    KeySet,
    Reason,
    add_key,
    digest,
    dump_keys,
    identify,
    parse_keys,
    permit,
    remove_key,
)
from turnout.io.api_keys import (
    create_key,
    local_key,
    new_key,
    parse_keys_text,
    read_keys,
    read_local_key,
    revoke_key,
)

ADMIN, FRAUD, FEEDBACK = new_key(), new_key(), new_key()
KEYS = add_key(
    add_key(
        add_key(KeySet(), name="admin", key=ADMIN, models=["*"], actions=list(Action)),
        name="fraud-app",
        key=FRAUD,
        models=["fraud"],
        actions=[Action.INFER],
    ),
    name="outcomes",
    key=FEEDBACK,
    models=["fraud", "credit"],
    actions=[Action.FEEDBACK],
)


def entry(**change: object) -> dict[str, object]:
    return {
        "name": "ci",
        "sha256": digest("tk_x"),
        "models": ["fraud"],
        "actions": ["infer"],
        **change,
    }


# --- who is calling: 401 ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "reason", "says"),
    [
        (None, Reason.MISSING, 'send the header "Authorization: Bearer <key>"'),
        ("", Reason.MALFORMED, 'expected "Bearer <key>"'),
        (f"Basic {ADMIN}", Reason.MALFORMED, 'expected "Bearer <key>"'),
        ("Bearer", Reason.MALFORMED, 'expected "Bearer <key>"'),
        ("Bearer two words", Reason.MALFORMED, 'expected "Bearer <key>"'),
        ("Bearer tk_ü", Reason.MALFORMED, 'expected "Bearer <key>"'),
        ("Bearer " + "a" * 300, Reason.MALFORMED, "too long (307 > 256 characters)"),
        ("Bearer tk_not-a-key", Reason.UNKNOWN, "unknown API key"),
        (f"Bearer {ADMIN}x", Reason.UNKNOWN, "unknown API key"),
    ],
)
def test_a_caller_without_a_known_key_gets_401_naming_what_is_wrong(
    header: str | None, reason: Reason, says: str
) -> None:
    denied = identify(header, KEYS)
    assert isinstance(denied, Denied)
    assert (denied.status, denied.reason) == (401, reason)
    assert says in denied.message
    assert ADMIN not in denied.message and "not-a-key" not in denied.message


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_a_known_key_is_found_whatever_the_scheme_case(scheme: str) -> None:
    found = identify(f"{scheme} {FRAUD}", KEYS)
    assert isinstance(found, ApiKey) and found.name == "fraud-app"


# --- what it may do: 403 ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "model", "action", "allowed"),
    [
        (ADMIN, "fraud", Action.INFER, True),
        (ADMIN, "anything", Action.FEEDBACK, True),
        (ADMIN, None, Action.ADMIN, True),
        (FRAUD, "fraud", Action.INFER, True),
        (FRAUD, "credit", Action.INFER, False),
        (FRAUD, "fraud", Action.FEEDBACK, False),
        (FRAUD, None, Action.ADMIN, False),
        (FEEDBACK, "credit", Action.FEEDBACK, True),
        (FEEDBACK, "fraud", Action.INFER, False),
        (FEEDBACK, "digits", Action.FEEDBACK, False),
    ],
)
def test_scopes_per_model_and_action(
    key: str, model: str | None, action: Action, allowed: bool
) -> None:
    found = identify(f"Bearer {key}", KEYS)
    assert isinstance(found, ApiKey)
    denied = permit(found, model, action)
    assert (denied is None) == allowed


def test_a_403_names_the_key_the_missing_scope_and_what_it_has() -> None:
    found = identify(f"Bearer {FRAUD}", KEYS)
    assert isinstance(found, ApiKey)
    denied = permit(found, "credit", Action.INFER)
    assert denied == Denied(
        403,
        Reason.SCOPE,
        "API key 'fraud-app' lacks the scope infer on model 'credit' (it has: infer on fraud)",
    )
    denied = permit(found, None, Action.ADMIN)
    assert denied is not None and "lacks the scope admin " in denied.message


# --- the keys file ------------------------------------------------------------------------------


def test_the_file_round_trips_and_hashes_are_all_it_holds(tmp_path: Path) -> None:
    key, keys = create_key(
        tmp_path / "keys.yaml", name="ci", models=["fraud"], actions=[Action.INFER]
    )
    text = (tmp_path / "keys.yaml").read_text()
    assert key not in text and digest(key) in text
    assert read_keys(tmp_path / "keys.yaml") == keys
    assert parse_keys(dump_keys(KEYS)) == KEYS
    assert stat.S_IMODE(os.stat(tmp_path / "keys.yaml").st_mode) == 0o600
    assert revoke_key(tmp_path / "keys.yaml", "ci") == KeySet()


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        (None, "expected one field, keys"),
        ({"keys": {}}, "expected one field, keys"),
        ({"keys": [], "extra": 1}, "expected one field, keys"),
        ({"keys": ["ci"]}, "key 1: expected an object"),
        ({"keys": [entry(name="")]}, "key 1: name must be"),
        ({"keys": [entry(name="a b")]}, "key 1: name must be"),
        ({"keys": [entry(sha256="tk_pasted-the-key")]}, "key 1 (ci): sha256 must be 64"),
        ({"keys": [entry(sha256=digest("x").upper())]}, "sha256 must be 64 lowercase"),
        ({"keys": [entry(models=[])]}, "key 1 (ci): models must be a non-empty list"),
        ({"keys": [entry(models=[""])]}, "key 1 (ci): models: empty model name"),
        ({"keys": [entry(actions=["infer", "delete"])]}, "unknown action(s) delete; known:"),
        ({"keys": [entry(actions=[])]}, "actions must be a non-empty list"),
        ({"keys": [entry(scopes=["x"])]}, "key 1 (ci): unknown field(s) scopes"),
        ({"keys": [{"name": "ci"}]}, "key 1 (ci): missing actions, models, sha256"),
        ({"keys": [entry(), entry()]}, "key 2: the name 'ci' is used twice"),
        ({"keys": [entry(), entry(name="cd")]}, "key 2 (cd): the same sha256 as another key"),
    ],
)
def test_a_bad_file_is_refused_naming_the_entry_and_field(doc: object, says: str) -> None:
    with pytest.raises(KeysError) as caught:
        parse_keys(doc)
    assert says in str(caught.value)
    assert "tk_pasted-the-key" not in str(caught.value)  # a value is never echoed


def test_a_file_that_is_not_yaml_says_where_without_quoting_it() -> None:
    with pytest.raises(KeysError) as caught:
        parse_keys_text("keys:\n  - name: ci\n    sha256: [tk_secret\n", source="keys.yaml")
    said = str(caught.value)
    assert said.startswith("keys.yaml: not valid YAML/JSON at line")
    assert "tk_secret" not in said


def test_a_single_model_or_action_may_be_a_string() -> None:
    [key] = parse_keys({"keys": [entry(models="*", actions="feedback")]}).keys
    assert key.allows("any", Action.FEEDBACK) and not key.allows("any", Action.INFER)


def test_revoking_a_key_that_does_not_exist_names_the_ones_that_do() -> None:
    with pytest.raises(KeysError, match="no key named 'gone'; keys: admin, fraud-app, outcomes"):
        remove_key(KEYS, "gone")


@given(st.binary(min_size=16, max_size=64))
def test_made_keys_are_bearer_tokens_and_only_their_own_hash_finds_them(raw: bytes) -> None:
    key = new_key()
    assert key.startswith("tk_") and len(key) == 46
    found = identify(
        f"Bearer {key}", add_key(KEYS, name="new", key=key, models=["m"], actions=[Action.INFER])
    )
    assert isinstance(found, ApiKey) and found.name == "new"
    assert isinstance(identify(f"Bearer {raw.hex()}", KEYS), Denied)


# --- the local platform's key -------------------------------------------------------------------


def test_the_local_key_is_made_once_kept_private_and_other_keys_survive(tmp_path: Path) -> None:
    create_key(tmp_path / "api-keys.yaml", name="ci", models=["fraud"], actions=[Action.INFER])
    key, made = local_key(tmp_path)
    assert made and read_local_key(tmp_path) == key
    assert stat.S_IMODE(os.stat(tmp_path / "api-key").st_mode) == 0o600
    assert local_key(tmp_path) == (key, False)
    keys = read_keys(tmp_path / "api-keys.yaml")
    assert keys.names == ["ci", "local"]
    found = identify(f"Bearer {key}", keys)
    assert isinstance(found, ApiKey) and found.actions == frozenset(Action)
    # Revoked by hand: the next start makes a new one rather than sending a dead key.
    revoke_key(tmp_path / "api-keys.yaml", "local")
    again, made = local_key(tmp_path)
    assert made and again != key and read_keys(tmp_path / "api-keys.yaml").names == ["ci", "local"]


def test_a_bad_keys_file_is_not_overwritten_by_the_local_key(tmp_path: Path) -> None:
    (tmp_path / "api-keys.yaml").write_text("keys: nope\n")
    with pytest.raises(KeysError, match=r"api-keys\.yaml: expected one field, keys"):
        local_key(tmp_path)
    assert (tmp_path / "api-keys.yaml").read_text() == "keys: nope\n"


# --- turnout keys -------------------------------------------------------------------------------


def test_turnout_keys_prints_the_key_once_alone_and_keeps_its_hash(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from turnout.cli.main import main

    file = str(tmp_path / "keys.yaml")
    runner = CliRunner()
    made = runner.invoke(
        main,
        ["keys", "create", "ci", "--model", "fraud", "--action", "infer,feedback", "--file", file],
    )
    assert made.exit_code == 0, made.output
    key = made.stdout.strip()
    assert key.startswith("tk_") and "\n" not in key
    assert "shown only now" in made.stderr
    assert key not in Path(file).read_text()
    found = identify(f"Bearer {key}", read_keys(Path(file)))
    assert isinstance(found, ApiKey) and found.scopes() == "feedback, infer on fraud"
    listed = runner.invoke(main, ["keys", "list", "--file", file])
    assert listed.stdout == "ci\tfeedback, infer on fraud\n"
    bad = runner.invoke(
        main, ["keys", "create", "x", "--model", "m", "--action", "infer,delete", "--file", file]
    )
    assert bad.exit_code == 2 and "delete" in bad.stderr
    again = runner.invoke(main, ["keys", "create", "ci", "--model", "m", "--file", file])
    assert again.exit_code == 1 and "the name 'ci' is used twice" in again.stderr
    assert runner.invoke(main, ["keys", "revoke", "ci", "--file", file]).exit_code == 0
    assert read_keys(Path(file)) == KeySet()


def test_the_local_token_secret_is_made_once_private_and_long_enough(tmp_path: Path) -> None:
    from turnout.core.tokens import parse_secrets
    from turnout.io.api_keys import local_token_secret

    path = local_token_secret(tmp_path)
    made = path.read_text()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(parse_secrets(made, source=str(path))) == 1
    assert local_token_secret(tmp_path).read_text() == made  # kept: tokens outlive a restart
    path.write_text("")
    assert local_token_secret(tmp_path).read_text() not in ("", made)  # emptied: made afresh
