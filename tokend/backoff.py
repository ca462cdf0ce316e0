"""`Backoff`: how long to wait after the n-th failure in a row, as a small value type.

Used wherever tokend tries again: token requests, sink deliveries, the upkeep of shared clients
(Vault logins). One rule everywhere, so that no retry loop hammers a peer un-jittered.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

DEFAULT_MIN = timedelta(seconds=1)
DEFAULT_MAX = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: `min` x 2^(attempt-1), capped at `max`, each delay
    shortened by up to a quarter at random (never below `min`). `rand` is in [0, 1): callers
    pass it in, so the arithmetic stays a pure function."""

    min: timedelta = DEFAULT_MIN
    max: timedelta = DEFAULT_MAX

    def delay(self, attempt: int, rand: float) -> timedelta:
        doublings = min(max(attempt - 1, 0), 64)  # past 64 the cap has long been reached
        seconds = self.min.total_seconds() * 2.0**doublings
        return self._jittered(min(timedelta(seconds=min(seconds, 1e9)), self.max), rand)

    def longest(self, rand: float) -> timedelta:
        return self._jittered(self.max, rand)

    def _jittered(self, base: timedelta, rand: float) -> timedelta:
        return max(base * (1 - 0.25 * rand), self.min)
