"""Property tests: whatever an identity provider or an operator sends, tokend answers with a
valid result or its own clean error, never an unexpected exception."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tokend.configfile import parse_config
from tokend.durations import parse_duration
from tokend.errors import ConfigError
from tokend.oauth.errors import Peer, TokenError, classify_error_response, parse_retry_after
from tokend.oauth.response import MalformedResponse, parse_token_response
from tokend.token import Token
from tokend.yamlfile import read_yaml

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
    """Anything YAML can hold is a duration of 0 to 365 days, or a one-line error about
    durations; a plain number is that many seconds."""
    try:
        parsed = parse_duration(value)
    except ValueError as exc:
        assert "duration" in str(exc) and "\n" not in str(exc)
        return
    assert isinstance(value, int | float | str) and not isinstance(value, bool)
    assert timedelta(0) <= parsed <= timedelta(days=365)
    if not isinstance(value, str):
        assert parsed == timedelta(seconds=value)


UNITS = {"": 1, "ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


@example(365, "d", "", "")  # the longest allowed, and just past it
@example(365 * 86400 + 1, "", "", "")
@example("31536000.01", "s", "", "")
@given(
    st.integers(0, 10**8) | st.decimals(0, 10**4, places=2).map(str),
    st.sampled_from(sorted(UNITS)),
    st.sampled_from(["", " "]),
    st.sampled_from(["", " ", "\t"]),
)
def test_every_spelling_of_a_duration_means_what_it_says(
    number: int | str, unit: str, gap: str, padding: str
) -> None:
    text = f"{padding}{number}{gap}{unit}{padding}"
    seconds = float(number) * UNITS[unit]
    if seconds > 365 * 86400:
        with pytest.raises(ValueError, match="at most 365 days"):
            parse_duration(text)
    else:
        assert parse_duration(text) == timedelta(seconds=seconds)


YAMLISH = ":{}[]-,\n #&*!|>'\"?%@`abcxyz019\t"
MAPPING = "config.yaml: the config must be a mapping with identities and tokens"
POSITIONED = re.compile(r"config\.yaml:\d+:\d+: \S")
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _reads_as_a_scalar(text: str) -> bool:
    try:
        return not isinstance(read_yaml(text), dict | list)
    except yaml.YAMLError:
        return False


@settings(max_examples=300)
@given(st.text(max_size=300) | st.text(alphabet=YAMLISH, max_size=120))
@example("=:")  # YAML 1.1's value key: PyYAML reads a str key "=" (once refused as a tag)
def test_any_text_is_a_config_or_a_config_error(text: str) -> None:
    """Whatever the text, the error says the right kind of problem: PyYAML's own verdict on
    the text (an independent oracle) says which one it must be."""
    try:
        expected: Any = yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        expected = exc
    with pytest.raises(ConfigError) as caught:
        parse_config(text, label="config.yaml")  # nothing this short is a whole config
    lines = caught.value.lines
    assert lines and all("\n" not in line for line in lines)
    if isinstance(expected, yaml.YAMLError) and _reads_as_a_scalar(text):
        assert lines == [MAPPING]  # `<<` alone: PyYAML refuses a lone merge key, tokend reads it
    elif isinstance(expected, yaml.YAMLError):  # not YAML: one line, where it breaks
        assert len(lines) == 1
        assert POSITIONED.match(lines[0]) or lines[0].startswith("config.yaml: not valid YAML (")
    elif not isinstance(expected, dict):
        assert lines == [MAPPING]
    elif len(lines) == 1 and POSITIONED.match(lines[0]):
        assert "duplicate key" in lines[0]  # stricter than PyYAML, which keeps the last value
    else:  # a mapping: what is wrong with its keys, never a YAML complaint
        for key in ("identities", "tokens"):
            if key not in expected:
                assert f"config.yaml: {key}: required key is missing" in lines
        assert all(line.startswith("config.yaml: ") for line in lines)
        assert not any(POSITIONED.match(line) or line == MAPPING for line in lines)


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
