"""The one place that waits for time to pass in a running daemon: `ApsScheduler`, the production
`Scheduler` (see `tokend.clock`), on APScheduler 3.x.

The engine asks for "run this coroutine function at that time" under a key (one key per token,
one per sink retry); scheduling a key again replaces its pending run. APScheduler's
`AsyncIOScheduler` sleeps until the next key is due (no polling); a `Runner` bounds how many due
jobs run at once. Tests substitute a virtual-time scheduler and run days of token lifetimes in
seconds.
"""

from __future__ import annotations

import asyncio
import heapq
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger

from tokend.clock import Job
from tokend.engine.scheduler import Runner


class _Entry:
    """One pending run, in the heap and (while it is the key's live one) in the key index. Ordered
    by due time alone: runs due at the same moment may start in any order."""

    __slots__ = ("due", "job", "key")

    def __init__(self, due: datetime, key: str, job: Job) -> None:
        self.due = due
        self.key = key
        self.job = job

    def __lt__(self, other: _Entry) -> bool:
        return self.due < other.due


class ApsScheduler:
    """`Scheduler` on APScheduler 3.x, for any number of keys.

    APScheduler decides when to wake up: it holds one job, due at the earliest time any key is
    due. The keys themselves live in a heap here: one small entry each rather than an APScheduler
    job (a job, its trigger and its bookkeeping take about a kilobyte; at 100,000 tokens that is
    100 MB and seconds of start-up). A `Runner` bounds how many due jobs run at once and lets
    them finish at shutdown.
    """

    _WAKEUP = "tokend/due"

    def __init__(self, concurrency: int = 32) -> None:
        self._aps = AsyncIOScheduler(timezone=UTC)
        self.runner = Runner(concurrency)
        self._heap: list[_Entry] = []  # stale entries too: dropped when they surface
        self._pending: dict[str, _Entry] = {}  # key -> its live entry
        self._wakeup_at: datetime | None = None
        self._woke = asyncio.Event()

    def start(self) -> None:
        self._aps.start()

    def schedule(self, key: str, at: datetime, job: Job) -> None:
        entry = _Entry(at, key, job)
        self._pending[key] = entry  # a key scheduled again: its older entry is stale
        heapq.heappush(self._heap, entry)
        if self._wakeup_at is None or at < self._wakeup_at:
            self._wake_at(at)

    def cancel(self, key: str) -> None:
        self._pending.pop(key, None)  # its heap entry is dropped when it surfaces

    def due(self, key: str) -> bool:
        return key in self._pending

    async def settle(self) -> None:
        """Return once nothing is due and nothing runs: at start, once the first round of
        acquisitions is done (`tokend run` serves its listener after that)."""
        while True:
            self._drop_stale()
            if self._heap and self._heap[0].due <= datetime.now(UTC):
                self._woke.clear()
                await self._woke.wait()
            elif self.runner.busy:
                await self.runner.idle()
            else:
                return

    async def stop(self, timeout: float) -> bool:
        """Run nothing new; wait up to `timeout` s for running jobs. False if some were cut off."""
        self._pending.clear()
        if self._aps.running:
            # Paused first: a wake-up APScheduler has already begun runs to its end (handing
            # out nothing: nothing is pending) rather than being cancelled by the shutdown,
            # which APScheduler would log as an error with a traceback.
            self._aps.pause()
            for _ in range(2):  # the call that starts the wake-up's task, then the task
                await asyncio.sleep(0)
            self._aps.shutdown(wait=False)
        return await self.runner.close(timeout)

    def _wake_at(self, at: datetime) -> None:
        self._wakeup_at = at
        self._aps.add_job(
            self._wake,
            trigger=DateTrigger(run_date=at, timezone=UTC),
            id=self._WAKEUP,
            name=self._WAKEUP,
            replace_existing=True,
            misfire_grace_time=None,  # late is better than never: always run
            coalesce=True,
            max_instances=1_000_000,  # re-planned while it runs: never refused for that
        )

    async def _wake(self) -> None:
        """Hand every due job to the runner; then sleep until the next one is due."""
        now = datetime.now(UTC)
        self._wakeup_at = None
        heap = self._heap
        pending = self._pending
        while heap and heap[0].due <= now:
            entry = heapq.heappop(heap)
            if pending.get(entry.key) is entry:
                del pending[entry.key]
                self.runner.submit(entry.job)
        self._drop_stale()
        if heap:  # nothing above planned a wake-up: the runner only creates tasks
            self._wake_at(heap[0].due)
        self._woke.set()

    def _drop_stale(self) -> None:
        """Entries of keys since scheduled again or cancelled stay until they surface; when they
        outnumber the live ones, the heap is rebuilt from the live ones alone."""
        heap, pending = self._heap, self._pending
        while heap and pending.get(heap[0].key) is not heap[0]:
            heapq.heappop(heap)
        if len(heap) > 2 * len(pending) + 1024:
            self._heap = list(pending.values())
            heapq.heapify(self._heap)
