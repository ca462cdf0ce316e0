"""The last line of defence: formatted log lines never carry secrets or token-shaped strings."""

from __future__ import annotations

import base64
import json
import logging
import sys
from urllib.parse import quote, quote_plus

import pytest

from tokend.logs import JsonFormatter, TextFormatter
from tokend.redaction import Redactor, redactor

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


def test_configured_secrets_and_token_shapes_are_masked() -> None:
    masks = Redactor()
    masks.add_secret("CANARY-one")
    masks.add_secret("CANARY-one-longer")
    text = masks.redact(
        f"a CANARY-one-longer b CANARY-one c {JWT} d Authorization: Bearer abc.def-ghi_jkl "
        "e Basic dXNlcjpwYXNzd29yZA=="
    )
    assert text == "a *** b *** c *** d Authorization: Bearer *** e Basic ***"


def test_short_values_are_not_treated_as_secrets() -> None:
    masks = Redactor()
    masks.add_secret("abc")
    assert masks.redact("abc def") == "abc def"


def _record(message: str, *args: object, token: str | None = None) -> logging.LogRecord:
    record = logging.LogRecord("tokend", logging.INFO, __file__, 1, message, args, None)
    if token:
        record.token = token
    return record


def test_formatters_redact_and_name_the_token() -> None:
    redactor.add_secret("CANARY-formatter-secret")
    text = TextFormatter().format(
        _record("got %s and %s", "CANARY-formatter-secret", JWT, token="crm")
    )
    assert text.endswith("INFO token=crm got *** and ***")
    entry = json.loads(JsonFormatter().format(_record("got %s", JWT, token="crm")))
    assert entry["token"] == "crm"
    assert entry["message"] == "got ***"


def test_encodings_of_a_secret_are_masked() -> None:
    masks = Redactor()
    secret = "CANARY/se cret+&=1"
    masks.add_secret(secret)
    for form in (
        base64.b64encode(secret.encode()).decode(),
        base64.urlsafe_b64encode(secret.encode()).decode().rstrip("="),
        quote(secret, safe=""),
        quote_plus(secret),
    ):
        assert masks.redact(f"echo: {form} end") == "echo: *** end", form


@pytest.mark.parametrize(
    "secret",
    [
        "CANARY\udcff\udcfe-env",  # bytes that were not UTF-8 in the environment (PEP 383)
        "\ud800CANARY-lone\udfff",  # a JSON \\ud800 escape, from Vault or an IdP
        "CANARY\x00nul\x7f",
        "CANARY-\U0001f511-emoji",
    ],
)
def test_any_str_can_be_added_and_is_masked(secret: str) -> None:
    """The last line of defence never raises: a secret refused elsewhere may still reach it."""
    masks = Redactor()
    masks.add_secret(secret)
    assert masks.redact(f"a {secret} b") == "a *** b"


def test_partial_secrets_at_the_edges_are_masked() -> None:
    """An identity provider that cut its own echo short: the secret's start at the end of the
    text, or its end at the start, is masked too (six characters or more)."""
    masks = Redactor()
    masks.add_secret("CANARY-partial-9f8e")
    assert masks.redact("bad secret CANARY-par") == "bad secret ***"
    assert masks.redact("tial-9f8e was wrong") == "*** was wrong"
    assert masks.redact("bad secret CANAR") == "bad secret CANAR"  # five: an ordinary word


def test_held_tokens_are_masked_even_when_not_shaped_like_one() -> None:
    masks = Redactor()
    token = "CANARYopaqueToken0123456789"
    masks.add_token(token)
    assert masks.redact(f"echo {token}, and x{token}y") == "echo ***, and x***y"
    masks.forget_token(token)
    assert masks.redact(token) == token


def test_shown_masks_before_it_cuts() -> None:
    """A secret straddling the cut is masked whole, never printed minus its last characters."""
    masks = Redactor()
    secret = "CANARY-straddling-secret-7c1d"
    masks.add_secret(secret)
    text = "x" * 150 + secret + "y" * 50
    shown = masks.shown(text, 160)
    assert len(shown) <= 160 and "CANARY" not in shown and "straddling" not in shown
    assert masks.shown("line one\nline two", 100) == "line one\\nline two"


def test_unpadded_base64_of_a_secret_is_masked() -> None:
    masks = Redactor()
    masks.add_secret("abcde")  # base64 "YWJjZGU=": echoed without its padding too
    assert masks.redact("x YWJjZGU y YWJjZGU= z") == "x *** y *** z"


def test_the_length_limits_of_secrets_and_tokens() -> None:
    masks = Redactor()
    masks.add_secret("abc")  # too short: neither it nor its encodings ("YWJj") are masked
    assert masks.redact("abc YWJj") == "abc YWJj"
    masks.add_secret("wxyz")  # four characters: masked
    assert masks.redact("a wxyz b") == "a *** b"
    masks.add_token("T" * 11)  # a token is at least twelve characters
    masks.add_token("0123456789ab")
    assert masks.redact("TTTTTTTTTTT 0123456789ab") == "TTTTTTTTTTT ***"
    assert masks.redact("xy0123456789ab") == "xy***"  # at the very end of a run


def test_a_secret_inside_another_is_masked_with_it() -> None:
    masks = Redactor()
    masks.add_secret("zzzz-inner")
    masks.add_secret("aaaa-zzzz-inner")  # sorts before it, but is longer: masked whole
    assert masks.redact("x aaaa-zzzz-inner y") == "x *** y"


def test_forgetting_a_token_keeps_others_with_the_same_start() -> None:
    masks = Redactor()
    masks.add_token("CANARYtoken-0001")
    masks.add_token("CANARYtoken-0002")
    masks.forget_token("CANARYtoken-0001")
    assert masks.redact("CANARYtoken-0001 CANARYtoken-0002") == "CANARYtoken-0001 ***"
    masks.forget_token("CANARYtoken-0002")
    masks.forget_token("CANARYtoken-0002")  # twice: nothing to do
    assert masks.redact("CANARYtoken-0002") == "CANARYtoken-0002"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("bad secret CANARY-partial-9f8", "bad secret ***"),  # all but the last character
        ("bad secret CANARY-", "bad secret ***"),  # seven
        ("bad secret CANARY", "bad secret ***"),  # six
        ("ANARY-partial-9f8e was wrong", "*** was wrong"),
        ("l-9f8e was wrong", "*** was wrong"),  # six
        ("-9f8e was wrong", "-9f8e was wrong"),  # five: an ordinary word
    ],
)
def test_partial_secrets_at_the_edges_of_every_length(text: str, masked: str) -> None:
    masks = Redactor()
    masks.add_secret("CANARY-partial-9f8e")
    assert masks.redact(text) == masked


def test_shown_cuts_to_exactly_the_limit() -> None:
    masks = Redactor()
    assert masks.shown("x" * 20, 20) == "x" * 20
    assert masks.shown("x" * 21, 20) == "x" * 17 + "..."


@pytest.mark.parametrize(
    "token",
    [
        "CANARY-opaque-ABCDEFGH:qrstuvwxyz0123456789",  # access tokens may hold : ! * $ ...
        "CANARY!opaque*token$with^punctuation|0123",
        "M.C5_BAY.-CANARY!*$refresh-token-of-a-Microsoft-account",  # MSA refresh tokens
    ],
)
def test_held_tokens_with_punctuation_are_masked(token: str) -> None:
    """Every character a token may hold (not only base64's): the IdP echoing a token tokend
    holds shows `***`, wherever the token sits in a word."""
    masks = Redactor()
    masks.add_token(token)
    assert masks.redact(f"token {token} is not allowed here") == "token *** is not allowed here"
    assert masks.redact(f"'{token}'") == "'***'"


def test_json_lines_mask_secrets_that_json_escapes() -> None:
    """A secret with a quote, a backslash or a control character is masked in JSON logs too:
    each field is masked before encoding (which would turn `"` into `\\"`)."""
    for secret in ('CANARY"quoted-secret', "CANARY\\back-slashed", "CANARY\tcontrol-secret"):
        redactor.add_secret(secret)
        line = JsonFormatter().format(_record("library says: %s", secret, token="crm"))
        assert "CANARY" not in line, line
        assert json.loads(line)["message"] == "library says: ***"
        assert TextFormatter().format(_record("library says: %s", secret)).endswith("says: ***")


def test_json_lines_mask_exception_text() -> None:
    redactor.add_secret('CANARY"exception-secret')
    try:
        raise RuntimeError('failed with CANARY"exception-secret')
    except RuntimeError:
        record = logging.LogRecord("tokend", logging.ERROR, __file__, 1, "boom", (), sys.exc_info())
    entry = json.loads(JsonFormatter().format(record))
    assert "CANARY" not in entry["exception"] and "failed with ***" in entry["exception"]


def test_partial_secrets_at_the_edges_among_many_secrets() -> None:
    """The edges are matched against every secret, including ones added after a first use."""
    masks = Redactor()
    for number in range(50):
        masks.add_secret(f"CANARY-many-{number:02d}-secret")
    assert masks.redact("bad secret CANARY-many-37-se") == "bad secret ***"
    assert masks.redact("y-42-secret was wrong") == "*** was wrong"
    masks.add_secret("CANARY-added-later")
    assert masks.redact("bad secret CANARY-added") == "bad secret ***"
    assert masks.redact("bad secret CANARY-many-") == "bad secret ***"  # a start many share


def test_thousands_of_held_tokens_in_one_run_are_masked() -> None:
    """A hostile echo that joins held tokens with commas is one run of visible ASCII: each is
    masked, in a loop (recursion would run out of stack, inside an error's constructor)."""
    masks = Redactor()
    token = "CANARY:opaque-token-0123456789"
    masks.add_token(token)
    text = ",".join([token] * 1500)
    assert masks.redact(text) == ",".join(["***"] * 1500)
    assert masks.redact(f"x{token}y{token}") == "x***y***"
