"""`tokend.service.ServiceReporter`: each STATUS line and readiness check walks every token, so
the pauses between them grow with what they cost (at 100,000 tokens a walk takes ~0.4 s: every
30 s that alone was 1.25 % of a core on an idle daemon, and every 0.5 s while starting it took
the start from ~220 s to 426 s). The first round's end still wakes a readiness check at once.
What a walk costs is read from an injected timer, never from real time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any, cast

import pytest

from tests.support.clock import FakeClock
from tokend.engine import Engine
from tokend.engine.query import Census
from tokend.service import (
    STARTING_CHECK,
    STARTING_EXTENSION,
    STARTING_SHARE,
    STATUS_INTERVAL,
    STATUS_SHARE,
    ServiceReporter,
    pause_after,
)
from tokend.systemd import Notifier


class RecordingNotifier(Notifier):
    """Keeps what would go to systemd, one list of fields per message."""

    def __init__(self) -> None:
        super().__init__("/run/systemd/notify")
        self.sent: list[list[str]] = []

    def notify(self, *fields: str) -> bool:
        self.sent.append(list(fields))
        return True


class CostlyEngine:
    """The two readers the reporter uses; each walk "takes" `walk_cost` seconds of the timer."""

    def __init__(self, clock: FakeClock, walk_cost: float, valid: Iterable[int] = ()) -> None:
        self.clock = clock
        self.walk_cost = walk_cost
        self.elapsed = 0.0
        self.ready = False
        self.valid = iter(valid)
        """Tokens valid at each census while starting (by default none until ready)."""
        self.running = 1
        self.checks = 0

    def timer(self) -> float:
        return self.elapsed

    def is_ready(self, now: object) -> bool:
        self.elapsed += self.walk_cost
        self.checks += 1
        assert self.checks < 100, "readiness checked over and over, without a pause"
        return self.ready

    def census(self, now: object, late: object) -> Census:
        self.elapsed += self.walk_cost
        census = Census(running=self.running, valid=next(self.valid, int(self.ready)))
        census.next_refresh = self.clock.now() + timedelta(minutes=4) if self.ready else None
        return census


HELD_AT_MOST = 10.0
"""Real seconds a held pause lasts before the test fails: reached only when nothing ended it."""


class Sleeps:
    """An injected sleep: records each pause, and the `stop_after`-th ends the report. Pauses
    before it return at once, or with `hold` not by themselves (the first round may end them;
    if nothing does, the test fails after `HELD_AT_MOST`)."""

    def __init__(self, stop_after: int, *, hold: bool = False) -> None:
        self.asked: list[float] = []
        self.stop_after = stop_after
        self.hold = hold

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        if len(self.asked) >= self.stop_after:
            raise asyncio.CancelledError
        if self.hold:
            await asyncio.sleep(HELD_AT_MOST)
            raise AssertionError(f"a pause of {seconds:g} s was not cut short")


def _reporter(engine: CostlyEngine, sleeps: Sleeps, **options: Any) -> ServiceReporter:
    reporter = ServiceReporter(
        cast(Engine, engine), engine.clock, timer=engine.timer, sleep=sleeps, **options
    )
    reporter.notifier = RecordingNotifier()
    return reporter


def _sent(reporter: ServiceReporter) -> list[list[str]]:
    return cast(RecordingNotifier, reporter.notifier).sent


def _report(
    reporter: ServiceReporter,
    first_round_over: bool,
    then: Callable[[asyncio.Future[None]], None] | None = None,
) -> None:
    """Run the report until the injected sleep ends it. `then`, if given, runs on the loop
    once the report has begun, with the first round's future."""

    async def report() -> None:
        first_round = asyncio.get_running_loop().create_future()
        if first_round_over:
            first_round.set_result(None)
        if then is not None:
            asyncio.get_running_loop().call_soon(then, first_round)
        await reporter._report(first_round)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(report())


@pytest.mark.parametrize(
    ("took", "interval", "share", "pause"),
    [
        (0.01, STATUS_INTERVAL, STATUS_SHARE, STATUS_INTERVAL),  # a few thousand tokens
        (0.5, STATUS_INTERVAL, STATUS_SHARE, 100.0),  # 100,000 tokens: 0.5 % of the loop
        (0.001, STARTING_CHECK, STARTING_SHARE, STARTING_CHECK),
        (0.7, STARTING_CHECK, STARTING_SHARE, 14.0),
    ],
)
def test_pause_after_a_walk(took: float, interval: float, share: float, pause: float) -> None:
    assert pause_after(took, interval, share) == pytest.approx(pause)


@pytest.mark.parametrize(("walk", "pause"), [(0.001, STATUS_INTERVAL), (0.5, 0.5 / STATUS_SHARE)])
def test_status_lines_once_ready_are_paced_by_their_cost(walk: float, pause: float) -> None:
    engine = CostlyEngine(FakeClock(), walk)
    engine.ready = True
    sleeps = Sleeps(stop_after=1)
    reporter = _reporter(engine, sleeps, ready_when_started=True)
    _report(reporter, first_round_over=False)
    assert sleeps.asked == [pytest.approx(pause)]
    assert _sent(reporter)[0][0] == "READY=1"
    assert _sent(reporter)[0][1].startswith("STATUS=1/1 tokens valid, next refresh in 4m")


def test_readiness_checks_are_paced_and_the_first_round_wakes_them() -> None:
    """Starting, with walks of 0.35 s (two of them: readiness, then the status line): the next
    check is 14 s away, but the first round's end brings it forward."""
    engine = CostlyEngine(FakeClock(), 0.35)
    sleeps = Sleeps(stop_after=2, hold=True)
    reporter = _reporter(engine, sleeps)

    def first_round_done(first_round: asyncio.Future[None]) -> None:
        engine.ready = True
        first_round.set_result(None)

    _report(reporter, first_round_over=False, then=first_round_done)
    assert sleeps.asked[0] == pytest.approx(0.7 / STARTING_SHARE)
    assert _sent(reporter)[0] == ["STATUS=starting: 0/1 tokens valid"]
    assert _sent(reporter)[1][0] == "READY=1"  # woken by the first round, not after the 14 s
    assert sleeps.asked[1] == pytest.approx(0.35 / STATUS_SHARE)  # the status line's walk


def test_once_the_first_round_is_over_checks_keep_their_pace() -> None:
    """A token still failing after the first round: readiness is checked at the paced
    interval, not over and over because the first round is over."""
    engine = CostlyEngine(FakeClock(), 0.1)
    sleeps = Sleeps(stop_after=3)
    reporter = _reporter(engine, sleeps)
    _report(reporter, first_round_over=True)
    assert sleeps.asked == [pytest.approx(0.2 / STARTING_SHARE)] * 3
    assert [message[0] for message in _sent(reporter)] == ["STATUS=starting: 0/1 tokens valid"] * 3


def test_a_start_that_publishes_more_tokens_extends_the_start_timeout() -> None:
    """`TimeoutStartSec=` (5 min in deploy/systemd) would cut off a start of 100,000 tokens
    that is still publishing: each check that finds more tokens valid than ever before extends
    it past the next check; a check without progress does not."""
    engine = CostlyEngine(FakeClock(), 0.1, valid=[0, 1, 1, 0, 2])
    engine.running = 2
    sleeps = Sleeps(stop_after=5)
    reporter = _reporter(engine, sleeps)
    _report(reporter, first_round_over=True)
    usec = int((0.2 / STARTING_SHARE + STARTING_EXTENSION) * 1_000_000)
    extension = [f"EXTEND_TIMEOUT_USEC={usec}"]
    said = [message[0].split(" tokens")[0] for message in _sent(reporter)]
    assert said == [
        "STATUS=starting: 0/2",
        "STATUS=starting: 1/2",
        extension[0],
        "STATUS=starting: 1/2",
        "STATUS=starting: 0/2",  # a token expired meanwhile: no progress either
        "STATUS=starting: 2/2",
        extension[0],
    ]
