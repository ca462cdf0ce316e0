"""Reading what a peer sent, where only the shape is trusted: JSON, and a JWT's claims read
without verification (a lifetime hint, who signed in).

A peer may send anything: JSON nested thousands deep (which `json` answers with
`RecursionError`, not `ValueError`), a JWT whose payload is not base64 or not an object, an
`exp` beyond what a `datetime` can hold. Each reader here returns None for all of these, so no
caller has to remember which exceptions a hostile body can raise.
"""

from __future__ import annotations

import base64
import json
from typing import Any

LATEST_EPOCH = 10**11
"""Seconds since 1970 beyond any real expiry (the year 5138), and within `datetime`'s range."""


def json_or_none(raw: str | bytes) -> Any:
    """`raw` decoded as JSON, or None if it is not JSON (or not UTF-8, or nested past the stack)."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def unverified_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT, not verified, if `token` is one and its payload is a JSON object."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
    except ValueError:  # not base64, or not ASCII
        return None
    claims = json_or_none(payload)
    return claims if isinstance(claims, dict) else None


def unverified_exp(token: str) -> int | None:
    """A JWT's `exp` claim, not verified, if it is a plausible time (seconds since 1970)."""
    claims = unverified_claims(token)
    exp = claims.get("exp") if claims is not None else None
    if not isinstance(exp, int) or isinstance(exp, bool) or not 0 < exp < LATEST_EPOCH:
        return None
    return exp
