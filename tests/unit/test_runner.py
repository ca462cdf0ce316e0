"""The scheduler's runner: bounded concurrency, and sinks that never hold a run slot."""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import UTC, datetime, timedelta

import pytest

from tests.support.clock import FakeClock
from tests.support.requests import client_secret_request
from tokend.backoff import Backoff
from tokend.clock import Timing
from tokend.engine import ApsScheduler, JobKit, RefreshPolicy, TokenJob
from tokend.engine.publisher import Deliveries, Publisher
from tokend.engine.scheduler import Runner
from tokend.engine.slot import SinkSlot, SlotKit
from tokend.oauth import Endpoint, TokenRequest
from tokend.token import Token


class InstantIdp:
    """An acquirer that answers at once (the identity provider is not what is tested here)."""

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock

    async def acquire(self, request: TokenRequest) -> Token:
        now = self._clock.now()
        return Token(
            value=f"v-{request.name}",
            token_type="Bearer",
            expires_at=now + timedelta(hours=1),
            obtained_at=now,
        )


class GatedSink:
    """Publishing waits until `opened` is set; `reached` tells when a publish began."""

    def __init__(self, opened: asyncio.Event | None = None) -> None:
        self.name = "gated"
        self.opened = opened
        self.reached = asyncio.Event()

    async def publish(self, token: Token) -> None:
        self.reached.set()
        if self.opened is not None:
            await self.opened.wait()

    async def withdraw(self) -> None:
        pass

    async def close(self) -> None:
        pass


class NoDurations:
    def observe(self, amount: float) -> None:
        pass


def _job(
    name: str, sink: GatedSink, scheduler: ApsScheduler, deliveries: Deliveries, clock: FakeClock
) -> TokenJob:
    slot = SinkSlot(name, sink, SlotKit(Timing(clock, scheduler, random.Random(1)), Backoff()))
    return TokenJob(
        client_secret_request(Endpoint(token_url="https://idp.example/token"), name=name),
        JobKit(
            InstantIdp(clock),
            RefreshPolicy(),
            Backoff(),
            Timing(clock, scheduler, random.Random(1)),
            NoDurations(),
        ),
        Publisher([slot], deliveries),
    )


def test_a_stuck_sink_does_not_hold_up_other_tokens() -> None:
    """With room for one run at a time, token b is refreshed and published while token a's
    sink is still stuck (Vault timing out, say)."""

    async def scenario() -> None:
        clock = FakeClock()  # in the past: both runs are due at once
        scheduler = ApsScheduler(concurrency=1)
        deliveries = Deliveries()
        release = asyncio.Event()
        stuck, healthy = GatedSink(release), GatedSink()
        scheduler.start()
        try:
            _job("a", stuck, scheduler, deliveries, clock).start(clock.now())
            _job("b", healthy, scheduler, deliveries, clock).start(clock.now())
            await asyncio.wait_for(stuck.reached.wait(), 5)
            await asyncio.wait_for(healthy.reached.wait(), 5)
            assert not release.is_set()  # a's sink is still stuck while b was published
        finally:
            release.set()
            assert await deliveries.drain(5)
            assert await scheduler.stop(5)

    asyncio.run(scenario())


def test_runner_bounds_concurrency_and_keeps_order() -> None:
    async def scenario() -> tuple[int, list[int]]:
        runner = Runner(limit=3)
        active = peak = 0
        order: list[int] = []

        async def job(index: int) -> None:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            order.append(index)
            await asyncio.sleep(0)  # yield, so others could start if the bound allowed it
            active -= 1

        def make(index: int) -> object:
            return lambda: job(index)

        await runner.run_all(make(index) for index in range(20))  # type: ignore[misc]
        return peak, order

    peak, order = asyncio.run(scenario())
    assert peak == 3
    assert order == list(range(20))


class OtherKindSink(GatedSink):
    """A different kind of sink (its own delivery lane)."""


def test_delivery_lanes_are_bounded_and_independent() -> None:
    """Twelve stuck deliveries of one kind: at most eight run at once, and another kind of sink
    is still served."""

    async def scenario() -> None:
        clock = FakeClock()
        scheduler = ApsScheduler()
        deliveries = Deliveries(per_lane=8)
        release = asyncio.Event()
        stuck = [GatedSink(release) for _ in range(12)]
        other = OtherKindSink()
        token = Token(
            value="v",
            token_type="Bearer",
            expires_at=clock.now() + timedelta(hours=1),
            obtained_at=clock.now(),
        )
        for index, sink in enumerate([*stuck, other]):
            slot = SinkSlot(
                f"t{index}", sink, SlotKit(Timing(clock, scheduler, random.Random(1)), Backoff())
            )
            Publisher([slot], deliveries).publish_in_background(token)
        await asyncio.wait_for(other.reached.wait(), 5)
        for _ in range(5):
            await asyncio.sleep(0)  # let every delivery that may start, start
        assert sum(sink.reached.is_set() for sink in stuck) == 8
        release.set()
        assert await deliveries.drain(5)
        assert all(sink.reached.is_set() for sink in stuck)

    asyncio.run(scenario())


def test_idle_waits_for_what_runs_up_to_its_timeout() -> None:
    async def scenario() -> list[bool]:
        runner = Runner(2)
        seen = [await runner.idle(0.01)]  # nothing runs: idle at once
        release = asyncio.Event()

        async def job() -> None:
            await release.wait()

        runner.submit(job)
        await asyncio.sleep(0)
        # (wait_for: a runner that ignored its timeout would hang the test)
        seen.append(await asyncio.wait_for(runner.idle(0.05), 2))  # still running after it
        asyncio.get_running_loop().call_later(0.05, release.set)
        seen.append(await asyncio.wait_for(runner.idle(0.5), 2))  # done within it
        runner.submit(job)  # released already: finishes at once
        seen.append(await runner.idle())
        return seen

    assert asyncio.run(scenario()) == [True, False, True, True]


def test_drain_gives_up_on_a_stuck_lane_after_the_timeout_and_says_so() -> None:
    """Stopping: deliveries get `timeout` s in all, not per lane; one stuck lane makes the
    answer False though the others finished."""

    async def scenario() -> bool:
        clock = FakeClock()
        deliveries = Deliveries(per_lane=8)
        stuck, other = GatedSink(asyncio.Event()), OtherKindSink()
        token = Token(
            value="v",
            token_type="Bearer",
            expires_at=clock.now() + timedelta(hours=1),
            obtained_at=clock.now(),
        )
        for index, sink in enumerate([stuck, other]):  # the stuck lane first
            slot = SinkSlot(
                f"t{index}",
                sink,
                SlotKit(Timing(clock, ApsScheduler(), random.Random(1)), Backoff()),
            )
            Publisher([slot], deliveries).publish_in_background(token)
        await asyncio.wait_for(other.reached.wait(), 5)
        # (wait_for: a drain that ignored its timeout would hang the test)
        return await asyncio.wait_for(deliveries.drain(0.1), 0.9)

    assert asyncio.run(scenario()) is False


@pytest.mark.parametrize("ticks", [0, 1, 2, 3])
def test_stopping_right_after_a_wake_up_logs_no_error(
    ticks: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A stop just as APScheduler starts its wake-up (here: a key due now, then a stop after
    `ticks` turns of the loop) must not leave it to be cancelled at the loop's close, which
    APScheduler logs as an error with a traceback: tokend's stop is clean."""

    async def scenario() -> None:
        scheduler = ApsScheduler()
        scheduler.start()

        async def job() -> None:
            return None

        scheduler.schedule("crm", datetime.now(UTC), job)
        for _ in range(ticks):
            await asyncio.sleep(0)
        assert await scheduler.stop(1)

    with caplog.at_level(logging.WARNING):
        asyncio.run(scenario())
    assert [r.getMessage() for r in caplog.records if r.name.startswith("apscheduler")] == []
