"""Parsing token-endpoint success responses into `Token`s.

Entra ID v1 sends numbers as strings (`"expires_in": "3599"`) and adds `expires_on`; v2 sends
integers and may add `refresh_in`. Any OAuth2 server may omit `expires_in` entirely. Expiry is
counted from when the request was *sent*, which is safe against clock skew and slow responses.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from tokend.token import Token
from tokend.untrusted import LATEST_EPOCH, unverified_exp

_MAX_LIFETIME = timedelta(days=366)


class MalformedResponse(ValueError):
    """A 2xx response that is not a usable token response. The text never contains the body."""


def parse_token_response(
    body: Mapping[str, Any],
    *,
    sent_at: datetime,
    resource: str | None = None,
    scopes: tuple[str, ...] = (),
) -> Token:
    """Build a `Token` from a decoded JSON success body, or raise `MalformedResponse`."""
    value = body.get("access_token")
    if not isinstance(value, str) or not value:
        raise MalformedResponse("response has no access_token")
    if not _TOKEN_VALUE.fullmatch(value):
        raise MalformedResponse(
            "access_token has characters no token has (spaces, quotes, control characters or "
            "non-ASCII)"
        )
    token_type = body.get("token_type", "Bearer")
    if not isinstance(token_type, str) or not _TOKEN_TYPE.fullmatch(token_type):
        raise MalformedResponse("token_type is not an OAuth token type name (RFC 6749 11.1)")
    expires_at = _expiry(body, sent_at, value)
    refresh_in = _seconds(body, "refresh_in")
    refresh_on = sent_at + timedelta(seconds=refresh_in) if refresh_in else None
    granted = _printable(body, "scope")
    return Token(
        value=value,
        token_type=sys.intern(token_type),  # "Bearer", shared by every token
        expires_at=expires_at,
        obtained_at=sent_at,
        refresh_on=refresh_on if refresh_on and refresh_on < expires_at else None,
        resource=_granted_resource(body, resource),
        scopes=tuple(granted.split()) if granted else scopes,
    )


_TOKEN_VALUE = re.compile(r"[A-Za-z0-9\-._~+/=!#$%&*^`|:@,;?\[\]{}()<>]{1,16384}")
"""What an access token may hold: visible ASCII without quotes or backslashes (RFC 6750's
b64token and more: opaque tokens vary), never a space, quote or control character that could
end a header line, a shell word or an env file value."""
_TOKEN_TYPE = re.compile(r"[A-Za-z0-9._-]{1,64}")
"""RFC 6749 section 11.1: a token type name is letters, digits, `-`, `.` and `_`."""
_PRINTABLE = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")


def _granted_resource(body: Mapping[str, Any], asked: str | None) -> str | None:
    """The resource the answer names (Entra ID v1), else the one asked for; the one asked for
    when they are equal, so that 100,000 tokens do not each keep a copy of the same text."""
    granted = _printable(body, "resource")
    return asked if granted is None or granted == asked else granted


def _printable(body: Mapping[str, Any], key: str) -> str | None:
    """An optional string field, if it is printable ASCII (else ignored: the configured value
    is used instead of one that could carry control characters into a sink)."""
    raw = body.get(key)
    return raw if isinstance(raw, str) and _PRINTABLE.fullmatch(raw) else None


def _expiry(body: Mapping[str, Any], sent_at: datetime, value: str) -> datetime:
    expires_in = _seconds(body, "expires_in")
    if expires_in is not None:
        expires_at = sent_at + timedelta(seconds=expires_in)
    elif (expires_on := _seconds(body, "expires_on")) is not None:
        expires_at = datetime.fromtimestamp(expires_on, UTC)
    elif (exp := unverified_exp(value)) is not None:
        expires_at = datetime.fromtimestamp(exp, UTC)
    else:
        raise MalformedResponse(
            "response has no expires_in or expires_on, and the token is not a JWT with exp"
        )
    if expires_at <= sent_at:
        raise MalformedResponse("token is already expired on arrival")
    if expires_at - sent_at > _MAX_LIFETIME:
        raise MalformedResponse("token lifetime is implausibly long (over a year)")
    return expires_at


def _seconds(body: Mapping[str, Any], key: str) -> int | None:
    """An integer number of seconds: v2 sends ints, v1 sends strings of digits."""
    raw = body.get(key)
    if raw is None:
        return None
    if isinstance(raw, bool):
        raise MalformedResponse(f"{key} is not a number")
    if isinstance(raw, int):
        number = raw
    elif isinstance(raw, float) and raw.is_integer():
        number = int(raw)
    elif isinstance(raw, str) and raw.strip().isascii() and raw.strip().isdigit():
        number = int(raw.strip())
    else:
        raise MalformedResponse(f"{key} is not a number")
    if number <= 0:
        raise MalformedResponse(f"{key} is not positive")
    if number > LATEST_EPOCH:  # no real lifetime or expiry is near it
        raise MalformedResponse(f"{key} is out of range")
    return number
