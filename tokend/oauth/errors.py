"""Why a token request failed, and whether trying again can help.

Every failure is one of two kinds. `TransientError`: the identity provider or the network is
having a bad moment (timeouts, 429, 5xx, HTML from a proxy, malformed bodies); retry with backoff.
`PermanentError`: an operator must act (bad or expired secret, unknown app, missing consent,
bad resource); retrying at the maximum backoff is only for noticing the fix.

Microsoft asks clients to branch on `error`, the HTTP status and the AADSTS code list, never on
`error_description`; so does this table. Exception text never contains a secret or a token.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from tokend.errors import TokendError
from tokend.redaction import redactor

LOOP_DETECTED = 50196  # AADSTS50196: the same request too often; back off hard

_TRANSIENT_ERRORS = frozenset({"temporarily_unavailable", "server_error", "slow_down"})
_DESCRIPTION_LIMIT = 160
_ID_LIMIT = 64
_ERROR_LIMIT = 64
_NOT_CODE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True, slots=True)
class Peer:
    """What a failure concerns: the token's name and the host that answered."""

    token: str
    host: str


class TokenError(TokendError):
    """A token could not be acquired. `str()` is a one-line, secret-free explanation naming the
    host; `code` is a short stable name for the kind of failure (`http_429`, `timeout`,
    `invalid_client/7000215`): equal codes mean "the same problem again", whatever the
    per-request details (trace ids, timestamps) in the text."""

    def __init__(self, peer: Peer, reason: str, *, code: str) -> None:
        super().__init__(f"{peer.host}: {reason}", code=code)
        self.peer = peer


class TransientError(TokenError):
    """Try again later; `retry_after` (seconds) is the server's wish, if it stated one;
    `back_off_hard` when it asked for a long pause (loop detection)."""

    transient = True

    def __init__(
        self,
        peer: Peer,
        reason: str,
        *,
        code: str,
        retry_after: float | None = None,
        back_off_hard: bool = False,
    ) -> None:
        super().__init__(peer, reason, code=code)
        self.retry_after = retry_after
        self.back_off_hard = back_off_hard


class PermanentError(TokenError):
    """Retrying the same request cannot succeed until an operator changes something."""

    def __init__(
        self,
        peer: Peer,
        reason: str,
        *,
        code: str,
        error: str | None = None,
        aadsts_codes: tuple[int, ...] = (),
        trace_id: str | None = None,
        correlation_id: str | None = None,
    ) -> None:
        super().__init__(peer, reason, code=code)
        self.error = error
        self.aadsts_codes = aadsts_codes
        self.trace_id = trace_id
        self.correlation_id = correlation_id


def classify_error_response(
    peer: Peer,
    status: int,
    headers: Mapping[str, str],
    body: Any,
    now: datetime,
    *,
    transient_statuses: Collection[int] = (),
) -> TokenError:
    """Turn a non-2xx token-endpoint response (body already JSON-decoded, or None) into an error.
    `transient_statuses`: what this endpoint says "not yet" with besides 408, 429 and 5xx."""
    fields = body if isinstance(body, Mapping) else {}
    error = _error_name(fields.get("error"))
    codes = _aadsts_codes(fields.get("error_codes"))
    reason = _describe(status, error, codes, fields, has_json=isinstance(body, Mapping))
    retry_after = parse_retry_after(headers.get("retry-after"), now)
    code = (error or f"http_{status}") + (f"/{codes[0]}" if codes else "")
    if LOOP_DETECTED in codes:
        return TransientError(
            peer, reason, code="loop_detected", retry_after=retry_after, back_off_hard=True
        )
    if status in (408, 429, *transient_statuses) or status >= 500 or error in _TRANSIENT_ERRORS:
        code = error if error in _TRANSIENT_ERRORS else f"http_{status}"
        return TransientError(peer, reason, code=code, retry_after=retry_after)
    return PermanentError(
        peer,
        reason,
        code=code,
        error=error,
        aadsts_codes=codes,
        trace_id=_shown(fields.get("trace_id"), _ID_LIMIT),
        correlation_id=_shown(fields.get("correlation_id"), _ID_LIMIT),
    )


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(min(int(value), 86_400))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    seconds = (when - now) / timedelta(seconds=1)
    return min(max(seconds, 0.0), 86_400.0)


def _describe(
    status: int,
    error: str | None,
    codes: tuple[int, ...],
    fields: Mapping[str, Any],
    *,
    has_json: bool,
) -> str:
    if not has_json:
        return f"HTTP {status} with a body that is not a JSON token response"
    parts = [f"HTTP {status}", error or "no error code"]
    if codes:
        parts.append("(" + ", ".join(f"AADSTS{code}" for code in codes) + ")")
    description = _shown(_first_line(fields.get("error_description")), _DESCRIPTION_LIMIT)
    if description:
        parts.append(f"- {description}")
    for key in ("trace_id", "correlation_id"):
        if value := _shown(fields.get(key), _ID_LIMIT):
            parts.append(f"{key}={value}")
    return " ".join(parts)


def _shown(raw: Any, limit: int) -> str | None:
    """An IdP-supplied string as it may be shown: masked first, then cut (never the other way
    round: a secret straddling the cut would be printed minus its last characters)."""
    return redactor.shown(raw, limit) if isinstance(raw, str) and raw else None


def _first_line(raw: Any) -> Any:
    if not isinstance(raw, str) or not raw.strip():
        return None
    return raw.strip().splitlines()[0]


def _error_name(raw: Any) -> str | None:
    """The `error` field as a short stable code: masked, cut, and kept to the characters of
    an OAuth error name (it ends up in `last_error_code`)."""
    shown = _shown(raw, _ERROR_LIMIT)
    return _NOT_CODE.sub("?", shown) if shown else None


def _aadsts_codes(raw: Any) -> tuple[int, ...]:
    if not isinstance(raw, list):
        return ()
    return tuple(code for code in raw if isinstance(code, int) and not isinstance(code, bool))
