"""Telling the service manager how tokend is doing: READY once every token is published (or
once started, with `systemd_ready: started`), a STATUS line that `systemctl status` shows,
RELOADING/READY around a reload, STOPPING, and watchdog pings from the event loop.

A reader of the engine's query API; a no-op when tokend does not run under systemd. Each status
line and readiness check walks every token (~0.4-0.5 s at 100,000 tokens), so the pauses
between them grow with the token count: see `pause_after`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import datetime

from tokend.clock import Clock
from tokend.engine import Engine
from tokend.engine.query import Census
from tokend.systemd import Notifier, Sleep, format_status

STARTING_CHECK = 0.5
"""Seconds between checks for readiness while starting, at least."""
STARTING_SHARE = 0.05
"""The share of the event loop those checks may take, start-up's acquisitions the rest."""
STARTING_EXTENSION = 90.0
"""Seconds, beyond the next check, by which a check that finds more tokens valid than ever
before extends systemd's start timeout (`EXTEND_TIMEOUT_USEC`): a start that keeps publishing
tokens (100,000 take minutes) is not cut off by `TimeoutStartSec=`; one that stalls still is,
this long after its last progress or at `TimeoutStartSec=`, whichever is later."""
STATUS_INTERVAL = 30.0
"""Seconds between STATUS updates once ready, at least."""
STATUS_SHARE = 0.005
"""The share of the event loop STATUS updates may take once ready (an idle tokend's CPU)."""


def pause_after(took: float, interval: float, share: float) -> float:
    """Seconds to wait after a walk that took `took` s: `interval`, or longer if the walk
    would otherwise take more than `share` of the time."""
    return max(interval, took / share)


class ServiceReporter:
    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        *,
        ready_when_started: bool = False,
        timer: Callable[[], float] = time.perf_counter,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._ready_when_started = ready_when_started
        self._timer = timer
        """Measures what the walks cost (`pause_after`)."""
        self._sleep = sleep
        self.notifier = Notifier.from_environment()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, first_round: asyncio.Future[None]) -> None:
        """Begin watchdog pings and status reports (call once the engine has started).
        `first_round` is done once the acquisitions due at start are done and delivered: the
        moment readiness is checked again, however long the pause."""
        if not self.notifier.enabled:
            return
        self._tasks = [
            asyncio.create_task(self.notifier.run_watchdog()),
            asyncio.create_task(self._report(first_round)),
        ]

    def reloading(self) -> None:
        self.notifier.reloading("reloading the config")

    def reloaded(self, accepted: bool) -> None:
        if not self.notifier.enabled:
            return  # no status line to build (a walk over every token)
        status = self.status_line()
        self.notifier.ready(status if accepted else f"reload rejected; {status}")

    async def stopping(self) -> None:
        self.notifier.stopping("stopping")
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.notifier.close()

    def status_line(self) -> str:
        now = self._clock.now()
        return _status_line(self._census(now), now)

    def _census(self, now: datetime) -> Census:
        """The census, not a view per token: at 100,000 tokens, views took ~2 s of the event
        loop and ~50 MB at their peak, after every reload and every `STATUS_INTERVAL`."""
        return self._engine.census(now, late=now)

    async def _report(self, first_round: asyncio.Future[None]) -> None:
        """READY once every token is published (or at once, with `systemd_ready: started`);
        STATUS while starting and from time to time after."""
        if not self._ready_when_started:
            await self._until_ready(first_round)
        began = self._timer()
        self.notifier.ready(self.status_line())
        while True:
            await self._sleep(pause_after(self._timer() - began, STATUS_INTERVAL, STATUS_SHARE))
            began = self._timer()
            self.notifier.status(self.status_line())

    async def _until_ready(self, first_round: asyncio.Future[None]) -> None:
        """Check readiness until every token is published, saying how far start-up has got,
        and extending systemd's start timeout whenever it has got further."""
        most_valid = 0
        while True:
            began = self._timer()
            now = self._clock.now()
            if self._engine.is_ready(now):
                return
            census = self._census(now)
            self.notifier.status(f"starting: {_status_line(census, now)}")
            pause = pause_after(self._timer() - began, STARTING_CHECK, STARTING_SHARE)
            if census.valid > most_valid:
                most_valid = census.valid
                self.notifier.extend_timeout(pause + STARTING_EXTENSION)
            await self._pause(pause, first_round)

    async def _pause(self, seconds: float, first_round: asyncio.Future[None]) -> None:
        """Sleep `seconds`, or less if the first round finishes meanwhile."""
        if first_round.done():
            await self._sleep(seconds)
            return
        sleeping = asyncio.ensure_future(self._sleep(seconds))
        try:
            await asyncio.wait({sleeping, first_round}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeping.cancel()


def _status_line(census: Census, now: datetime) -> str:
    upcoming = census.next_refresh - now if census.next_refresh is not None else None
    return format_status(census.valid, census.running, upcoming)
