"""Classifying token-endpoint failures: what may be retried and how soon."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tokend.errors import MESSAGE_LIMIT, TokendError
from tokend.logs import redactor
from tokend.oauth.errors import (
    Peer,
    PermanentError,
    TokenError,
    TransientError,
    classify_error_response,
    parse_retry_after,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


PEER = Peer("crm", "login.microsoftonline.com")


def _entra(error: str, *codes: int) -> dict[str, object]:
    return {
        "error": error,
        "error_description": f"AADSTS{codes[0] if codes else 0}: something\r\nTrace ID: x",
        "error_codes": list(codes),
        "trace_id": "trace-1",
        "correlation_id": "corr-1",
    }


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (400, _entra("invalid_client", 7000215), PermanentError),  # bad secret
        (401, _entra("invalid_client", 7000222), PermanentError),  # expired secret
        (400, _entra("unauthorized_client", 700016), PermanentError),  # unknown app
        (400, _entra("invalid_grant", 50126), PermanentError),
        (400, _entra("interaction_required", 50076), PermanentError),
        (400, _entra("invalid_resource", 500011), PermanentError),
        (400, _entra("invalid_scope", 70011), PermanentError),
        (400, {"error": "invalid_request"}, PermanentError),
        (403, None, PermanentError),
        (429, {"error": "too_many_requests"}, TransientError),
        (500, None, TransientError),
        (502, None, TransientError),
        (503, _entra("temporarily_unavailable", 50001), TransientError),
        (400, {"error": "temporarily_unavailable"}, TransientError),
        (400, {"error": "slow_down"}, TransientError),
        (408, None, TransientError),
        (400, _entra("invalid_request", 50196), TransientError),  # loop detected
    ],
)
def test_classification(status: int, body: object, kind: type) -> None:
    assert isinstance(classify_error_response(PEER, status, {}, body, NOW), kind)


def test_permanent_error_carries_codes_and_ids_in_one_line() -> None:
    error = classify_error_response(PEER, 401, {}, _entra("invalid_client", 7000215), NOW)
    assert isinstance(error, PermanentError)
    assert error.error == "invalid_client"
    assert error.aadsts_codes == (7000215,)
    assert (error.trace_id, error.correlation_id) == ("trace-1", "corr-1")
    text = str(error)
    assert text.startswith("login.microsoftonline.com: HTTP 401 invalid_client (AADSTS7000215)")
    assert "trace_id=trace-1" in text
    assert "\n" not in text and "\r" not in text


def test_loop_detection_is_flagged() -> None:
    error = classify_error_response(PEER, 400, {}, _entra("invalid_request", 50196), NOW)
    assert isinstance(error, TransientError)
    assert error.back_off_hard


def test_loop_detection_keeps_the_whole_line_and_the_wait() -> None:
    headers = {"retry-after": "120"}
    body = {"error": "invalid_request", "error_codes": [50196, 90002]}
    error = classify_error_response(PEER, 400, headers, body, NOW)
    assert isinstance(error, TransientError)
    assert (error.code, error.retry_after, error.back_off_hard) == ("loop_detected", 120.0, True)
    assert str(error) == (
        "login.microsoftonline.com: HTTP 400 invalid_request (AADSTS50196, AADSTS90002)"
    )


def test_the_ids_without_a_trace_id_and_codes_that_are_not_numbers() -> None:
    body = {"error": "invalid_client", "correlation_id": "corr-9", "error_codes": [True, 7000215]}
    error = classify_error_response(PEER, 401, {}, body, NOW)
    assert isinstance(error, PermanentError)
    assert str(error) == (
        "login.microsoftonline.com: HTTP 401 invalid_client (AADSTS7000215) correlation_id=corr-9"
    )
    assert error.aadsts_codes == (7000215,) and error.code == "invalid_client/7000215"


def test_a_retry_after_date_beyond_a_day_is_capped() -> None:
    assert parse_retry_after("Tue, 03 Mar 2026 12:00:00 GMT", NOW) == 86400.0


def test_html_body_is_described_not_echoed() -> None:
    error = classify_error_response(PEER, 502, {}, None, NOW)
    assert (
        str(error)
        == "login.microsoftonline.com: HTTP 502 with a body that is not a JSON token response"
    )


def test_description_is_cut_to_one_short_line() -> None:
    body = {"error": "invalid_client", "error_description": "x" * 500 + "\nsecond line"}
    text = str(classify_error_response(PEER, 400, {}, body, NOW))
    assert "second line" not in text
    assert len(text) < 260


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("Sun, 01 Mar 2026 12:00:30 GMT", 30.0),
        ("Sun, 01 Mar 2026 11:00:00 GMT", 0.0),  # in the past: now
        ("9999999", 86400.0),  # capped at a day
        ("soon", None),
        ("", None),
        (None, None),
        ("-5", None),
    ],
)
def test_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, NOW) == seconds


def test_retry_after_is_read_from_headers() -> None:
    error = classify_error_response(PEER, 429, {"retry-after": "42"}, {}, NOW)
    assert isinstance(error, TransientError)
    assert error.retry_after == 42.0


def test_a_huge_error_field_is_cut_to_a_short_code() -> None:
    """A hostile peer's 500 KB `error` made a 500 KB log line and a 1 MB /status: the code it
    becomes (`last_error_code`) and the message are short, whatever it sends."""
    body = {"error": "invalid_grant" + "A" * 500_000, "error_codes": [7000215]}
    error = classify_error_response(PEER, 400, {}, body, NOW)
    assert error.code == "invalid_grant" + "A" * 48 + ".../7000215"  # the field cut to 64
    assert len(str(error)) < 300


ECHOED = "CANARY-echoed-secret-3f9a1c"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


def test_secrets_and_tokens_the_idp_echoes_are_masked() -> None:
    """An identity provider that echoes the client secret (or a token) in its error text must
    not carry it into the error, which `/status`, `tokend status` and the logs show."""
    redactor.add_secret(ECHOED)
    body = {
        "error": "invalid_client",
        "error_codes": [7000215],
        "error_description": f"AADSTS7000215: Invalid client secret {ECHOED} near {JWT}",
        "trace_id": f"{'t' * 50}-{ECHOED}",
    }
    error = classify_error_response(PEER, 401, {}, body, NOW)
    assert str(error) == (
        "login.microsoftonline.com: HTTP 401 invalid_client (AADSTS7000215) - "
        f"AADSTS7000215: Invalid client secret *** near *** trace_id={'t' * 50}-***"
    )


def test_a_secret_in_the_error_code_is_masked_in_the_text_and_the_code() -> None:
    redactor.add_secret(ECHOED)
    body = {"error": f"bad_{ECHOED}", "error_codes": [7000215]}
    error = classify_error_response(PEER, 400, {}, body, NOW)
    assert str(error) == "login.microsoftonline.com: HTTP 400 bad_??? (AADSTS7000215)"
    assert error.code == "bad_???/7000215"  # /status shows it as last_error_code


@pytest.mark.parametrize("at", [150, 155, 159])
def test_a_secret_cut_by_the_length_limit_is_still_masked(at: int) -> None:
    """Masking comes before cutting: a secret that straddles the cut must not leave its first
    characters behind (they would no longer match the secret once cut)."""
    redactor.add_secret(ECHOED)
    body = {"error": "invalid_client", "error_description": "x" * at + ECHOED}
    text = str(classify_error_response(PEER, 400, {}, body, NOW))
    assert ECHOED[:4] not in text
    assert f" - {'x' * 150}" in text


def test_every_error_text_is_masked_and_cut_when_it_is_made() -> None:
    """Whatever a peer put in a message (an issuer, a key id, a library's reason), the error's
    text, read by logs and `/status` alike, holds no known secret or held token, and stays one
    line of at most `MESSAGE_LIMIT` characters, the secret masked before the cut."""
    redactor.add_secret("CANARY-secret-in-a-reason")
    redactor.add_token("CANARY-held:token-0123456789")
    error = TokendError(
        "issuer 'https://idp/CANARY-secret-in-a-reason' and CANARY-held:token-0123456789\nsaid",
        code="x",
    )
    assert str(error) == error.message == "issuer 'https://idp/***' and ***\\nsaid"
    at_the_cut = "x" * (MESSAGE_LIMIT - 10) + "CANARY-secret-in-a-reason" + "y" * 10**6
    long = TokenError(PEER, at_the_cut, code="x")
    assert len(str(long)) == MESSAGE_LIMIT and "CANARY" not in str(long)
    assert "-in-a-reason" not in str(long)  # the secret's tail, either side of the cut
