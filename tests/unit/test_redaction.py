"""The last line of defence: formatted log lines never carry secrets or token-shaped strings."""

from __future__ import annotations

import json
import logging

from tokend.logs import JsonFormatter, Redactor, TextFormatter, redactor

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
