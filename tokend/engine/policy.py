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


def retry_at(
    *,
    now: datetime,
    attempt: int,
    backoff: Backoff,
    rand: float,
    hard: bool = False,
    retry_after: float | None = None,
    holding_until: datetime | None = None,
) -> datetime:
    """When to try again after the `attempt`-th consecutive failure.

    `hard` failures (permanent errors, loop detection) wait the maximum backoff. A server's
    `Retry-After` is honoured as a floor. While a still-valid token is held (`holding_until`), the
    next try is never later than one `backoff.min` before it expires (a last chance to keep
    consumers supplied without a gap), and never after it: if the last chance fails, the next
    run comes at the expiry instant, when sinks are told.
    """
    delay = backoff.longest(rand) if hard else backoff.delay(attempt, rand)
    if retry_after is not None:
        delay = max(delay, timedelta(seconds=retry_after))
    planned = now + delay
    floor = now + backoff.min  # never sooner: no hot loop against a failing server
    if holding_until is not None and now < holding_until:
        planned = min(planned, holding_until - backoff.min)
        floor = min(floor, holding_until)  # ...but never after the held token expires
    return max(planned, floor)


def startup_at(start: datetime, index: int, count: int, spread: timedelta) -> datetime:
    """First acquisitions are spaced evenly over `spread`, the first one at once."""
    return start + spread * index / max(count, 1)
