"""Property tests: whatever an identity provider or an operator sends, tokend answers with a
valid result or its own clean error, never an unexpected exception."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tokend.configfile import parse_config
from tokend.durations import parse_duration
from tokend.errors import ConfigError
from tokend.oauth.errors import Peer, TokenError, classify_error_response, parse_retry_after
from tokend.oauth.response import MalformedResponse, parse_token_response
from tokend.token import Token

SENT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PEER = Peer("crm", "idp.example")

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
TOKEN_KEYS = [
    "access_token",
    "token_type",
    "expires_in",
    "expires_on",
    "ext_expires_in",
    "refresh_in",
    "resource",
    "scope",
    "refresh_token",
    "not_before",
]
numberish = st.integers(-10, 10**13) | st.text(alphabet="0123456789 -.e", max_size=14)
token_bodies = st.dictionaries(
    st.sampled_from(TOKEN_KEYS) | st.text(max_size=8),
    numberish | json_values,
    max_size=8,
)


@settings(max_examples=400)
@given(token_bodies)
def test_token_responses_parse_or_fail_cleanly(body: dict[str, Any]) -> None:
    try:
        token = parse_token_response(body, sent_at=SENT)
    except MalformedResponse as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(token, Token)
    assert token.expires_at > token.obtained_at
    assert token.refresh_on is None or token.refresh_on < token.expires_at


@settings(max_examples=300)
@given(
    st.integers(100, 599),
    st.none()
    | json_values
    | st.dictionaries(
        st.sampled_from(["error", "error_codes", "error_description", "trace_id"]), json_values
    ),
    st.dictionaries(
        st.sampled_from(["retry-after", "content-type"]), st.text(max_size=40), max_size=2
    ),
)
def test_error_responses_classify_cleanly(status: int, body: Any, headers: dict[str, str]) -> None:
    error = classify_error_response(PEER, status, headers, body, SENT)
    assert isinstance(error, TokenError)
    assert "\n" not in str(error) and "\r" not in str(error)
    assert error.code


@given(st.text(max_size=40))
def test_retry_after_never_raises(value: str) -> None:
    seconds = parse_retry_after(value, SENT)
    assert seconds is None or 0 <= seconds <= 86400


@given(json_values)
def test_durations_parse_or_fail_cleanly(value: Any) -> None:
    with contextlib.suppress(ValueError):
        parse_duration(value)


@settings(max_examples=300)
@given(st.text(max_size=300))
def test_any_text_is_a_config_or_a_config_error(text: str) -> None:
    try:
        parse_config(text, label="config.yaml")
    except ConfigError as exc:
        assert exc.lines
        assert all(line.startswith("config.yaml") and "\n" not in line for line in exc.lines)


CONFIG_KEYS = [
    "identities",
    "tokens",
    "defaults",
    "http",
    "log",
    "listen",
    "state_dir",
    "tenant",
    "client_id",
    "credential",
    "type",
    "secret",
    "identity",
    "resource",
    "scopes",
    "sinks",
    "path",
    "format",
    "mode",
    "env",
    "file",
    "refresh_threshold",
    "backoff",
    "min",
    "max",
]
config_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5000)
    | st.sampled_from([*CONFIG_KEYS, "file", "1h", "0600", "x"]),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(CONFIG_KEYS) | st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=400)
@given(st.dictionaries(st.sampled_from(CONFIG_KEYS), config_values, max_size=6))
def test_any_structure_is_a_config_or_a_config_error(document: dict[str, Any]) -> None:
    try:
        parse_config(yaml.safe_dump(document), label="config.yaml")
    except ConfigError as exc:
        assert exc.lines
        assert all("\n" not in line for line in exc.lines)
