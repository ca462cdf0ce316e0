"""When the verifier asks a sink whether it still holds tokend's token, to the microsecond: the
first check at a random point of the first interval, later ones at 0.75-1.25 intervals, a check
due at a tick's instant made at that instant, no timer for an interval of zero, and a forgotten
sink's stale entry not holding up the others due with it."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta

from tests.support.clock import FakeClock
from tests.support.virtual import VirtualScheduler
from tokend.backoff import Backoff
from tokend.clock import Timing
from tokend.engine.publisher import Deliveries
from tokend.engine.slot import SinkSlot, SlotKit
from tokend.engine.verifier import GRANULARITY, Verifier
from tokend.token import Token

SEED = 11


class Store:
    def __init__(self, clock: FakeClock, name: str, interval: timedelta) -> None:
        self.clock = clock
        self.name = name
        self.verify_interval = interval
        self.asked: list[datetime] = []

    async def publish(self, token: Token) -> None:
        pass

    async def verify(self, token: Token) -> bool:
        self.asked.append(self.clock.now())
        return True

    async def withdraw(self) -> None:
        pass

    async def close(self) -> None:
        pass


class World:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.scheduler = VirtualScheduler(self.clock)
        self.verifier = Verifier(
            Timing(self.clock, self.scheduler, random.Random(SEED)), Deliveries()
        )

    def slot(self, name: str, interval: timedelta) -> tuple[SinkSlot, Store]:
        store = Store(self.clock, name, interval)
        slot = SinkSlot(
            "crm",
            store,
            SlotKit(
                Timing(self.clock, self.scheduler, random.Random(1)),
                Backoff(),
                verifier=self.verifier,
            ),
        )
        now = self.clock.now()
        slot.offer(Token("v", "Bearer", expires_at=now + timedelta(days=1), obtained_at=now))
        asyncio.run(slot.deliver())
        return slot, store

    def run_for(self, span: timedelta) -> None:
        asyncio.run(self.scheduler.run_until(self.clock.now() + span))


def test_the_first_check_comes_within_the_first_interval_then_every_interval_or_so() -> None:
    world = World()
    start = world.clock.now()
    interval = timedelta(minutes=5)
    _, store = world.slot("store", interval)
    world.run_for(timedelta(minutes=12))
    rand = random.Random(SEED)
    first = start + interval * rand.random()
    second = first + interval * (0.75 + 0.5 * rand.random())
    third = second + interval * (0.75 + 0.5 * rand.random())
    assert store.asked == [first, second, third][: len(store.asked)]
    assert len(store.asked) >= 2 and store.asked[-1] + interval * 1.25 > world.clock.now()


def test_an_interval_of_zero_is_never_checked_on_a_timer() -> None:
    world = World()
    _, store = world.slot("store", timedelta(0))
    world.run_for(timedelta(minutes=10))
    assert store.asked == []


def test_a_forgotten_sink_does_not_hold_up_another_due_at_the_same_instant() -> None:
    """Both are due every second (an interval below the timer's granularity); the first one's
    entry, forgotten, comes up first at the next tick."""
    world = World()
    start = world.clock.now()
    first, _ = world.slot("a", timedelta(milliseconds=100))
    _, other = world.slot("b", timedelta(milliseconds=100))
    first.stop()
    world.run_for(3 * GRANULARITY)
    assert other.asked == [start + GRANULARITY, start + 2 * GRANULARITY, start + 3 * GRANULARITY]


def test_a_sink_stopped_and_opened_again_is_checked_again() -> None:
    """Leadership lost, then regained: the shared sink's checks resume."""
    world = World()
    slot, store = world.slot("store", timedelta(minutes=1))
    slot.stop()
    world.run_for(timedelta(minutes=3))
    assert store.asked == []
    slot.open()
    world.run_for(timedelta(minutes=3))
    assert len(store.asked) >= 2
