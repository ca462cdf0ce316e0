"""When to refresh and when to retry: pure functions of their inputs.

No clock reads, no randomness of their own (callers pass `rand` in [0, 1)), no I/O; every rule is
covered by a table-driven test.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from tokend.backoff import Backoff
from tokend.token import Token

DEFAULT_THRESHOLD = timedelta(minutes=10)
DEFAULT_JITTER = 0.1
DEFAULT_STARTUP_SPREAD = timedelta(seconds=10)
MIN_REFRESH_INTERVAL = timedelta(seconds=1)
"""However short-lived a token, never plan to refresh it sooner than this after obtaining it."""


@dataclass(frozen=True, slots=True)
class RefreshPolicy:
    """Refresh when `threshold` remains; at half-life for tokens living under twice that; at the
    server's `refresh_in` hint if sooner; minus up to `jitter` x lifetime so tokens obtained
    together do not all refresh in the same second."""

    threshold: timedelta = DEFAULT_THRESHOLD
    jitter: float = DEFAULT_JITTER

    def refresh_at(self, token: Token, rand: float) -> datetime:
        lifetime = token.lifetime
        if lifetime <= 2 * self.threshold:
            planned = token.obtained_at + lifetime / 2
        else:
            planned = token.expires_at - self.threshold
        if token.refresh_on is not None and token.refresh_on < planned:
            planned = token.refresh_on
        planned -= lifetime * self.jitter * rand
        return max(planned, token.obtained_at + MIN_REFRESH_INTERVAL)


MARGIN_SHARE = 0.1
MARGIN_MIN = timedelta(seconds=5)
MARGIN_MAX = timedelta(minutes=5)


def safety_margin(lifetime: timedelta) -> timedelta:
    """How long before its expiry a held token is treated as about to lapse: 10 % of its
    lifetime, at least 5 s and at most 5 minutes (MSAL treats a token as expired 5 minutes
    early; Entra ID's `exp` is whole seconds), and never more than half the lifetime."""
    margin = min(max(lifetime * MARGIN_SHARE, MARGIN_MIN), MARGIN_MAX)
    return min(margin, lifetime / 2)


def retry_at(
    *,
    now: datetime,
    attempt: int,
    backoff: Backoff,
    rand: float,
    hard: bool = False,
    retry_after: float | None = None,
    holding: Token | None = None,
) -> datetime:
    """When to try again after the `attempt`-th consecutive failure.

    `hard` failures (permanent errors, loop detection) wait the maximum backoff; a server's
    `Retry-After` is a floor. While a still-valid token is held, no try is planned later than
    its last chance, a safety margin before it expires, however long the backoff or the
    server's wish; a try at or after the last chance that fails is retried at half the time left
    (several tries in the last part of the token's life), and never after the expiry instant,
    when sinks are told. Never sooner than `backoff.min`, except to meet the last chance.
    """
    delay = backoff.longest(rand) if hard else backoff.delay(attempt, rand)
    if retry_after is not None:
        delay = max(delay, timedelta(seconds=retry_after))
    planned = now + delay
    if holding is None or now >= holding.expires_at:
        return max(planned, now + backoff.min)
    expires = holding.expires_at
    last_chance = expires - safety_margin(holding.lifetime)
    if now < last_chance:
        return min(max(planned, now + backoff.min), last_chance)
    halfway = now + max((expires - now) / 2, backoff.min)
    wished = now + timedelta(seconds=retry_after) if retry_after is not None else now
    return min(max(halfway, wished), expires)


def startup_at(start: datetime, index: int, count: int, spread: timedelta) -> datetime:
    """First acquisitions are spaced evenly over `spread`, the first one at once."""
    return start + spread * index / max(count, 1)
