"""The one place that waits for time to pass in a running daemon: `ApsScheduler`, the production
`Scheduler` (see `tokend.clock`), on APScheduler 3.x.

The engine asks for "run this coroutine function at that time" under a key (one key per token,
one per sink retry); scheduling a key again replaces its pending run. APScheduler's
`AsyncIOScheduler` sleeps until the next due job (no polling); a `Runner` bounds how many due jobs
run at once. Tests substitute a virtual-time scheduler and run days of token lifetimes in seconds.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger

from tokend.clock import Job
from tokend.engine.scheduler import Runner


class ApsScheduler:
    """`Scheduler` on APScheduler 3.x: APScheduler decides *when*; a `Runner` bounds how many
    due jobs run at once and lets them finish at shutdown."""

    def __init__(self, concurrency: int = 32) -> None:
        self._aps = AsyncIOScheduler(timezone=UTC)
        self.runner = Runner(concurrency)
        self._due_job = self._due  # one bound method for all jobs, not one per job

    def start(self) -> None:
        self._aps.start()

    def schedule(self, key: str, at: datetime, job: Job) -> None:
        self._aps.add_job(
            self._due_job,
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
        return await self.runner.close(timeout)

    async def _due(self, job: Job) -> None:
        self.runner.submit(job)
