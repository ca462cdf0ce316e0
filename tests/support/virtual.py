"""A `Scheduler` on virtual time: runs due jobs one after another, moving a `FakeClock` to each
job's time. Days of token lifetimes pass in moments, with no sleeping."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from datetime import datetime

from tests.support.clock import FakeClock
from tokend.engine.scheduler import Job

RUNAWAY_AT_ONE_INSTANT = 50
"""A key run this many times at one virtual instant is a loop: no real schedule does that."""
RUNAWAY_RUNS = 20_000
"""One `run_until` running this many jobs is a runaway schedule (a day of 10 tokens is ~2,000)."""


class RunawaySchedule(AssertionError):
    """The engine planned runs with no end in sight: fail now rather than spin until a timeout
    (a test of broken code must fail, not hang; mutation testing depends on it)."""


class VirtualScheduler:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self._heap: list[tuple[datetime, int, str]] = []
        self._pending: dict[str, tuple[int, datetime, Job]] = {}
        self._sequence = itertools.count()
        self.runs: list[tuple[datetime, str]] = []

    def schedule(self, key: str, at: datetime, job: Job) -> None:
        sequence = next(self._sequence)
        self._pending[key] = (sequence, at, job)
        heapq.heappush(self._heap, (at, sequence, key))

    def cancel(self, key: str) -> None:
        self._pending.pop(key, None)

    def due(self, key: str) -> datetime | None:
        entry = self._pending.get(key)
        return entry[1] if entry else None

    async def run_until(self, until: datetime) -> int:
        """Run every job due up to `until` in time order; the clock ends at `until`."""
        ran = 0
        at_this_instant: dict[str, int] = {}
        while self._heap:
            at, sequence, key = self._heap[0]
            entry = self._pending.get(key)
            if entry is None or entry[0] != sequence:
                heapq.heappop(self._heap)  # cancelled or replaced
                continue
            if at > until:
                break
            heapq.heappop(self._heap)
            del self._pending[key]
            if at > self.clock.now():
                self.clock.set(at)
                at_this_instant.clear()
            at_this_instant[key] = at_this_instant.get(key, 0) + 1
            if at_this_instant[key] > RUNAWAY_AT_ONE_INSTANT or ran >= RUNAWAY_RUNS:
                raise RunawaySchedule(f"{key}: run {ran + 1} at {self.clock.now()}")
            self.runs.append((self.clock.now(), key))
            await entry[2]()
            await _settle()
            ran += 1
        if until > self.clock.now():
            self.clock.set(until)
        return ran


async def _settle() -> None:
    """Let work a job started in the background (sink deliveries) finish before time moves on,
    as it would in the milliseconds a real clock gives it."""
    current = asyncio.current_task()
    while pending := [task for task in asyncio.all_tasks() if task is not current]:
        await asyncio.wait(pending)
