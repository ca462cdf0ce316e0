"""The engine: one `TokenJob` per configured token, started, reloaded, stopped and asked about
together.

It knows nothing of config files, sink types or credential types: the composition root
(`tokend.assemble`) hands it a `Blueprint` per token, and readers (metrics, status, the local
endpoint) see its state only through `query()`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from tokend.clock import SYSTEM_CLOCK, Clock
from tokend.engine.blueprint import Blueprint, Blueprints, EngineSettings
from tokend.engine.job import TokenJob
from tokend.engine.once import refresh_once
from tokend.engine.policy import startup_at
from tokend.engine.publisher import Deliveries
from tokend.engine.query import (
    Census,
    RetiredCounts,
    TokenView,
    is_ready,
    take_census,
    view_of,
)
from tokend.engine.scheduler import Runner
from tokend.engine.state import fingerprint
from tokend.token import Token

log = logging.getLogger("tokend.engine")


class Leadership(Protocol):
    """Decides whether this replica leads (leader election)."""

    def start(self, on_change: Callable[[bool], None]) -> None:
        """Begin; call `on_change(True)` when leadership is gained, `(False)` when lost."""
        ...


@dataclass(frozen=True, slots=True)
class LeadershipView:
    """For readers: whether this replica leads, and how often that changed."""

    leading: bool
    transitions: int


@dataclass
class ReloadSummary:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return ", ".join(
            f"{len(names)} {kind}"
            + (f" ({', '.join(names)})" if names and kind != "unchanged" else "")
            for kind, names in vars(self).items()
        )


class Engine:
    def __init__(self, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self.settings = EngineSettings()
        self.jobs: dict[str, TokenJob] = {}
        self.deliveries = Deliveries()
        """Sink deliveries in the background, shared by every job's publisher."""
        self._on_demand: set[str] = set()
        self._dormant: set[str] = set()
        """On-demand tokens nobody has asked for yet: not started, not awaited for readiness."""
        self._leadership: Leadership | None = None
        self._leading = True  # without leader election every job runs
        self._transitions = 0
        self._leader_only: set[str] = set()
        self._stopped = False
        self._launches: set[asyncio.Task[None]] = set()
        self.retired = RetiredCounts()

    def lead_with(self, leadership: Leadership) -> None:
        """Run leader-only jobs (`Blueprint.leader_only`) only while `leadership` says this
        replica leads: they start when leadership is gained and stop when it is lost, before
        any write in flight can land (`TokenJob.halt`). Other jobs run on every replica."""
        self._leadership = leadership

    def build(self, blueprints: Blueprints, settings: EngineSettings) -> None:
        """Build every job; `start()` (a daemon) or `refresh_all()` (`tokend once`) runs them."""
        self.settings = settings
        self.jobs, self._on_demand, self._leader_only = {}, set(), set()
        for name, blueprint in blueprints:
            self.jobs[name] = blueprint.build()
            self._mark(name, blueprint, self._on_demand, self._leader_only)

    @staticmethod
    def _mark(name: str, blueprint: Blueprint, on_demand: set[str], leader_only: set[str]) -> None:
        if blueprint.on_demand:
            on_demand.add(name)
        if blueprint.leader_only:
            leader_only.add(name)

    async def start(self) -> None:
        """Resume stored tokens that are still valid; plan every other token's first
        acquisition, spread over `settings.startup_spread`. With leader election, leader-only
        jobs wait until this replica leads."""
        self._leading = self._leadership is None
        await self._launch([job for job in self.jobs.values() if self._runs(job.name)], {})
        if self._leadership is not None:
            self._leadership.start(self._leadership_changed)

    def _runs(self, name: str) -> bool:
        return self._leading or name not in self._leader_only

    def _leadership_changed(self, leading: bool) -> None:
        if self._stopped or leading == self._leading:
            return
        self._leading = leading
        self._transitions += 1
        jobs = [job for name, job in self.jobs.items() if name in self._leader_only]
        mixed = [
            job
            for name, job in self.jobs.items()
            if name not in self._leader_only and any(s.shared for s in job.publisher.slots)
        ]
        more = f", and the shared sinks of {len(mixed)} more" if mixed else ""
        if not leading:
            for job in jobs:
                job.halt()
            for job in mixed:
                job.publisher.follow()
            log.warning("not leading: stopped %d tokens with only shared sinks%s", len(jobs), more)
            return
        log.info("leading: starting %d tokens with only shared sinks%s", len(jobs), more)
        now = self._clock.now()
        for job in mixed:
            job.publisher.lead(now)
        carried = {job.name: job.token for job in jobs if job.token and job.token.is_valid(now)}
        task = asyncio.get_running_loop().create_task(self._launch(jobs, carried))
        self._launches.add(task)
        task.add_done_callback(self._launches.discard)

    def leadership(self) -> LeadershipView | None:
        """None without leader election."""
        if self._leadership is None:
            return None
        return LeadershipView(self._leading, self._transitions)

    async def reload(self, blueprints: Blueprints, settings: EngineSettings) -> ReloadSummary:
        """Switch to `blueprints`. Tokens whose inputs are unchanged keep their job: state,
        token and schedule. Changed tokens get a new job, which keeps the current token if it is
        still valid for the same request. Removed tokens stop."""
        now = self._clock.now()
        old_jobs = self.jobs
        summary = ReloadSummary()
        standby = {name for name in old_jobs if not self._runs(name)}  # the leader's to retire
        jobs: dict[str, TokenJob] = {}
        carried: dict[str, Token] = {}
        on_demand: set[str] = set()
        self._leader_only = set()
        for name, blueprint in blueprints:
            self._mark(name, blueprint, on_demand, self._leader_only)
            old = old_jobs.get(name)
            if old is not None and blueprint.unchanged:
                jobs[name] = old
                summary.unchanged.append(name)
                if old.failing_permanently:
                    old.wake()  # a reload is an operator acting: try again at once
                continue
            jobs[name] = job = blueprint.build()
            (summary.changed if old else summary.added).append(name)
            if old and old.token and _same_request(old, job) and old.token.is_valid(now):
                carried[name] = old.token
        summary.removed = [name for name in old_jobs if name not in jobs]
        for name, old in old_jobs.items():
            if jobs.get(name) is old:
                continue
            old.stop()  # replaced or removed: stopped before its successor starts
            self.retired.add(old)
            if name in jobs or name in standby:
                await old.publisher.close()
            else:
                await old.publisher.retire()
        self.settings = settings
        self.jobs = jobs
        self._on_demand = on_demand
        self._dormant &= set(summary.unchanged)
        started = [name for name in summary.added + summary.changed if self._runs(name)]
        await self._launch([jobs[name] for name in started], carried)
        return summary

    async def _launch(self, jobs: list[TokenJob], carried: dict[str, Token]) -> None:
        now = self._clock.now()
        if not self._leading:
            for job in jobs:
                job.publisher.follow()  # its shared sinks are the leader's to write
        stored = await asyncio.to_thread(
            lambda: {job.name: carried.get(job.name) or job.stored_token(now) for job in jobs}
        )
        fresh_starts = [job for job in jobs if stored[job.name] is None]
        self._dormant |= {job.name for job in fresh_starts if job.name in self._on_demand}
        fresh_starts = [job for job in fresh_starts if job.name not in self._dormant]
        many = len(fresh_starts) > self.settings.spread_above
        spread = self.settings.startup_spread if many else timedelta(0)
        for index, job in enumerate(fresh_starts):
            job.start(startup_at(now, index, len(fresh_starts), spread))
        await asyncio.gather(
            *(job.resume(token) for job in jobs if (token := stored[job.name]) is not None)
        )

    async def refresh_all(self, timeout: float | None = None) -> bool:
        """Acquire and publish every token once, a bounded number at a time, retrying failures
        that may pass for up to `timeout` seconds (None: one attempt each). True if every token
        succeeded and reached every sink (on-demand tokens are left alone)."""
        results: dict[str, bool] = {}
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout

        async def refresh(job: TokenJob) -> None:
            results[job.name] = await refresh_once(job, deadline)

        # On-demand tokens wait for someone to ask: `tokend once` acquires what a start would.
        jobs = [job for name, job in self.jobs.items() if name not in self._on_demand]
        await Runner(self.settings.run_limit).run_all(
            functools.partial(refresh, job) for job in jobs
        )
        return len(results) == len(jobs) and all(results.values())

    def wind_down(self) -> None:
        """The process is stopping: runs in progress finish, nothing new is planned."""
        for job in self.jobs.values():
            job.wind_down()

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop every job; let sink deliveries in flight finish (up to `timeout` s); close the
        sinks."""
        self._stopped = True
        for job in self.jobs.values():
            job.stop()
        await self.deliveries.drain(timeout)
        for job in self.jobs.values():
            await job.publisher.close()

    def is_ready(self, now: datetime) -> bool:
        """Every token this replica runs holds a valid value and every sink has been given one.
        Stops at the first token that is not ready (while starting, that is early)."""
        return next(self._waiting_for(now), None) is None

    def unready(self, now: datetime) -> list[str]:
        """The tokens readiness waits for (`TokenView.ready` is False), without building views."""
        return list(self._waiting_for(now))

    def _waiting_for(self, now: datetime) -> Iterator[str]:
        for name, job in self.jobs.items():
            if not is_ready(job, now, dormant=name in self._dormant, standby=not self._runs(name)):
                yield name

    def query(self, now: datetime) -> Iterator[TokenView]:
        """A read-only view of every token, for metrics, status and the local endpoint."""
        for name, job in self.jobs.items():
            yield view_of(job, now, dormant=name in self._dormant, standby=not self._runs(name))

    def census(self, now: datetime, late: datetime) -> Census:
        """Figures over every token without a view per token (see `Census`); tokens whose
        planned refresh is before `late` count as needing attention."""
        jobs = (
            (job, name in self._dormant, not self._runs(name)) for name, job in self.jobs.items()
        )
        return take_census(jobs, now, late, (self.retired.refreshes, self.retired.publishes))

    def view(self, name: str, now: datetime) -> TokenView | None:
        job = self.jobs.get(name)
        if job is None:
            return None
        return view_of(job, now, dormant=name in self._dormant, standby=not self._runs(name))

    def demand(self, name: str) -> bool:
        """Someone asks for on-demand token `name`: acquire it now (once; from then on it is
        refreshed like any other). True if this call started it."""
        job = self.jobs.get(name)
        if job is None or name not in self._dormant:
            return False
        self._dormant.discard(name)
        job.wake()
        return True

    async def settled(self, name: str) -> None:
        """Wait for the acquisition of `name` in flight, if any."""
        job = self.jobs.get(name)
        if job is not None:
            await job.settled()


def _same_request(old: TokenJob, new: TokenJob) -> bool:
    return fingerprint(old.request) == fingerprint(new.request)
