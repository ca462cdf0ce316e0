"""One sink of one token (`SinkSlot`) on a fake clock: its counters and its retry key, what it
does when told to catch up or check while failing or stopped, and a write cancelled by `halt()`
(leadership lost) against one cancelled from outside."""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import timedelta

import pytest

from tests.support.clock import FakeClock
from tests.support.virtual import VirtualScheduler
from tokend.backoff import Backoff
from tokend.clock import Timing
from tokend.engine.slot import SinkSlot, SlotKit
from tokend.sinks import SinkError
from tokend.token import Token

BACKOFF = Backoff(min=timedelta(seconds=1), max=timedelta(seconds=8))
RETRY_KEY = "crm/sink/store"


class Store:
    """A sink that verifies: fails while `error` is set, blocks while `gate` is unset, and
    answers `verify` with `holds`."""

    verify_interval = timedelta(minutes=5)

    def __init__(self) -> None:
        self.name = "store"
        self.error: Exception | None = None
        self.gate: asyncio.Event | None = None
        self.received: list[Token] = []
        self.verified: list[Token] = []
        self.holds = True
        self.withdrawals = 0

    async def publish(self, token: Token) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        self.received.append(token)

    async def verify(self, token: Token) -> bool:
        self.verified.append(token)
        return self.holds

    async def withdraw(self) -> None:
        self.withdrawals += 1

    async def close(self) -> None:
        pass


class Observer:
    def __init__(self) -> None:
        self.tokens: list[Token] = []

    def published(self, token: Token) -> None:
        self.tokens.append(token)

    async def close(self) -> None:
        pass


def _slot(clock: FakeClock, sink: Store) -> tuple[SinkSlot, VirtualScheduler]:
    scheduler = VirtualScheduler(clock)
    slot = SinkSlot("crm", sink, SlotKit(Timing(clock, scheduler, random.Random(3)), BACKOFF))
    return slot, scheduler


def _token(clock: FakeClock, minutes: float = 60) -> Token:
    now = clock.now()
    return Token("v", "Bearer", expires_at=now + timedelta(minutes=minutes), obtained_at=now)


def test_defaults_keep_an_expired_token_wait_for_readiness_and_are_not_shared() -> None:
    clock = FakeClock()
    sink = Store()
    slot, _ = _slot(clock, sink)
    assert (slot.kit.withdraw_on_expiry, slot.required_for_ready, slot.shared) == (
        False,
        True,
        False,
    )

    async def scenario() -> None:
        slot.offer(_token(clock, 1))
        assert await slot.deliver() is True
        clock.advance(timedelta(minutes=2))
        await slot.expire(clock.now())

    asyncio.run(scenario())
    assert sink.withdrawals == 0 and slot.held is not None


def test_counts_add_up_the_observer_gets_the_token_and_a_success_cancels_the_retry() -> None:
    clock = FakeClock()
    sink = Store()
    slot, scheduler = _slot(clock, sink)
    observer = slot.observer = Observer()

    async def scenario() -> None:
        sink.error = SinkError("down", code="down", transient=True)
        for minutes in (60, 61):
            slot.offer(_token(clock, minutes))
            assert await slot.deliver() is False
        assert scheduler.due(RETRY_KEY) is not None
        sink.error = None
        first = _token(clock, 62)
        slot.offer(first)
        assert await slot.deliver() is True
        assert scheduler.due(RETRY_KEY) is None  # the planned retry is gone, not left to run
        second = _token(clock, 63)
        slot.offer(second)
        assert await slot.deliver() is True
        assert observer.tokens == [first, second]

    asyncio.run(scenario())
    assert (slot.results["error"], slot.results["success"]) == (2, 2)


def _failing_with_an_expired_token(clock: FakeClock, sink: Store, slot: SinkSlot) -> None:
    """The slot fails to write a token that has expired meanwhile: no retry is planned."""

    async def scenario() -> None:
        sink.gate = asyncio.Event()
        slot.offer(_token(clock, 1))
        delivery = asyncio.create_task(slot.deliver())
        await asyncio.sleep(0)
        clock.advance(timedelta(minutes=2))
        sink.error = SinkError("down", code="down", transient=True)
        sink.gate.set()
        assert await delivery is False
        sink.gate = None

    asyncio.run(scenario())


@pytest.mark.parametrize("cancelled_retry_before", [False, True])
def test_catching_up_does_not_write_an_expired_token_again(cancelled_retry_before: bool) -> None:
    """A failing slot whose token has expired has no retry planned: another sink's recovery
    makes it check (nothing to check while failing), not write the expired token again; also
    after an earlier retry was planned and cancelled by a success."""
    clock = FakeClock()
    sink = Store()
    slot, scheduler = _slot(clock, sink)
    if cancelled_retry_before:

        async def fail_then_succeed() -> None:
            sink.error = SinkError("down", code="down", transient=True)
            slot.offer(_token(clock, 0.5))
            assert await slot.deliver() is False
            sink.error = None
            assert await slot.deliver() is True

        asyncio.run(fail_then_succeed())
    _failing_with_an_expired_token(clock, sink, slot)
    assert slot.failures == 1 and scheduler.due(RETRY_KEY) is None
    attempts = len(sink.received)
    sink.error = None
    asyncio.run(slot.catch_up())
    assert len(sink.received) == attempts and sink.verified == []


def test_check_asks_only_a_live_healthy_slot_holding_a_valid_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    sink = Store()
    slot, _ = _slot(clock, sink)
    asyncio.run(slot.check())  # never written: nothing to ask
    assert sink.verified == []
    token = _token(clock)
    slot.offer(token)
    asyncio.run(slot.deliver())
    sink.holds = False
    sink.error = SinkError("down", code="down", transient=True)
    slot.offer(_token(clock, 61))
    asyncio.run(slot.deliver())  # failing now, still holding `token`
    asyncio.run(slot.check())
    assert sink.verified == []
    slot.stop()
    slot.failures = 0
    asyncio.run(slot.check())  # stopped: not its business any more
    assert sink.verified == []
    slot.open()
    caplog.set_level(logging.WARNING, "tokend.publisher")
    caplog.clear()
    sink.error = None
    asyncio.run(slot.check())
    assert sink.verified == [token]  # asked about the token it holds
    assert [r.getMessage() for r in caplog.records] == [
        "sink store: no longer holds tokend's token (changed or deleted by someone else); "
        "writing it again"
    ]
    assert len(sink.received) == 2


def test_an_unexpected_failure_names_its_token(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    sink = Store()
    sink.error = KeyError("surprise")
    slot, _ = _slot(clock, sink)
    slot.offer(_token(clock))
    assert asyncio.run(slot.deliver()) is False
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert (record.getMessage(), record.__dict__["token"]) == (
        "sink store: unexpected failure",
        "crm",
    )


def test_halt_abandons_the_write_in_flight_each_time_and_a_cancel_from_outside_propagates() -> None:
    clock = FakeClock()
    sink = Store()
    slot, _ = _slot(clock, sink)

    async def halted_write() -> None:
        sink.gate = asyncio.Event()
        slot.offer(_token(clock, len(sink.received) + 60))
        delivery = asyncio.create_task(slot.deliver())
        await asyncio.sleep(0)
        slot.halt()
        assert await delivery is False  # abandoned, not a CancelledError, not a success
        slot.open()

    async def scenario() -> None:
        await halted_write()
        await halted_write()  # a second halt, after open(), cancels its write too
        assert sink.received == []
        sink.gate = asyncio.Event()
        delivery = asyncio.create_task(slot.deliver())
        await asyncio.sleep(0)
        delivery.cancel()  # the process stopping, not `halt()`
        with pytest.raises(asyncio.CancelledError):
            await delivery

    asyncio.run(scenario())


def test_one_operation_at_a_time_and_an_idle_slot_keeps_no_lock() -> None:
    """A check waits for the write in flight; a waiter cancelled meanwhile leaves nothing
    behind; once nobody holds or awaits it, the lock is gone (100,000 idle slots, 8 MB)."""
    clock = FakeClock()
    sink = Store()
    slot, _ = _slot(clock, sink)

    async def scenario() -> None:
        sink.gate = asyncio.Event()
        slot.offer(_token(clock))
        writing = asyncio.create_task(slot.deliver())
        await asyncio.sleep(0)
        checking = asyncio.create_task(slot.check())
        given_up = asyncio.create_task(slot.deliver())
        await asyncio.sleep(0)
        given_up.cancel()
        await asyncio.sleep(0)
        assert (sink.received, sink.verified, slot._lock is None) == ([], [], False)
        sink.gate.set()
        assert await writing is True
        await checking
        assert given_up.cancelled()
        assert (len(sink.received), len(sink.verified)) == (1, 1)
        assert (slot._lock, slot._lock_users) == (None, 0)

    asyncio.run(scenario())
