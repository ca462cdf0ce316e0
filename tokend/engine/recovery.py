"""Getting back quickly when what failed heals, without a request storm meanwhile.

- **Outages** (`Outages`): a token that holds no valid token and fails transiently stops
  retrying on its own schedule and waits at its endpoint. One probe per endpoint (one request, on
  behalf of the token that has waited longest) runs at least every `PROBE_INTERVAL`, jittered;
  the first success wakes every token waiting there at once, the scheduler's runner and the
  client's cap on concurrent requests bounding how many go together. Tokens that still hold a
  valid token are not waiting: they keep their own backoff, planned around their expiry.
- **Causes** (`Causes`): a permanent failure needs an operator, so it is retried only at the
  maximum backoff; but while a token fails permanently, what its grant is built from (the
  secret's content) is looked at every `WATCH_INTERVAL`, and when that changes, every such token
  of that grant runs at once. A reload (SIGHUP) retries them all at once too (`Engine.reload`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Protocol

from tokend.backoff import Backoff
from tokend.clock import Timing
from tokend.errors import TokendError

PROBE_INTERVAL = timedelta(seconds=10)
WATCH_INTERVAL = timedelta(seconds=10)


class Waiter(Protocol):
    """What recovery needs of a token's job."""

    @property
    def name(self) -> str: ...

    def wake(self) -> None:
        """Run at once (on the scheduler), as if its planned time had come."""
        ...

    async def probe(self) -> bool:
        """Run now, for its endpoint; True if it obtained a token."""
        ...


class Outages:
    def __init__(self, timing: Timing) -> None:
        self._timing = timing
        self._waiting: dict[str, dict[str, Waiter]] = {}  # endpoint -> waiting jobs, oldest first
        self._planned: dict[str, datetime] = {}

    def wait(self, job: Waiter, endpoint: str, error: TokendError, backoff: Backoff) -> datetime:
        """`job` failed transiently holding no valid token: it waits for `endpoint` to recover.
        Returns when the endpoint is probed next."""
        self._waiting.setdefault(endpoint, {}).setdefault(job.name, job)
        planned = self._planned.get(endpoint)
        if planned is None:
            planned = self._planned[endpoint] = self._probe_time(error, backoff)
            self._timing.scheduler.schedule(_key(endpoint), planned, lambda: self._probe(endpoint))
        return planned

    def forget(self, job: Waiter, endpoint: str) -> None:
        """`job` stopped waiting (it succeeded, or it was stopped)."""
        waiting = self._waiting.get(endpoint)
        if waiting is not None and waiting.get(job.name) is job:
            del waiting[job.name]
        if not waiting and endpoint in self._planned:
            self._waiting.pop(endpoint, None)
            del self._planned[endpoint]
            self._timing.scheduler.cancel(_key(endpoint))

    def waiting(self, endpoint: str) -> int:
        return len(self._waiting.get(endpoint, ()))

    def _probe_time(self, error: TokendError, backoff: Backoff) -> datetime:
        now = self._timing.clock.now()
        if error.back_off_hard:  # the peer asked for a long pause (loop detection)
            return now + backoff.longest(self._timing.rand.random())
        delay = PROBE_INTERVAL * (1 - 0.25 * self._timing.rand.random())
        if error.retry_after is not None:
            delay = max(delay, timedelta(seconds=error.retry_after))
        return now + delay

    async def _probe(self, endpoint: str) -> None:
        self._planned.pop(endpoint, None)
        waiting = self._waiting.get(endpoint)
        if not waiting:
            return
        name = next(iter(waiting))
        job = waiting.pop(name)
        if await job.probe():  # (a failed probe waits again, which plans the next probe)
            for other in list(waiting.values()):
                self.forget(other, endpoint)
                other.wake()
        if not waiting and endpoint not in self._planned:
            self._waiting.pop(endpoint, None)


def _key(endpoint: str) -> str:
    return f"probe/{endpoint}"


SourceVersion = Callable[[], Awaitable[str]]
"""What a grant is built from, as a short digest (a secret's content hash)."""


class Causes:
    def __init__(self, timing: Timing) -> None:
        self._timing = timing
        # by id() of the source (a grant; tokens of one identity share it), which stays alive as
        # long as a job that uses it is watched
        self._watched: dict[int, tuple[SourceVersion, str, dict[str, Waiter]]] = {}

    async def watch(self, job: Waiter, source: object, version: SourceVersion) -> None:
        """`job` failed permanently: wake it when `source` (its grant) reads differently."""
        key = id(source)
        entry = self._watched.get(key)
        if entry is None:
            entry = self._watched[key] = (version, await version(), {})
            self._plan(key)
        entry[2][job.name] = job

    def forget(self, job: Waiter, source: object) -> None:
        key = id(source)
        entry = self._watched.get(key)
        if entry is None or entry[2].get(job.name) is not job:
            return
        del entry[2][job.name]
        if not entry[2]:
            del self._watched[key]
            self._timing.scheduler.cancel(_watch_key(key))

    def _plan(self, key: int) -> None:
        at = self._timing.clock.now() + WATCH_INTERVAL * (1 - 0.25 * self._timing.rand.random())
        self._timing.scheduler.schedule(_watch_key(key), at, lambda: self._look(key))

    async def _look(self, key: int) -> None:
        entry = self._watched.get(key)
        if entry is None:
            return
        version, seen, jobs = entry
        if await version() == seen:
            self._plan(key)
            return
        del self._watched[key]  # the jobs run now; a new permanent failure watches again
        for job in list(jobs.values()):
            job.wake()


def _watch_key(key: int) -> str:
    return f"cause/{key:x}"


class Recovery:
    """Both mechanisms, shared by every job of a process."""

    def __init__(self, timing: Timing) -> None:
        self.outages = Outages(timing)
        self.causes = Causes(timing)
