"""The last line of defence: formatted log lines never carry secrets or token-shaped strings."""

from __future__ import annotations

import base64
import json
import logging
from urllib.parse import quote, quote_plus

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
