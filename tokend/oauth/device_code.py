"""The device authorization grant (RFC 8628), client side: ask for a device code, then poll the
token endpoint until the user has signed in elsewhere, has declined, or the code has expired.

Polling waits `interval` seconds before each try, five more after each `slow_down` (and after
a transient failure: a timeout, a 5xx), and gives up when the code expires (`expires_in`).
Time is injected (a clock and a sleep), so tests never wait.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tokend.clock import Clock
from tokend.errors import TokendError
from tokend.oauth.errors import Peer, TokenError, classify_error_response
from tokend.oauth.http import Clients, ExchangeFailed
from tokend.oauth.response import MalformedResponse, parse_token_response
from tokend.transport import CaBundleError
from tokend.untrusted import json_or_none

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:device_code"
SLOW_DOWN_STEP = 5  # seconds added to the interval at each slow_down (RFC 8628 section 3.5)
DEFAULT_INTERVAL = 5
_USER_CODE = re.compile(r"[A-Za-z0-9-]{1,64}")
_URI = re.compile(r"https?://[\x21-\x7e]{1,2000}")

_EXPIRED = "nobody signed in before the code expired: run tokend login again"

Sleep = Callable[[float], Awaitable[None]]


class DeviceFlowError(TokendError):
    """The sign-in did not complete; the text (one line, no secret) says why and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="device_flow")


@dataclass(frozen=True, slots=True)
class DeviceCode:
    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    expires_in: int
    interval: int
    verification_uri_complete: str | None = None


async def request_device_code(
    http: Clients,
    url: str,
    client_id: str,
    scopes: tuple[str, ...],
    *,
    clock: Clock,
    ca_bundle: Path | None = None,
) -> DeviceCode:
    """Ask `url` (the device authorization endpoint) for a code. Raises `DeviceFlowError`."""
    form = {"client_id": client_id, "scope": " ".join(scopes)}
    status, body = await _post(http, url, form, ca_bundle)
    if status != 200 or not isinstance(body, Mapping):
        raise DeviceFlowError(_refusal(url, status, body, "no device code", clock))
    try:
        return DeviceCode(
            device_code=_text(body, "device_code", re.compile(r"[\x21-\x7e]{1,4096}")),
            user_code=_text(body, "user_code", _USER_CODE),
            verification_uri=_text(body, "verification_uri", _URI),
            expires_in=_seconds(body, "expires_in", longest=86_400),
            interval=max(1, _seconds(body, "interval", longest=600, default=DEFAULT_INTERVAL)),
            verification_uri_complete=_optional_uri(body.get("verification_uri_complete")),
        )
    except ValueError as exc:
        raise DeviceFlowError(f"{url}: the device code answer is unusable: {exc}") from None


async def poll_for_token(
    http: Clients,
    token_url: str,
    client_id: str,
    code: DeviceCode,
    *,
    clock: Clock,
    sleep: Sleep = asyncio.sleep,
    ca_bundle: Path | None = None,
) -> dict[str, Any]:
    """Poll until the user signs in; the token response's body. Raises `DeviceFlowError`."""
    form = {"grant_type": GRANT_TYPE, "client_id": client_id, "device_code": code.device_code}
    deadline = clock.now() + timedelta(seconds=code.expires_in)
    interval = code.interval
    while True:
        if clock.now() + timedelta(seconds=interval) >= deadline:
            raise DeviceFlowError(
                "nobody signed in before the code expired: run tokend login again"
            )
        await sleep(interval)
        sent_at = clock.now()
        try:
            status, body = await _post(http, token_url, form, ca_bundle)
        except DeviceFlowError:
            interval += SLOW_DOWN_STEP  # the network: try again, more slowly
            continue
        error = body.get("error") if isinstance(body, Mapping) else None
        if status == 200 and isinstance(body, dict):
            _check_token(token_url, body, sent_at)
            return body
        if error == "authorization_pending":
            continue
        if error == "slow_down" or status == 429 or status >= 500:
            interval += SLOW_DOWN_STEP
            continue
        if error == "expired_token":
            raise DeviceFlowError(
                "the code expired before the sign-in completed: run tokend login again"
            )
        if error in ("access_denied", "authorization_declined"):
            raise DeviceFlowError("the sign-in was declined")
        raise DeviceFlowError(_refusal(token_url, status, body, "no token", clock))


async def _post(
    http: Clients, url: str, form: dict[str, str], ca_bundle: Path | None
) -> tuple[int, Any]:
    headers = {"Accept": "application/json"}
    try:
        answer = await http.exchange("POST", url, ca_bundle=ca_bundle, data=form, headers=headers)
    except (ExchangeFailed, CaBundleError) as exc:
        raise DeviceFlowError(f"{url}: {exc}") from None
    return answer.status, json_or_none(answer.body)


def _check_token(url: str, body: dict[str, Any], sent_at: datetime) -> None:
    try:
        parse_token_response(body, sent_at=sent_at)
    except MalformedResponse as exc:
        raise DeviceFlowError(f"{url}: the token answer is unusable: {exc}") from None


def _refusal(url: str, status: int, body: Any, what: str, clock: Clock) -> str:
    """An identity provider's refusal, as one safe line (masked, cut, AADSTS codes named)."""
    host = urlsplit(url).hostname or "?"
    error: TokenError = classify_error_response(Peer("login", host), status, {}, body, clock.now())
    return f"{what}: {error}"


def _text(body: Mapping[str, Any], key: str, shape: re.Pattern[str]) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not shape.fullmatch(value):
        raise ValueError(f"{key} is missing or malformed")
    return value


def _optional_uri(value: Any) -> str | None:
    return value if isinstance(value, str) and _URI.fullmatch(value) else None


def _seconds(body: Mapping[str, Any], key: str, *, longest: int, default: int | None = None) -> int:
    value = body.get(key, default)
    if isinstance(value, str) and value.isdigit():
        value = int(value)  # Entra ID v1 style: numbers as strings
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= longest:
        raise ValueError(f"{key} is missing or not a sane number of seconds")
    return value
