"""Time as a dependency.

Everything that decides by the time of day takes a `Clock`, and everything that waits for a time
asks a `Scheduler`, so tests run hours of token lifetimes in milliseconds and never sleep.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

Job = Callable[[], Awaitable[object]]


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


SYSTEM_CLOCK = SystemClock()


class Scheduler(Protocol):
    """Runs a coroutine function at a time, under a key (one key per token, per sink retry, per
    shared client's upkeep). Production uses APScheduler (`tokend.engine.scheduler`); tests a
    virtual-time scheduler with the same two methods."""

    def schedule(self, key: str, at: datetime, job: Job) -> None:
        """Run `job` at `at` (at once if `at` has passed), replacing any pending run of `key`."""
        ...

    def cancel(self, key: str) -> None:
        """Forget the pending run of `key`, if any. A run already in progress completes."""
        ...


@dataclass(frozen=True, slots=True)
class Timing:
    """When things happen, for every token job and sink slot of an engine: the time, what waits
    for it, and the randomness that spreads runs out (jitter, backoff). One shared object rather
    than three references in each of 100,000 jobs and slots."""

    clock: Clock
    scheduler: Scheduler
    rand: random.Random


def format_span(delta: timedelta) -> str:
    """`1h02m`, `4m05s`, `12s`: short and exact enough for a log line or a status table."""
    seconds = max(int(delta.total_seconds()), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{seconds:02d}s"
    return f"{seconds}s"
