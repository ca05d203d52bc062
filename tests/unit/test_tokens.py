"""Assignment tokens: what a genuine one proves, and every way a bad one is refused.

turnout.core.tokens is pure, so tampering is tried exhaustively here (hypothesis);
tests/integration/test_feedback.py posts the same cases to real router processes.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.core.assign import Arm
from turnout.core.tokens import (
    DEFAULT_TTL_S,
    MIN_SECRET_LENGTH,
    Assignment,
    Feedback,
    Problem,
    Refused,
    TokenSecretError,
    admit,
    issue,
    parse_feedback,
    parse_secrets,
    verify,
)

SECRET = b"s" * 40
OTHER = b"o" * 40
NOW = 1_700_000_000
A = Assignment(
    model="fraud",
    arm=Arm.CANDIDATE,
    version="v2",
    experiment="exp-1",
    request="AAAAAAAAAAAAAAAA",
    expires=NOW + DEFAULT_TTL_S,
)


def test_a_genuine_token_says_what_was_assigned() -> None:
    token = issue(A, SECRET)
    assert verify(token, secrets=(SECRET,), now=NOW) == A
    assert len(token) < 200
    assert admit(token, secrets=(SECRET,), model="fraud", experiment="exp-1", now=NOW) == A


def test_every_secret_in_the_file_verifies_and_the_first_signs() -> None:
    """Rotation: the new secret goes first, the old one stays until its tokens expired."""
    secrets = parse_secrets(f"{'n' * 40}\n\n{'o' * 40}\n", source="f")
    assert secrets == (b"n" * 40, b"o" * 40)
    assert verify(issue(A, OTHER), secrets=secrets, now=NOW) == A
    assert verify(issue(A, secrets[0]), secrets=(b"n" * 40,), now=NOW) == A


SHORT = (
    f"line 1: a secret of 5 characters is too short to sign tokens (at least {MIN_SECRET_LENGTH})"
)


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "no secret"), ("  \n\n", "no secret"), ("short\n", SHORT), ("x" * 40 + "\nab", "line 2")],
)
def test_an_empty_or_short_secret_is_refused(text: str, message: str) -> None:
    with pytest.raises(TokenSecretError) as refused:
        parse_secrets(text, source="token-secret")
    assert str(refused.value).startswith("token-secret: ") and message in str(refused.value)


@settings(max_examples=300)
@given(data=st.data())
def test_any_change_to_a_token_is_refused(data: st.DataObject) -> None:
    token = issue(A, SECRET)
    i = data.draw(st.integers(0, len(token) - 1), label="position")
    kind = data.draw(st.sampled_from(["replace", "delete", "insert"]), label="edit")
    char = data.draw(st.characters(codec="ascii"), label="char")
    if kind == "replace":
        tampered = token[:i] + char + token[i + 1 :]
    elif kind == "delete":
        tampered = token[:i] + token[i + 1 :]
    else:
        tampered = token[:i] + char + token[i:]
    if tampered == token:
        return
    found = verify(tampered, secrets=(SECRET,), now=NOW)
    assert isinstance(found, Refused)
    assert found.problem in (Problem.FORGED, Problem.MALFORMED)


@given(
    model=st.text(min_size=1, max_size=30),
    version=st.text(min_size=1, max_size=20),
    arm=st.sampled_from(list(Arm)),
)
def test_a_token_signed_with_another_secret_is_forged(model: str, version: str, arm: Arm) -> None:
    forged = issue(Assignment(model, arm, version, "exp-1", "r" * 16, NOW + 60), OTHER)
    found = verify(forged, secrets=(SECRET,), now=NOW)
    assert isinstance(found, Refused) and found.status == 403 and found.problem is Problem.FORGED
    assert forged not in found.message


def test_a_token_expires() -> None:
    token = issue(A, SECRET)
    assert verify(token, secrets=(SECRET,), now=A.expires - 1) == A
    found = verify(token, secrets=(SECRET,), now=A.expires + 3600)
    assert isinstance(found, Refused) and (found.status, found.problem) == (410, Problem.EXPIRED)
    assert "expired 60 min ago" in found.message


@pytest.mark.parametrize(
    "token", ["", "abc", "a.b.c", ".", "a.", ".b", "é.b", "x" * 2000, "e30.AA"]
)
def test_what_is_not_a_token_is_malformed_or_forged(token: str) -> None:
    found = verify(token, secrets=(SECRET,), now=NOW)
    assert isinstance(found, Refused) and found.problem in (Problem.MALFORMED, Problem.FORGED)


def test_a_signed_payload_that_is_no_assignment_is_malformed() -> None:
    """Only reachable with the secret; checked all the same."""
    import base64
    import hashlib
    import hmac

    payload = base64.urlsafe_b64encode(b'{"m": "fraud"}').rstrip(b"=").decode()
    mac = hmac.new(SECRET, payload.encode(), hashlib.sha256).digest()
    token = payload + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    found = verify(token, secrets=(SECRET,), now=NOW)
    assert isinstance(found, Refused) and found.problem is Problem.MALFORMED


def test_a_token_for_another_model_names_both() -> None:
    found = admit(issue(A, SECRET), secrets=(SECRET,), model="digits", experiment="x", now=NOW)
    assert isinstance(found, Refused) and (found.status, found.problem) == (
        400,
        Problem.OTHER_MODEL,
    )
    assert "'fraud', not 'digits'" in found.message and "/v2/models/fraud/feedback" in found.message


@pytest.mark.parametrize(("running", "says"), [("exp-2", "another experiment"), (None, "no exp")])
def test_a_token_of_an_ended_experiment_is_refused(running: str | None, says: str) -> None:
    found = admit(issue(A, SECRET), secrets=(SECRET,), model="fraud", experiment=running, now=NOW)
    assert isinstance(found, Refused) and (found.status, found.problem) == (409, Problem.ENDED)
    assert says in found.message


@pytest.mark.parametrize(
    ("doc", "problem", "says"),
    [
        ([], Problem.BODY, "JSON object"),
        ({"key": "alice", "outcome": 1}, Problem.KEY_ONLY, "turnout-assignment header"),
        ({"outcome": 1}, Problem.MISSING, "needs 'token'"),
        ({"token": "", "outcome": 1}, Problem.MISSING, "needs 'token'"),
        ({"token": 5, "outcome": 1}, Problem.MISSING, "needs 'token'"),
        ({"token": "t"}, Problem.OUTCOME, "'outcome'"),
        ({"token": "t", "outcome": "1"}, Problem.OUTCOME, "'outcome'"),
        ({"token": "t", "outcome": True}, Problem.OUTCOME, "'outcome'"),
        ({"token": "t", "outcome": float("nan")}, Problem.OUTCOME, "finite"),
        ({"token": "t", "outcome": float("-inf")}, Problem.OUTCOME, "finite"),
        ({"token": "t", "outcome": 10**400}, Problem.OUTCOME, "finite"),
    ],
)
def test_feedback_bodies_that_are_refused(doc: object, problem: Problem, says: str) -> None:
    found = parse_feedback(doc)
    assert isinstance(found, Refused) and found.status == 400 and found.problem is problem
    assert says in found.message


def test_feedback_bodies_that_parse() -> None:
    assert parse_feedback({"token": "t", "outcome": 1}) == Feedback("t", 1.0)
    assert parse_feedback({"token": "t", "outcome": -2.5, "key": "x"}) == Feedback("t", -2.5)
