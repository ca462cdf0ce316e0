"""Token response parsing: Entra ID v1 (strings), v2 (integers), expires_on, refresh_in, JWT exp."""

from __future__ import annotations

import base64
import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest

from tokend.oauth.response import MalformedResponse, parse_token_response
from tokend.token import Token

SENT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _jwt(claims: dict[str, object]) -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part(claims)}.sig"


@pytest.mark.parametrize(
    ("body", "expires_at", "refresh_on"),
    [
        pytest.param(  # v1: numbers as strings, expires_in wins over expires_on
            {
                "access_token": "a",
                "token_type": "Bearer",
                "expires_in": "3599",
                "expires_on": str(int(SENT.timestamp()) + 99999),
                "resource": "https://r",
            },
            SENT + timedelta(seconds=3599),
            None,
            id="v1-strings",
        ),
        pytest.param(  # v2: integers
            {
                "access_token": "a",
                "token_type": "Bearer",
                "expires_in": 3599,
                "ext_expires_in": 3599,
            },
            SENT + timedelta(seconds=3599),
            None,
            id="v2-ints",
        ),
        pytest.param(
            {"access_token": "a", "expires_in": 86399, "refresh_in": 43199},
            SENT + timedelta(seconds=86399),
            SENT + timedelta(seconds=43199),
            id="v2-refresh_in",
        ),
        pytest.param(
            {"access_token": "a", "expires_in": "7200", "refresh_in": "3600"},
            SENT + timedelta(hours=2),
            SENT + timedelta(hours=1),
            id="refresh_in-string",
        ),
        pytest.param(
            {"access_token": "a", "expires_on": str(int(SENT.timestamp()) + 600)},
            SENT + timedelta(seconds=600),
            None,
            id="expires_on-only",
        ),
        pytest.param(
            {"access_token": _jwt({"exp": int(SENT.timestamp()) + 300})},
            SENT + timedelta(seconds=300),
            None,
            id="jwt-exp-fallback",
        ),
        pytest.param(  # a refresh hint past expiry is meaningless: ignored
            {"access_token": "a", "expires_in": 60, "refresh_in": 120},
            SENT + timedelta(seconds=60),
            None,
            id="refresh_in-after-expiry",
        ),
    ],
)
def test_lifetime_fields(body: dict[str, object], expires_at: datetime, refresh_on: object) -> None:
    token = parse_token_response(body, sent_at=SENT)
    assert token.expires_at == expires_at
    assert token.refresh_on == refresh_on
    assert token.obtained_at == SENT


def test_target_and_type_come_from_response_else_request() -> None:
    v1 = parse_token_response(
        {"access_token": "a", "expires_in": "60", "resource": "https://crm"}, sent_at=SENT
    )
    assert (v1.resource, v1.token_type) == ("https://crm", "Bearer")
    v2 = parse_token_response(
        {"access_token": "a", "expires_in": 60, "token_type": "bearer"},
        sent_at=SENT,
        scopes=("https://graph.microsoft.com/.default",),
    )
    assert v2.scopes == ("https://graph.microsoft.com/.default",)
    assert v2.token_type == "bearer"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "no access_token"),
        ({"access_token": ""}, "no access_token"),
        ({"access_token": 5, "expires_in": 5}, "no access_token"),
        ({"access_token": "opaque"}, "no expires_in or expires_on"),
        ({"access_token": "a", "expires_in": "soon"}, "expires_in is not a number"),
        ({"access_token": "a", "expires_in": True}, "expires_in is not a number"),
        ({"access_token": "a", "expires_in": -5}, "expires_in is not positive"),
        ({"access_token": "a", "expires_in": 0}, "expires_in is not positive"),
        ({"access_token": "a", "expires_in": 10**13}, "out of range"),
        ({"access_token": "a", "expires_in": 400 * 86400}, "implausibly long"),
        ({"access_token": "a", "expires_on": "1000"}, "already expired"),
        ({"access_token": "a", "expires_in": 60, "token_type": 7}, "token_type"),
        # Values that would inject into an env file, a shell or a header are refused outright.
        (
            {"access_token": "a", "expires_in": 60, "token_type": "Bearer$(touch pwned)"},
            "token_type is not",
        ),
        (
            {"access_token": "a", "expires_in": 60, "token_type": "Bearer\nEVIL=1"},
            "token_type is not",
        ),
        ({"access_token": "a b", "expires_in": 60}, "access_token has characters"),
        ({"access_token": "a\r\nX-Evil: 1", "expires_in": 60}, "access_token has characters"),
        ({"access_token": "a'b", "expires_in": 60}, "access_token has characters"),
        ({"access_token": "t\u00e9", "expires_in": 60}, "access_token has characters"),
        # A JWT's exp is the lifetime only when it is a plausible time; otherwise there is none.
        ({"access_token": _jwt({"exp": 10**20})}, "no expires_in or expires_on"),
        ({"access_token": _jwt({"exp": 10**12})}, "no expires_in or expires_on"),
        ({"access_token": _jwt({"exp": 1.5e9})}, "no expires_in or expires_on"),
        ({"access_token": f"{_jwt({})[:-4]}{'W' * 6000}.sig"}, "no expires_in or expires_on"),
        (  # a payload nested past the interpreter's stack
            {"access_token": "e30." + base64.urlsafe_b64encode(b"[" * 12000).decode() + ".sig"},
            "no expires_in or expires_on",
        ),
    ],
)
def test_malformed_responses(body: dict[str, object], message: str) -> None:
    with pytest.raises(MalformedResponse, match=message):
        parse_token_response(body, sent_at=SENT)


def test_repr_and_str_never_show_the_value() -> None:
    token = Token(
        value="CANARY-access-token",
        token_type="Bearer",
        expires_at=SENT + timedelta(hours=1),
        obtained_at=SENT,
    )
    for text in (repr(token), str(token), f"{token}", repr([token])):
        assert "CANARY" not in text
    assert "2026-03-01T13:00:00" in str(token)


def test_idp_strings_with_control_characters_are_ignored() -> None:
    """`resource` and `scope` from the response reach JSON and Vault sinks: one with control
    characters is ignored for the configured value."""
    body = {"access_token": "t", "expires_in": 60, "resource": "r\nEVIL", "scope": "a\tb"}
    token = parse_token_response(body, sent_at=SENT, resource="https://crm", scopes=("s",))
    assert (token.resource, token.scopes) == ("https://crm", ("s",))


def test_a_refresh_token_in_the_response_never_enters_the_token() -> None:
    """Everything in a `Token` may reach a sink: a refresh token must not be among it."""
    body = {"access_token": "a.b.c", "expires_in": 60, "refresh_token": "CANARY-refresh"}
    token = parse_token_response(body, sent_at=SENT)
    assert "CANARY" not in repr(dataclasses.astuple(token))


def test_a_resource_the_answer_repeats_is_the_one_asked_for_not_a_copy() -> None:
    """100,000 Entra ID v1 tokens would each keep their own copy of the same text."""
    asked = "".join(["https://", "crm.example"])  # built at run time: not a shared constant
    body = {"access_token": "a", "expires_in": "60", "resource": "https://crm.example"}
    assert parse_token_response(body, sent_at=SENT, resource=asked).resource is asked
    other = parse_token_response(
        {**body, "resource": "https://other"}, sent_at=SENT, resource=asked
    )
    assert other.resource == "https://other"
