"""Publishing to sinks: monotonic, newest-only, independent."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

from tests.support.clock import FakeClock
from tests.support.virtual import VirtualScheduler
from tokend.backoff import Backoff
from tokend.engine.publisher import Deliveries, Publisher
from tokend.engine.slot import SinkSlot
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
        "crm",
        sink,
        clock=clock,
        scheduler=VirtualScheduler(clock),
        backoff=Backoff(),
        rand=random.Random(1),
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
