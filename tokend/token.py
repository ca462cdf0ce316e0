"""The `Token` value object: what a grant obtains and what sinks publish. They meet only here.

A `Token` holds an access token and what is known about its lifetime, never a refresh token or a
credential: everything in it may reach a sink. Its `repr` and `str` never show the value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class Token:
    """An access token and what is known about its lifetime. `repr` never shows the value."""

    value: str = field(repr=False)
    token_type: str
    expires_at: datetime
    obtained_at: datetime
    refresh_on: datetime | None = None
    resource: str | None = None
    scopes: tuple[str, ...] = ()

    @property
    def lifetime(self) -> timedelta:
        return self.expires_at - self.obtained_at

    def remaining(self, now: datetime) -> timedelta:
        return self.expires_at - now

    def is_valid(self, now: datetime) -> bool:
        return now < self.expires_at

    def __str__(self) -> str:
        return f"{self.token_type} token expiring {self.expires_at.isoformat()}"
