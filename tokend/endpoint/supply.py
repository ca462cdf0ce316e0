"""The current token of a configured token, for a request: from memory at once while a valid one
is held (the identity provider is never in the way); otherwise the first acquisition (or the
refresh in flight) is awaited up to `wait`, then the request gets a 503 with `Retry-After`.

An on-demand token nobody has asked for yet is started by the first request for it.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from tokend.clock import Clock
from tokend.engine import Engine, TokenView
from tokend.token import Token

POLL = 0.02
"""Seconds between looks while a first acquisition is planned but has not started yet (the
scheduler runs it within milliseconds); once it is in flight it is awaited, not polled."""
MAX_RETRY_AFTER = 60


@dataclass(frozen=True, slots=True)
class Unavailable:
    """No valid token to serve; `retry_after` seconds is when trying again makes sense."""

    message: str
    retry_after: int

    @property
    def headers(self) -> tuple[tuple[bytes, bytes], ...]:
        return ((b"retry-after", str(self.retry_after).encode()),)


class Supply:
    def __init__(self, engine: Engine, clock: Clock, wait: timedelta) -> None:
        self.engine = engine
        self.clock = clock
        self._wait = wait.total_seconds()

    async def token(self, name: str) -> Token | Unavailable:
        view = self.engine.view(name, self.clock.now())
        if view is not None and view.valid and view.token is not None:
            return view.token  # the common case: no await, no wait
        if view is not None and view.dormant:
            self.engine.demand(name)
        return await self._await_first(name)

    async def _await_first(self, name: str) -> Token | Unavailable:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait
        while True:
            now = self.clock.now()
            view = self.engine.view(name, now)
            if view is None:  # removed by a reload while we waited
                return Unavailable("this token is no longer configured", 1)
            if view.valid and view.token is not None:
                return view.token
            remaining = deadline - loop.time()
            if remaining <= 0 or not _worth_waiting(view, now, remaining):
                return _unavailable(view, now)
            if view.refreshing:
                try:
                    await asyncio.wait_for(self.engine.settled(name), remaining)
                except TimeoutError:
                    return _unavailable(view, self.clock.now())
            else:
                await asyncio.sleep(min(POLL, remaining))


def _worth_waiting(view: TokenView, now: datetime, remaining: float) -> bool:
    """A request is in flight, or one is planned before the wait would end."""
    if view.refreshing:
        return True
    if view.next_refresh is None:
        return view.dormant is False and view.failures == 0  # just demanded: planned any moment
    return (view.next_refresh - now).total_seconds() < remaining


def _unavailable(view: TokenView, now: datetime) -> Unavailable:
    retry = 1.0
    if view.next_refresh is not None:
        retry = (view.next_refresh - now).total_seconds()
    retry_after = min(max(math.ceil(retry), 1), MAX_RETRY_AFTER)
    state = "expired" if view.token is not None else "not acquired yet"
    reason = f"; last error: {view.last_error.code}" if view.last_error else ""
    return Unavailable(f"no valid token: {state}{reason}", retry_after)
