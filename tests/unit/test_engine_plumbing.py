"""The engine's plumbing, each part on its own: a closed `Runner` starts nothing and a failing
job is logged, not fatal; delivery lanes run eight at a time and `idle()` waits for all of them;
`ApsScheduler.settle()` returns once what is due has run; a state file that cannot be written is
one warning naming the token; an expiry with no error yet says so."""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support.clock import FakeClock
from tests.support.virtual import VirtualScheduler
from tokend.backoff import Backoff
from tokend.clock import Timing
from tokend.engine import ApsScheduler
from tokend.engine.outcome import log_expired
from tokend.engine.publisher import Deliveries
from tokend.engine.scheduler import Runner
from tokend.engine.slot import SinkSlot, SlotKit
from tokend.engine.state import StateStore
from tokend.token import Token


def test_a_closed_runner_starts_nothing_and_a_failing_job_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []

    async def fails() -> None:
        ran.append("fails")
        raise KeyError("surprise")

    async def works() -> None:
        ran.append("works")

    async def scenario() -> None:
        runner = Runner(1)
        runner.submit(fails)
        runner.submit(works)  # waits for the failing one, then runs
        assert await runner.idle() is True
        assert await runner.close(0) is True
        runner.submit(works)
        await asyncio.sleep(0)
        assert not runner.busy

    asyncio.run(scenario())
    assert ran == ["fails", "works"]
    (record,) = [r for r in caplog.records if r.name == "tokend.scheduler"]
    assert (record.getMessage(), record.exc_info is not None) == (
        "unexpected error in a scheduled job",
        True,
    )


class GatedSink:
    def __init__(self, gate: asyncio.Event, running: list[int]) -> None:
        self.name = "gated"
        self.gate = gate
        self.running = running

    async def publish(self, token: Token) -> None:
        self.running[0] += 1
        self.running[1] = max(self.running[1], self.running[0])
        await self.gate.wait()
        self.running[0] -= 1

    async def withdraw(self) -> None:
        pass

    async def close(self) -> None:
        pass


def test_a_delivery_lane_runs_eight_at_a_time_and_idle_waits_for_all() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        scheduler = VirtualScheduler(clock)
        gate = asyncio.Event()
        running = [0, 0]  # now, most at once
        deliveries = Deliveries()
        for index in range(10):
            slot = SinkSlot(
                f"t{index}",
                GatedSink(gate, running),
                SlotKit(Timing(clock, scheduler, random.Random(1)), Backoff()),
            )
            now = clock.now()
            slot.offer(Token("v", "Bearer", expires_at=now + timedelta(hours=1), obtained_at=now))
            deliveries.start(slot)
        for _ in range(5):
            await asyncio.sleep(0)
        assert running == [8, 8]
        idle = asyncio.create_task(deliveries.idle())
        await asyncio.sleep(0)
        assert not idle.done()
        gate.set()
        await asyncio.wait_for(idle, 5)
        assert running == [0, 8]

    asyncio.run(scenario())


def test_settle_returns_once_what_is_due_has_run() -> None:
    ran: list[str] = []

    async def job() -> None:
        await asyncio.sleep(0.01)
        ran.append("due")

    async def scenario() -> None:
        scheduler = ApsScheduler()
        scheduler.start()
        try:
            scheduler.schedule("due", datetime.now(UTC), job)
            scheduler.schedule("later", datetime.now(UTC) + timedelta(hours=1), job)
            await asyncio.wait_for(scheduler.settle(), 10)
            assert ran == ["due"]
        finally:
            await scheduler.stop(1)

    asyncio.run(scenario())


def test_a_state_file_that_cannot_be_written_is_one_warning_naming_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    store = StateStore(blocker / "state")
    now = datetime.now(UTC)
    token = Token("v", "Bearer", expires_at=now + timedelta(hours=1), obtained_at=now)
    caplog.clear()  # (the warning that state is not encrypted)
    asyncio.run(store.persist("crm", "fp", token))  # logged, not raised
    (record,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert (record.getMessage(), record.__dict__["token"]) == (
        f"could not save state in {blocker / 'state'}: Not a directory",
        "crm",
    )


def test_an_expiry_before_any_failure_says_there_was_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    log_expired("crm", Token("v", "Bearer", expires_at=at, obtained_at=at), None)
    assert caplog.records[0].getMessage() == (
        "token expired at 2026-01-01T00:00:00Z with no replacement (last error: none); consumers"
        " now hold an expired token unless their sink withdraws it"
    )
