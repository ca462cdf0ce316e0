"""tokend's running parts on virtual time: the composition root (`Assembly`) wired to a
`VirtualScheduler`, a `FakeClock` and a real HTTP client, so tests drive hours of token lifetimes
over real sockets in moments."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from tests.support.clock import FakeClock
from tests.support.virtual import VirtualScheduler
from tokend.assemble import Assembly
from tokend.config import Config
from tokend.engine import Engine, ReloadSummary, SinkSlot, TokenJob
from tokend.oauth import HttpSettings, TokenClient


class Durations:
    """A refresh-duration observer that keeps what it is told."""

    def __init__(self) -> None:
        self.observed: list[float] = []

    def observe(self, amount: float) -> None:
        self.observed.append(amount)


class Harness:
    def __init__(
        self,
        config: Config,
        clock: FakeClock | None = None,
        *,
        http: HttpSettings | None = None,
        rand: random.Random | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or FakeClock()
        self.scheduler = VirtualScheduler(self.clock)
        self.client = TokenClient(http, clock=self.clock)
        self.durations = Durations()
        self.assembly = Assembly(
            acquirer=self.client,
            scheduler=self.scheduler,
            durations=self.durations,
            clock=self.clock,
            rand=rand or random.Random(7),
        )
        self.assembly.build(config)

    @property
    def engine(self) -> Engine:
        return self.assembly.engine

    def job(self, name: str = "crm") -> TokenJob:
        return self.engine.jobs[name]

    def slot(self, sink: str, job: str = "crm") -> SinkSlot:
        return next(slot for slot in self.job(job).publisher.slots if slot.name == sink)

    async def start(self) -> None:
        await self.engine.start()

    async def refresh_all(self) -> bool:
        """`tokend once`: every token acquired and published once."""
        return await self.engine.refresh_all()

    async def reload(self, config: Config) -> ReloadSummary:
        self.config = config
        return await self.assembly.reload(config)

    async def stop(self) -> None:
        await self.assembly.stop()
        await self.client.aclose()

    async def run_for(self, span: timedelta) -> int:
        return await self.scheduler.run_until(self.clock.now() + span)


@asynccontextmanager
async def harness(
    config: Config, clock: FakeClock | None = None, **options: Any
) -> AsyncIterator[Harness]:
    """A `Harness` that is stopped however the test ends."""
    running = Harness(config, clock, **options)
    try:
        yield running
    finally:
        await running.stop()
