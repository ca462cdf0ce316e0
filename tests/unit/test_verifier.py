"""The verifier: sinks that can tell whether they still hold tokend's token are asked on a slow
jittered timer, one timer per sink type, at no cost for sink types that cannot tell; a sink that
says no is delivered to again; a recovery makes every sink of its type catch up."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from datetime import timedelta

import pytest

from tests.support.clock import FakeClock
from tests.support.virtual import VirtualScheduler
from tokend.backoff import Backoff
from tokend.clock import Timing
from tokend.engine.publisher import Deliveries, Publisher
from tokend.engine.slot import SinkSlot, SlotKit
from tokend.engine.verifier import Verifier, verified
from tokend.errors import TokendError
from tokend.token import Token

S = timedelta(seconds=1)


class PlainSink:
    """A sink that cannot tell (a file sink, to the publisher)."""

    def __init__(self) -> None:
        self.name = "file"
        self.received: list[Token] = []

    async def publish(self, token: Token) -> None:
        self.received.append(token)

    async def withdraw(self) -> None:
        pass

    async def close(self) -> None:
        pass


class CheckedSink(PlainSink):
    """A sink that can tell; `intact` is what it answers, `down` makes everything fail."""

    def __init__(self, interval: timedelta = 60 * S) -> None:
        super().__init__()
        self.name = "store"
        self.verify_interval = interval
        self.intact = True
        self.down = False
        self.verified = 0

    async def publish(self, token: Token) -> None:
        if self.down:
            raise TokendError("store is down", code="down", transient=True)
        await super().publish(token)
        self.intact = True

    async def verify(self, token: Token) -> bool:
        self.verified += 1
        if self.down:
            raise TokendError("store is down", code="down", transient=True)
        return self.intact


class World:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.scheduler = VirtualScheduler(self.clock)
        self.deliveries = Deliveries()
        self.rand = random.Random(3)
        self.verifier = Verifier(Timing(self.clock, self.scheduler, self.rand), self.deliveries)

    def slot(self, sink: PlainSink, name: str = "crm") -> SinkSlot:
        return SinkSlot(
            name,
            sink,
            SlotKit(
                Timing(self.clock, self.scheduler, self.rand),
                Backoff(max=timedelta(minutes=5)),
                verifier=self.verifier,
            ),
        )

    def token(self) -> Token:
        now = self.clock.now()
        return Token(
            value="t" * 20, token_type="Bearer", expires_at=now + 60 * 60 * S, obtained_at=now
        )

    def pending_keys(self) -> set[str]:
        return set(self.scheduler._pending)


def test_sinks_that_cannot_tell_cost_nothing() -> None:
    world = World()

    async def scenario() -> None:
        slots = [world.slot(PlainSink(), f"t{i}") for i in range(100)]
        await Publisher(slots, world.deliveries).publish(world.token())
        assert world.pending_keys() == set()  # no timer at all
        assert world.verifier._kinds == {}

    asyncio.run(scenario())


def test_a_sink_that_says_no_is_written_again_within_one_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = World()
    sink = CheckedSink(interval=20 * S)

    async def scenario() -> None:
        slot = world.slot(sink)
        token = world.token()
        await Publisher([slot], world.deliveries).publish(token)
        await world.scheduler.run_until(world.clock.now() + 60 * S)
        assert sink.received == [token] and sink.verified >= 2  # intact: left alone
        sink.intact = False  # someone deleted it
        changed_at = world.clock.now()
        while len(sink.received) == 1:
            await world.scheduler.run_until(world.clock.now() + S)
        assert world.clock.now() - changed_at <= 26 * S  # 20 s, jittered by up to 25 %, + 1 s
        assert sink.received == [token, token] and slot.held is token

    with caplog.at_level(logging.INFO, "tokend"):
        asyncio.run(scenario())
    assert [(r.levelname, r.getMessage(), r.__dict__.get("token")) for r in caplog.records] == [
        (
            "WARNING",
            "sink store: no longer holds tokend's token (changed or deleted by someone else); "
            "writing it again",
            "crm",
        )
    ]  # once: the check before was fine, the one after finds it written again


def test_ten_thousand_sinks_share_one_timer_and_each_is_checked_about_once_a_minute() -> None:
    world = World()
    sinks = [CheckedSink() for _ in range(10_000)]

    async def scenario() -> float:
        slots = [world.slot(sink, f"t{i}") for i, sink in enumerate(sinks)]
        token = world.token()
        for slot in slots:
            slot.offer(token)
            world.deliveries.start(slot)
        await world.scheduler.run_until(world.clock.now())
        assert world.pending_keys() == {"verify/CheckedSink"}  # one timer for all of them
        started = time.perf_counter()
        await world.scheduler.run_until(world.clock.now() + 5 * 60 * S)
        took = time.perf_counter() - started
        ticks = [key for _, key in world.scheduler.runs if key.startswith("verify/")]
        assert len(ticks) <= 5 * 60 + 1  # at most once a second
        checks = sorted(sink.verified for sink in sinks)
        assert checks[0] >= 3 and checks[-1] <= 7  # 5 min at 60 s, jittered by +-25 %
        return took

    took = asyncio.run(scenario())
    assert took < 30  # 10,000 sinks x 5 checks in well under a minute of CPU


def test_when_one_sink_recovers_every_other_sink_of_its_type_catches_up_at_once() -> None:
    world = World()
    sinks = [CheckedSink(interval=timedelta(0)) for _ in range(3)]  # no timer: recovery only

    async def scenario() -> None:
        slots = [world.slot(sink, name) for sink, name in zip(sinks, ("a", "b", "c"), strict=True)]
        first = world.token()
        await Publisher(slots, world.deliveries).publish(first)
        for sink in sinks:
            sink.down = True
        await world.scheduler.run_until(world.clock.now() + 60 * S)
        newer = world.token()
        await Publisher(slots[:1], world.deliveries).publish(newer)  # a fails at 60 s
        await world.scheduler.run_until(world.clock.now() + 7 * S)
        await Publisher(slots[1:2], world.deliveries).publish(newer)  # b fails at 67 s
        await world.scheduler.run_until(world.clock.now() + 5 * 60 * S)  # both at max backoff
        for sink in sinks:
            sink.down = False
        sinks[2].intact = False  # c's store lost its value while away
        a_due = world.scheduler.due("a/sink/store")
        b_due = world.scheduler.due("b/sink/store")
        assert a_due is not None and b_due is not None and a_due < b_due
        await world.scheduler.run_until(a_due)
        assert slots[0].failures == 0 and slots[0].held is newer
        assert slots[1].failures == 0 and slots[1].held is newer  # not waiting until b_due
        assert sinks[2].received == [first, first]  # checked, found lost, written again

    asyncio.run(scenario())


def test_a_forgotten_sink_is_never_checked_again_and_others_of_its_type_still_are() -> None:
    world = World()
    kept, dropped = CheckedSink(interval=20 * S), CheckedSink(interval=20 * S)

    async def scenario() -> None:
        slots = [world.slot(kept, "kept"), world.slot(dropped, "dropped")]
        await Publisher(slots, world.deliveries).publish(world.token())
        slots[1].stop()  # its token was removed: the verifier forgets it
        slots[1].stop()  # again: nothing left to forget
        world.verifier.forget(world.slot(PlainSink(), "never-watched"))  # nothing to forget
        await world.scheduler.run_until(world.clock.now() + 60 * S)
        assert dropped.verified == 0
        assert kept.verified >= 2
        assert list(world.verifier._kinds[CheckedSink].live) == [slots[0]]  # no memory kept

    asyncio.run(scenario())


def test_recoveries_close_together_make_one_sweep() -> None:
    """A sweep at most every 10 s: the second recovery 10 s after the first sweeps again, one
    at 9 s does not."""
    world = World()
    sinks = [CheckedSink(interval=timedelta(0)) for _ in range(3)]

    async def scenario() -> list[int]:
        slots = [world.slot(sink, name) for sink, name in zip(sinks, ("a", "b", "c"), strict=True)]
        await Publisher(slots, world.deliveries).publish(world.token())
        checked = []
        for step in (0, 9, 1):
            world.clock.advance(step * S)
            world.verifier.recovered(slots[0])
            for _ in range(10):  # the catch-ups run in the sinks' delivery lane
                await asyncio.sleep(0)
            checked.append(sinks[2].verified)
        world.verifier.recovered(world.slot(PlainSink(), "other-type"))  # no such kind: nothing
        return checked

    assert asyncio.run(scenario()) == [1, 1, 2]
    assert sinks[0].verified == 0  # the one that recovered is not asked


class AnsweringSink(CheckedSink):
    """Answers `verify` with the value or the exception it is given, and records what it got."""

    def __init__(self, answer: bool | Exception) -> None:
        super().__init__()
        self.answer = answer
        self.asked: list[Token] = []

    async def verify(self, token: Token) -> bool:
        self.asked.append(token)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.mark.parametrize(
    ("answer", "result", "logged"),
    [
        (True, True, []),
        (False, False, []),  # written again
        (
            TokendError("vault is sealed", code="sealed", transient=True),
            True,  # cannot tell now: asked again at the next check
            [("DEBUG", "sink store: cannot verify: vault is sealed", "crm", False)],
        ),
        (
            RuntimeError("bug"),
            True,
            [("ERROR", "sink store: unexpected failure to verify", "crm", True)],
        ),
    ],
)
def test_what_a_sink_answers_and_what_is_said_when_it_cannot(
    answer: bool | Exception,
    result: bool,
    logged: list[tuple[str, str, str, bool]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = World()
    sink = AnsweringSink(answer)
    slot = world.slot(sink)
    token = world.token()
    with caplog.at_level(logging.DEBUG, "tokend"):
        assert asyncio.run(verified(slot, token)) is result
    assert sink.asked == [token]
    assert [
        (r.levelname, r.getMessage(), r.__dict__.get("token"), r.exc_info is not None)
        for r in caplog.records
    ] == logged
    assert asyncio.run(verified(world.slot(PlainSink(), "plain"), token)) is True  # cannot tell
