"""The one place that waits for time to pass.

The engine asks for "run this coroutine function at that time" under a key (one key per token,
one per sink retry); scheduling a key again replaces its pending run. Production uses
APScheduler's `AsyncIOScheduler`, which sleeps until the next due job (no polling). Tests substitute
a virtual-time scheduler with the same two methods and run days of token lifetimes in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Protocol

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger

Job = Callable[[], Awaitable[None]]


class Scheduler(Protocol):
    def schedule(self, key: str, at: datetime, job: Job) -> None:
        """Run `job` at `at` (at once if `at` has passed), replacing any pending run of `key`."""
        ...

    def cancel(self, key: str) -> None:
        """Forget the pending run of `key`, if any. A run already in progress completes."""
        ...


class ApsScheduler:
    """`Scheduler` on APScheduler 3.x. Tracks running jobs so shutdown can let them finish."""

    def __init__(self) -> None:
        self._aps = AsyncIOScheduler(timezone=UTC)
        self._running: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._aps.start()

    def schedule(self, key: str, at: datetime, job: Job) -> None:
        self._aps.add_job(
            self._tracked,
            trigger=DateTrigger(run_date=at, timezone=UTC),
            args=(job,),
            id=key,
            name=key,
            replace_existing=True,
            misfire_grace_time=None,  # late is better than never: always run
            coalesce=True,
            # The engine keeps a single flight per token itself. A job that re-schedules its own
            # key must not be refused because its previous run is still finishing.
            max_instances=1_000_000,
        )

    def cancel(self, key: str) -> None:
        with contextlib.suppress(JobLookupError):
            self._aps.remove_job(key)

    async def stop(self, timeout: float) -> bool:
        """Run nothing new; wait up to `timeout` s for running jobs. False if some were cut off."""
        if self._aps.running:
            self._aps.shutdown(wait=False)
        if not self._running:
            return True
        _, pending = await asyncio.wait(set(self._running), timeout=timeout)
        for task in pending:
            task.cancel()
        return not pending

    async def _tracked(self, job: Job) -> None:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - APScheduler always runs coroutines as tasks
            await job()
            return
        self._running.add(task)
        try:
            await job()
        finally:
            self._running.discard(task)
