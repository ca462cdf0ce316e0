"""Publishing to sinks: monotonic, newest-only, independent."""

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
from tokend.engine.publisher import Deliveries, Publisher
from tokend.engine.slot import SinkSlot, SlotKit
from tokend.sinks import SinkError
from tokend.token import Token


class RecordingSink:
    """A sink that remembers what it was given (the publisher's view of any sink)."""

    def __init__(self) -> None:
        self.name = "recording"
        self.received: list[Token] = []

    async def publish(self, token: Token) -> None:
        self.received.append(token)

    async def withdraw(self) -> None:
        pass

    async def close(self) -> None:
        pass


def _token(clock: FakeClock, value: str, lifetime_minutes: int) -> Token:
    now = clock.now()
    return Token(
        value=value,
        token_type="Bearer",
        expires_at=now + timedelta(minutes=lifetime_minutes),
        obtained_at=now,
    )


def test_a_sink_never_receives_a_token_expiring_sooner_than_the_one_it_holds() -> None:
    clock = FakeClock()
    sink = RecordingSink()
    slot = SinkSlot(
        "crm", sink, SlotKit(Timing(clock, VirtualScheduler(clock), random.Random(1)), Backoff())
    )
    publisher = Publisher([slot], Deliveries())
    longer, shorter, same = _token(clock, "a", 60), _token(clock, "b", 30), _token(clock, "c", 60)

    async def scenario() -> list[bool]:
        return [
            await publisher.publish(longer),
            await publisher.publish(shorter),  # e.g. a slow response from before a refresh
            await publisher.publish(same),
        ]

    assert asyncio.run(scenario()) == [True, True, True]  # every sink holds the newest-expiring
    assert [token.value for token in sink.received] == ["a"]
    assert slot.held is longer


class FlakySink(RecordingSink):
    """Refuses the first `failures` publishes (a directory not there yet, Vault sealed)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def publish(self, token: Token) -> None:
        if self.failures:
            self.failures -= 1
            raise SinkError("sink down", transient=True)
        await super().publish(token)


def test_a_failing_sink_keeps_wanting_the_newest_token_whatever_arrives_later() -> None:
    """While a sink is down, an older token offered after a newer one (a slow response from
    before a refresh) must not become the one it gets when it recovers. Guards `offer()`: the
    check in `deliver()` compares with what the sink *holds*, here nothing, so it cannot help."""
    clock = FakeClock()
    sink = FlakySink(failures=1)
    slot = SinkSlot(
        "crm", sink, SlotKit(Timing(clock, VirtualScheduler(clock), random.Random(1)), Backoff())
    )
    publisher = Publisher([slot], Deliveries())
    newer, older = _token(clock, "newer", 60), _token(clock, "older", 30)

    async def scenario() -> list[bool]:
        first = await publisher.publish(newer)  # the sink is down: nothing delivered
        slot.offer(older)
        return [first, await slot.deliver()]

    assert asyncio.run(scenario()) == [False, True]
    assert slot.wanted is newer
    assert [token.value for token in sink.received] == ["newer"]
    assert slot.held is newer


class ScriptedSink(RecordingSink):
    """Fails each publish and withdrawal with the next of `errors` (None: succeeds)."""

    def __init__(self, *errors: str | None) -> None:
        super().__init__()
        self.errors = list(errors)

    def _next(self) -> None:
        error = self.errors.pop(0)
        if error is not None:
            raise SinkError(error, transient=True)

    async def publish(self, token: Token) -> None:
        self._next()
        await super().publish(token)

    async def withdraw(self) -> None:
        self._next()


def test_a_sink_failure_is_said_at_warning_and_its_repeats_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each new failure once at WARNING, the same one again at DEBUG (it shows in status and
    metrics), each line naming the token; the same for failures to withdraw."""
    clock = FakeClock()
    sink = ScriptedSink("disk full", "disk full", "read-only", None, "denied", "denied", None)
    slot = SinkSlot(
        "crm",
        sink,
        SlotKit(
            Timing(clock, VirtualScheduler(clock), random.Random(1)),
            Backoff(),
            withdraw_on_expiry=True,
        ),
    )
    token = _token(clock, "a", 60)

    async def scenario() -> None:
        slot.offer(token)
        for _ in range(4):
            await slot.deliver()
        clock.advance(timedelta(minutes=61))
        for _ in range(3):
            await slot.expire(clock.now())

    with caplog.at_level(logging.DEBUG, "tokend.publisher"):
        asyncio.run(scenario())
    assert [
        (record.levelname, record.getMessage(), record.__dict__.get("token"))
        for record in caplog.records
    ] == [
        ("WARNING", "sink recording: disk full", "crm"),
        ("DEBUG", "sink recording: disk full", "crm"),
        ("WARNING", "sink recording: read-only", "crm"),
        ("INFO", "sink recording: recovered after 3 failed attempts", "crm"),
        ("WARNING", "sink recording: cannot withdraw: denied", "crm"),
        ("DEBUG", "sink recording: cannot withdraw: denied", "crm"),
        ("WARNING", "sink recording: expired token withdrawn", "crm"),
    ]
    assert slot.held is None


class BrokenCloseSink(RecordingSink):
    async def close(self) -> None:
        raise RuntimeError("socket already gone")


def test_a_sink_that_fails_to_close_is_logged_with_its_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    slot = SinkSlot(
        "crm",
        BrokenCloseSink(),
        SlotKit(Timing(clock, VirtualScheduler(clock), random.Random(1)), Backoff()),
    )
    with caplog.at_level(logging.DEBUG, "tokend.publisher"):
        asyncio.run(slot.close())  # does not raise: the other sinks still close
    assert [
        (record.levelname, record.getMessage(), record.__dict__.get("token"), record.exc_info[1])
        for record in caplog.records
        if record.exc_info
    ] == [("ERROR", "sink recording: error while closing", "crm", caplog.records[0].exc_info[1])]
    assert str(caplog.records[0].exc_info[1]) == "socket already gone"
