"""Engine parts that only the daemon's own process used to exercise (so no in-process test, and
no mutation test, saw them): the reload summary line, per-token views, sinks failing in
unexpected ways or failing to withdraw, and cancelling a scheduled run."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import entra_identity
from tests.support.clock import FakeClock
from tests.support.harness import harness
from tests.support.idp import CLIENT_SECRET, FakeIdp
from tests.support.requests import client_secret_request
from tests.support.virtual import VirtualScheduler
from tokend.backoff import Backoff
from tokend.clock import Timing
from tokend.config import Config
from tokend.engine import ApsScheduler, JobKit, RefreshPolicy, ReloadSummary, TokenJob
from tokend.engine.once import refresh_once
from tokend.engine.publisher import Deliveries, Publisher
from tokend.engine.recovery import PROBE_INTERVAL, WATCH_INTERVAL, Causes, Outages
from tokend.engine.slot import SinkSlot, SlotKit
from tokend.errors import TokendError
from tokend.oauth import Endpoint, Peer, PermanentError, TokenRequest, TransientError
from tokend.sinks import SinkError
from tokend.token import Token


def test_reload_summary_names_what_changed_but_not_what_stayed() -> None:
    summary = ReloadSummary(
        added=["api"], changed=["graph", "crm"], removed=["old"], unchanged=["a", "b"]
    )
    assert str(summary) == "1 added (api), 2 changed (graph, crm), 1 removed (old), 2 unchanged"
    assert str(ReloadSummary()) == "0 added, 0 changed, 0 removed, 0 unchanged"


class TroubledSink:
    """Publishes and withdraws as told: raise `publish_error` / `withdraw_error` while set."""

    def __init__(self) -> None:
        self.name = "troubled"
        self.publish_error: Exception | None = None
        self.withdraw_error: Exception | None = None
        self.received: list[Token] = []
        self.withdrawals = 0
        self.closed = 0

    async def publish(self, token: Token) -> None:
        if self.publish_error is not None:
            raise self.publish_error
        self.received.append(token)

    async def withdraw(self) -> None:
        if self.withdraw_error is not None:
            raise self.withdraw_error
        self.withdrawals += 1

    async def close(self) -> None:
        self.closed += 1


BACKOFF = Backoff(min=timedelta(seconds=1), max=timedelta(seconds=8))


def _slot(
    clock: FakeClock, sink: TroubledSink, *, withdraw: bool = False
) -> tuple[SinkSlot, VirtualScheduler]:
    scheduler = VirtualScheduler(clock)
    slot = SinkSlot(
        "crm",
        sink,
        SlotKit(Timing(clock, scheduler, random.Random(3)), BACKOFF, withdraw_on_expiry=withdraw),
    )
    return slot, scheduler


def _token(clock: FakeClock, minutes: int = 60) -> Token:
    return Token(
        value="v",
        token_type="Bearer",
        expires_at=clock.now() + timedelta(minutes=minutes),
        obtained_at=clock.now(),
    )


def test_an_unexpected_sink_exception_is_an_internal_transient_error_retried_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    sink = TroubledSink()
    sink.publish_error = KeyError("surprise")
    slot, scheduler = _slot(clock, sink)
    publisher = Publisher([slot], Deliveries())
    token = _token(clock)

    async def scenario() -> None:
        assert await publisher.publish(token) is False
        error = slot.last_error
        assert error is not None and publisher.last_error() is error
        assert (str(error), error.code, error.transient) == (
            "unexpected KeyError",
            "internal",
            True,
        )
        assert (slot.failures, slot.results["error"], slot.results["success"]) == (1, 1, 0)
        retry = scheduler.due("crm/sink/troubled")
        assert retry is not None and retry - clock.now() >= timedelta(seconds=1)
        sink.publish_error = None
        await scheduler.run_until(clock.now() + timedelta(seconds=10))
        assert sink.received == [token]
        assert (slot.failures, slot.last_error, publisher.last_error()) == (0, None, None)
        assert (slot.results["error"], slot.results["success"]) == (1, 1)
        assert scheduler.due("crm/sink/troubled") is None

    with caplog.at_level(logging.INFO, logger="tokend.publisher"):
        asyncio.run(scenario())
    assert [(record.name, record.getMessage()) for record in caplog.records] == [
        ("tokend.publisher", "sink troubled: unexpected failure"),
        ("tokend.publisher", "sink troubled: unexpected KeyError"),
        ("tokend.publisher", "sink troubled: recovered after 1 failed attempts"),
    ]


def test_a_failed_withdrawal_is_retried_on_the_sinks_backoff_and_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    sink = TroubledSink()
    slot, scheduler = _slot(clock, sink, withdraw=True)
    token = _token(clock, minutes=1)

    async def scenario() -> None:
        slot.offer(token)
        assert await slot.deliver() is True
        clock.advance(timedelta(minutes=2))  # expired, unreplaced
        sink.withdraw_error = SinkError("cannot remove", transient=True)
        await slot.expire(clock.now())
        assert (slot.failures, str(slot.last_error), slot.held) == (1, "cannot remove", token)
        rand = random.Random(3)  # the slot's own sequence: its delays are known exactly
        first = scheduler.due("crm/sink/troubled")
        assert first == clock.now() + BACKOFF.delay(1, rand.random())
        await scheduler.run_until(first)  # fails again: twice as long, jittered
        assert slot.failures == 2
        assert scheduler.due("crm/sink/troubled") == first + BACKOFF.delay(2, rand.random())
        sink.withdraw_error = None
        await scheduler.run_until(clock.now() + timedelta(seconds=10))
        assert (sink.withdrawals, slot.held, slot.failures, slot.last_error) == (1, None, 0, None)
        assert scheduler.due("crm/sink/troubled") is None

    with caplog.at_level(logging.WARNING, logger="tokend.publisher"):
        asyncio.run(scenario())
    assert [record.getMessage() for record in caplog.records] == [
        "sink troubled: cannot withdraw: cannot remove",
        "sink troubled: expired token withdrawn",
    ]


def test_an_unexpected_withdrawal_exception_is_an_internal_error() -> None:
    clock = FakeClock()
    sink = TroubledSink()
    slot, scheduler = _slot(clock, sink, withdraw=True)

    async def scenario() -> None:
        slot.offer(_token(clock, minutes=1))
        await slot.deliver()
        clock.advance(timedelta(minutes=2))
        sink.withdraw_error = OSError("gone")
        await slot.expire(clock.now())

    asyncio.run(scenario())
    assert slot.last_error is not None
    assert (str(slot.last_error), slot.last_error.code) == ("unexpected OSError", "internal")
    assert scheduler.due("crm/sink/troubled") is not None


def test_a_cancelled_run_does_not_happen_and_cancelling_nothing_is_fine() -> None:
    async def scenario() -> list[str]:
        scheduler = ApsScheduler()
        ran: list[str] = []
        done = asyncio.Event()

        async def job(key: str) -> None:
            ran.append(key)
            done.set()

        scheduler.start()
        try:
            now = FakeClock().now()  # in the past: due at once
            scheduler.schedule("a", now + timedelta(days=400 * 365), lambda: job("a"))
            scheduler.cancel("a")
            scheduler.cancel("never-scheduled")
            scheduler.schedule("b", now, lambda: job("b"))
            await asyncio.wait_for(done.wait(), 5)
        finally:
            assert await scheduler.stop(5)
        return ran

    assert asyncio.run(scenario()) == ["b"]


def _config_for(tmp_path: Path, idp: FakeIdp, **extra: object) -> Config:
    """One token `crm` with a file sink and state in tmp_path."""
    return Config.model_validate(
        {
            "identities": {"app": entra_identity(idp, CLIENT_SECRET)},
            "tokens": {
                "crm": {
                    "identity": "app",
                    "resource": "https://crm.example",
                    "sinks": [{"type": "file", "path": str(tmp_path / "crm.token")}],
                }
            },
            "state_dir": str(tmp_path / "state"),
            **extra,
        }
    )


def test_the_view_of_one_token_is_its_entry_in_the_query(idp: FakeIdp, tmp_path: Path) -> None:
    config = Config.model_validate(
        {
            "identities": {"app": entra_identity(idp, CLIENT_SECRET)},
            "tokens": {
                name: {
                    "identity": "app",
                    "resource": f"https://{name}.example",
                    "sinks": [{"type": "file", "path": str(tmp_path / f"{name}.token")}],
                }
                for name in ("crm", "graph")
            },
        }
    )

    async def scenario() -> None:
        async with harness(config) as h:
            await h.start()
            await h.run_for(timedelta(minutes=1))
            now = h.clock.now()
            views = {view.name: view for view in h.engine.query(now)}
            assert h.engine.view("graph", now) == views["graph"]
            assert h.engine.view("crm", now) == views["crm"] != views["graph"]
            assert h.engine.view("nope", now) is None

    asyncio.run(scenario())


class ScriptedIdp:
    """Answers each request with the next outcome: an error to raise, or a token."""

    def __init__(self, clock: FakeClock, *outcomes: TokendError | None) -> None:
        self._clock = clock
        self._outcomes = list(outcomes)
        self.requests = 0

    async def acquire(self, request: TokenRequest) -> Token:
        self.requests += 1
        outcome = self._outcomes.pop(0) if self._outcomes else None
        if outcome is not None:
            raise outcome
        return _token(self._clock)


class NoDurations:
    def observe(self, amount: float) -> None:
        pass


JOB_BACKOFF = Backoff(min=timedelta(seconds=2), max=timedelta(seconds=60))
PEER = Peer("crm", "idp.example")


def _once_job(clock: FakeClock, idp: ScriptedIdp, sink: TroubledSink) -> TokenJob:
    """A job as `tokend once` drives it; its random numbers come from Random(5)."""
    slot, scheduler = _slot(clock, sink)
    return TokenJob(
        client_secret_request(Endpoint(token_url="https://idp.example/token")),
        JobKit(
            idp,
            RefreshPolicy(),
            JOB_BACKOFF,
            Timing(clock, scheduler, random.Random(5)),
            NoDurations(),
        ),
        Publisher([slot], Deliveries()),
    )


def _refresh(job: TokenJob, deadline_in: float | None) -> tuple[bool, list[float]]:
    """`job.refresh` with a deadline `deadline_in` s from now; the sleeps it asked for."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def run() -> bool:
        loop = asyncio.get_running_loop()
        deadline = None if deadline_in is None else loop.time() + deadline_in
        return await refresh_once(job, deadline, sleep=sleep)

    return asyncio.run(run()), slept


def test_once_retries_transient_failures_on_the_backoff_until_it_succeeds() -> None:
    clock = FakeClock()
    busy = TransientError(PEER, "HTTP 503", code="http_503")
    idp = ScriptedIdp(clock, busy, busy, None)
    job = _once_job(clock, idp, TroubledSink())
    rand = random.Random(5)
    waits = []
    for attempt in (1, 2):
        rand.random()  # each failure draws one for the job's own next run, then one to wait
        waits.append(JOB_BACKOFF.delay(attempt, rand.random()).total_seconds())
    assert _refresh(job, deadline_in=600) == (True, waits)
    assert idp.requests == 3


def test_once_waits_at_least_what_the_server_asked() -> None:
    clock = FakeClock()
    throttled = TransientError(PEER, "HTTP 429", code="http_429", retry_after=33)
    job = _once_job(clock, ScriptedIdp(clock, throttled), TroubledSink())
    assert _refresh(job, deadline_in=600) == (True, [33.0])


def test_once_gives_up_when_the_next_try_would_come_after_the_deadline() -> None:
    clock = FakeClock()
    busy = TransientError(PEER, "HTTP 503", code="http_503")
    idp = ScriptedIdp(clock, busy, None)
    assert _refresh(_once_job(clock, idp, TroubledSink()), deadline_in=1.5) == (False, [])
    assert idp.requests == 1


def test_once_gives_up_at_once_on_a_permanent_failure_or_without_a_deadline() -> None:
    clock = FakeClock()
    refused = PermanentError(PEER, "invalid_client", code="invalid_client")
    idp = ScriptedIdp(clock, refused, None)
    assert _refresh(_once_job(clock, idp, TroubledSink()), deadline_in=600) == (False, [])
    busy = TransientError(PEER, "HTTP 503", code="http_503")
    idp = ScriptedIdp(clock, busy, None)
    assert _refresh(_once_job(clock, idp, TroubledSink()), deadline_in=None) == (False, [])
    assert idp.requests == 1


def test_once_retries_a_failing_sink_without_asking_for_another_token() -> None:
    clock = FakeClock()
    idp = ScriptedIdp(clock)
    sink = TroubledSink()
    sink.publish_error = SinkError("disk full", transient=True)
    job = _once_job(clock, idp, sink)

    async def sleep(seconds: float) -> None:
        sink.publish_error = None  # the disk has room again after the wait

    async def run() -> bool:
        return await refresh_once(job, asyncio.get_running_loop().time() + 600, sleep=sleep)

    assert asyncio.run(run()) is True
    assert idp.requests == 1
    assert len(sink.received) == 1
    sink.publish_error = SinkError("read-only", transient=False)
    assert _refresh(_once_job(clock, ScriptedIdp(clock), sink), deadline_in=600) == (False, [])


def test_aps_runs_at_the_planned_time_replaces_and_cancels_by_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Production scheduling on APScheduler: a run in the past is due at once (never dropped
    as missed), a later one waits, scheduling a key again replaces its run, cancelling right
    after scheduling means it never runs."""

    async def scenario() -> list[str]:
        scheduler = ApsScheduler()
        ran: list[str] = []
        done = asyncio.Event()

        def job(key: str) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                ran.append(key)
                if key == "last":
                    done.set()

            return run

        past = datetime.now(UTC) - timedelta(hours=1)
        scheduler.start()
        try:
            scheduler.schedule("later", datetime.now(UTC) + timedelta(hours=1), job("later"))
            scheduler.schedule("again", datetime.now(UTC) + timedelta(hours=1), job("first"))
            scheduler.schedule("again", past, job("replaced"))
            scheduler.schedule("gone", past, job("gone"))
            scheduler.cancel("gone")
            scheduler.cancel("never-scheduled")
            await asyncio.sleep(0.2)  # the due runs start within milliseconds
            scheduler.cancel("later")  # after the last run nothing is left to wake up for
            scheduler.schedule("last", past, job("last"))
            await asyncio.wait_for(done.wait(), 5)
        finally:
            assert await scheduler.stop(5)
        return ran

    with caplog.at_level(logging.WARNING, logger="apscheduler"):
        assert asyncio.run(scenario()) == ["replaced", "last"]
    assert caplog.records == []


def test_aps_stop_gives_up_on_a_stuck_run_after_the_timeout() -> None:
    async def scenario() -> bool:
        scheduler = ApsScheduler()
        started = asyncio.Event()

        async def stuck() -> None:
            started.set()
            await asyncio.Event().wait()

        scheduler.start()
        scheduler.schedule("stuck", datetime.now(UTC), stuck)
        await asyncio.wait_for(started.wait(), 5)
        return await asyncio.wait_for(scheduler.stop(0.1), 5)

    assert asyncio.run(scenario()) is False


@pytest.mark.parametrize(
    ("on_expiry", "withdraw_error", "held_after", "logged"),
    [
        (
            "keep",
            None,
            True,
            (
                logging.INFO,
                "sink troubled: token removed from the config; its last value (expiring "
                "2026-01-01T01:00:00+00:00) is left in place (on_expiry: keep)",
            ),
        ),
        (
            "withdraw",
            None,
            False,
            (logging.INFO, "sink troubled: token removed from the config; value withdrawn"),
        ),
        (
            "withdraw",
            SinkError("cannot remove"),
            True,
            (
                logging.WARNING,
                "sink troubled: token removed from the config, but its value could not be "
                "withdrawn: cannot remove",
            ),
        ),
    ],
)
def test_a_removed_tokens_sink_applies_its_on_expiry_rule_says_so_and_closes(
    caplog: pytest.LogCaptureFixture,
    on_expiry: str,
    withdraw_error: Exception | None,
    held_after: bool,
    logged: tuple[int, str],
) -> None:
    clock = FakeClock()
    sink = TroubledSink()
    sink.withdraw_error = withdraw_error
    slot, _ = _slot(clock, sink, withdraw=on_expiry == "withdraw")
    token = _token(clock)

    async def scenario() -> None:
        slot.offer(token)
        await slot.deliver()
        with caplog.at_level(logging.INFO, logger="tokend.publisher"):
            await slot.retire()

    asyncio.run(scenario())
    assert [(r.levelno, r.getMessage(), r.token) for r in caplog.records] == [(*logged, "crm")]  # type: ignore[attr-defined]
    assert (slot.held is token) is held_after
    assert sink.closed == 1
    slot.offer(_token(clock, minutes=90))
    assert asyncio.run(slot.deliver()) is False  # retired: delivers nothing more
    assert sink.received == [token]


def test_a_sink_that_never_held_a_token_is_retired_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = TroubledSink()
    slot, _ = _slot(FakeClock(), sink, withdraw=True)
    with caplog.at_level(logging.INFO, logger="tokend.publisher"):
        asyncio.run(slot.retire())
    assert caplog.records == []
    assert (sink.withdrawals, sink.closed) == (0, 1)


@pytest.mark.parametrize(("stale", "left"), [(2025, 3028), (2026, 1002)])
def test_aps_keeps_one_wakeup_for_the_earliest_key_and_drops_stale_entries(
    stale: int, left: int, caplog: pytest.LogCaptureFixture
) -> None:
    """APScheduler holds one job, due at the earliest key; after it fires it is set for the
    next key. Keys scheduled again leave stale heap entries, rebuilt away once they outnumber
    twice the live ones plus 1,024 (here: 1,002 live, so from 2,027 stale on, one of them a
    cancelled key)."""

    async def scenario() -> None:
        scheduler = ApsScheduler()
        ran: list[str] = []
        done = asyncio.Event()

        async def soon() -> None:
            ran.append("soon")
            done.set()

        async def never() -> None:
            ran.append("never")

        now = datetime.now(UTC)
        later, latest = now + timedelta(hours=1), now + timedelta(hours=2)
        scheduler.start()
        try:
            scheduler.schedule("latest", latest, never)
            assert scheduler._wakeup_at == latest
            scheduler.schedule("later", later, never)
            assert scheduler._wakeup_at == later  # an earlier key moves the wake-up
            scheduler.schedule("latest", latest + timedelta(hours=1), never)  # 1 stale
            assert scheduler._wakeup_at == later  # a later one does not
            assert _aps_jobs(scheduler) == [("tokend/due", later)]
            plans = [index % 1000 for index in range(1000 + stale - 1)]
            for round_, index in enumerate(plans):
                scheduler.schedule(f"k{index}", latest + timedelta(seconds=round_), never)
            assert len(scheduler._heap) == 1002 + stale
            scheduler.schedule("cancelled", now + timedelta(minutes=30), never)
            scheduler.schedule("cancelled later", latest + timedelta(hours=10), never)
            scheduler.cancel("cancelled")  # surfaces first after the wake-up: dropped
            scheduler.cancel("cancelled later")  # left for the rebuild
            scheduler.schedule("soon", now - timedelta(seconds=1), soon)
            await asyncio.wait_for(done.wait(), 5)
            await asyncio.sleep(0.05)  # the wake-up finishes its bookkeeping
            assert ran == ["soon"]
            assert scheduler.due("later") and not scheduler.due("soon")
            assert scheduler._wakeup_at == later  # set again for the next key
            assert _aps_jobs(scheduler) == [("tokend/due", later)]
            assert len(scheduler._heap) == left
        finally:
            await scheduler.stop(5)
        assert not scheduler.due("later")  # stopped: nothing pending

    with caplog.at_level(logging.WARNING, logger="apscheduler"):
        asyncio.run(scenario())
    assert caplog.records == []  # no wake-up failed (APScheduler would log it and carry on)


def _aps_jobs(scheduler: ApsScheduler) -> list[tuple[str, datetime]]:
    """APScheduler's own jobs: (id, next run)."""
    return [(job.id, job.next_run_time) for job in scheduler._aps.get_jobs()]


def test_only_an_expired_held_token_of_a_live_slot_is_withdrawn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    sink = TroubledSink()
    slot, _ = _slot(clock, sink, withdraw=True)

    async def scenario() -> list[int]:
        counts = []
        await slot.expire(clock.now())  # nothing held yet
        counts.append(sink.withdrawals)
        slot.offer(_token(clock, minutes=1))
        await slot.deliver()
        await slot.expire(clock.now())  # still valid
        counts.append(sink.withdrawals)
        clock.advance(timedelta(minutes=2))
        slot.stop()
        await slot.expire(clock.now())  # expired, but the slot is stopped
        counts.append(sink.withdrawals)
        return counts

    assert asyncio.run(scenario()) == [0, 0, 0]


def test_an_unexpected_withdrawal_failure_is_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    sink = TroubledSink()
    slot, _ = _slot(clock, sink, withdraw=True)

    async def scenario() -> None:
        slot.offer(_token(clock, minutes=1))
        await slot.deliver()
        clock.advance(timedelta(minutes=2))
        sink.withdraw_error = OSError("gone")
        with caplog.at_level(logging.WARNING, logger="tokend.publisher"):
            await slot.expire(clock.now())

    asyncio.run(scenario())
    first = caplog.records[0]
    assert (first.getMessage(), first.token, first.exc_info is not None) == (  # type: ignore[attr-defined]
        "sink troubled: unexpected failure to withdraw",
        "crm",
        True,
    )


class ProbeWaiter:
    """A job waiting at an endpoint: `probe()` answers as told, `wake()` is counted."""

    def __init__(self, name: str, answers: bool = True) -> None:
        self.name = name
        self.answers = answers
        self.probed = self.woken = 0

    def wake(self) -> None:
        self.woken += 1

    async def probe(self) -> bool:
        self.probed += 1
        return self.answers


def _outage(message: str = "down", **attributes: Any) -> TokendError:
    error = TokendError(message, code="down", transient=True)
    for name, value in attributes.items():
        setattr(error, name, value)
    return error


def test_one_probe_per_endpoint_at_a_jittered_ten_seconds_or_as_asked() -> None:
    clock, backoff = FakeClock(), Backoff()
    scheduler = VirtualScheduler(clock)
    outages = Outages(Timing(clock, scheduler, random.Random(7)))
    rand = random.Random(7)
    now = clock.now()
    first = outages.wait(ProbeWaiter("a"), "idp", _outage(), backoff)
    assert first == now + PROBE_INTERVAL * (1 - 0.25 * rand.random())
    assert outages.wait(ProbeWaiter("b"), "idp", _outage(), backoff) == first  # one probe
    assert outages.waiting("idp") == 2
    assert scheduler.due("probe/idp") == first
    asked = outages.wait(ProbeWaiter("c"), "slow", _outage(retry_after=600.0), backoff)
    rand.random()
    assert asked == now + timedelta(seconds=600)
    hard = outages.wait(ProbeWaiter("d"), "looping", _outage(back_off_hard=True), backoff)
    assert hard == now + backoff.longest(rand.random())
    assert scheduler.due("probe/looping") == hard and hard > now + timedelta(minutes=3)


def test_a_successful_probe_wakes_every_other_waiter_and_a_failed_one_keeps_them() -> None:
    clock, backoff = FakeClock(), Backoff()
    scheduler = VirtualScheduler(clock)
    outages = Outages(Timing(clock, scheduler, random.Random(7)))
    failing, waiting = ProbeWaiter("a", answers=False), ProbeWaiter("b")
    outages.wait(failing, "idp", _outage(), backoff)
    outages.wait(waiting, "idp", _outage(), backoff)
    asyncio.run(scheduler.run_until(clock.now() + PROBE_INTERVAL))
    assert (failing.probed, waiting.probed, waiting.woken) == (1, 0, 0)
    assert outages.waiting("idp") == 1  # b waits on (a, in the engine, waits again)

    healthy, other = ProbeWaiter("c"), ProbeWaiter("d")
    probe_at = outages.wait(healthy, "idp", _outage(), backoff)
    assert probe_at > clock.now()  # a new probe is planned
    outages.wait(other, "idp", _outage(), backoff)
    asyncio.run(scheduler.run_until(clock.now() + PROBE_INTERVAL))
    assert (waiting.probed, waiting.woken, healthy.probed, other.woken) == (1, 0, 0, 1)
    assert outages.waiting("idp") == 0
    assert scheduler.due("probe/idp") is None
    again = outages.wait(ProbeWaiter("e"), "idp", _outage(), backoff)
    assert again > clock.now() and scheduler.due("probe/idp") == again


def test_a_changed_cause_wakes_every_token_of_that_grant_once() -> None:
    """Permanent failures: the grant's source is read every jittered 10 s, one schedule per
    grant; when it reads differently every token of that grant runs, others wait on."""
    clock = FakeClock()
    scheduler = VirtualScheduler(clock)
    causes = Causes(Timing(clock, scheduler, random.Random(3)))
    rand = random.Random(3)
    versions = {"grant": "v1", "other": "w1"}
    grant, other = object(), object()

    def reader(name: str) -> Callable[[], Awaitable[str]]:
        async def version() -> str:
            return versions[name]

        return version

    a, b, c = ProbeWaiter("a"), ProbeWaiter("b"), ProbeWaiter("c")

    async def scenario() -> None:
        start = clock.now()
        await causes.watch(a, grant, reader("grant"))
        await causes.watch(b, grant, reader("grant"))  # the same grant: the same schedule
        await causes.watch(c, other, reader("other"))
        first = start + WATCH_INTERVAL * (1 - 0.25 * rand.random())
        assert scheduler.due(f"cause/{id(grant):x}") == first
        assert scheduler.due(f"cause/{id(other):x}") is not None
        await scheduler.run_until(start + timedelta(seconds=30))  # nothing changed yet
        assert (a.woken, b.woken, c.woken) == (0, 0, 0)
        versions["grant"] = "v2"
        await scheduler.run_until(clock.now() + WATCH_INTERVAL)
        assert (a.woken, b.woken, c.woken) == (1, 1, 0)
        assert scheduler.due(f"cause/{id(grant):x}") is None

    asyncio.run(scenario())


def test_a_waiter_that_stops_waiting_is_forgotten_and_the_last_one_cancels_the_probe() -> None:
    clock, backoff = FakeClock(), Backoff()
    scheduler = VirtualScheduler(clock)
    outages = Outages(Timing(clock, scheduler, random.Random(7)))
    a, b, namesake = ProbeWaiter("a"), ProbeWaiter("b"), ProbeWaiter("a")
    outages.wait(a, "idp", _outage(), backoff)
    outages.wait(b, "idp", _outage(), backoff)
    outages.forget(namesake, "idp")  # not the job waiting under that name: nothing happens
    assert outages.waiting("idp") == 2
    outages.forget(a, "idp")
    assert outages.waiting("idp") == 1 and scheduler.due("probe/idp") is not None
    outages.forget(b, "idp")
    assert outages.waiting("idp") == 0 and scheduler.due("probe/idp") is None
    outages.wait(a, "idp", _outage(), backoff)  # a new outage: a new probe
    assert scheduler.due("probe/idp") is not None


def test_a_token_no_longer_failing_permanently_is_no_longer_watched() -> None:
    clock = FakeClock()
    scheduler = VirtualScheduler(clock)
    causes = Causes(Timing(clock, scheduler, random.Random(3)))
    grant = object()
    a, b, namesake = ProbeWaiter("a"), ProbeWaiter("b"), ProbeWaiter("a")

    async def version() -> str:
        return "v1"

    async def scenario() -> None:
        await causes.watch(a, grant, version)
        await causes.watch(b, grant, version)
        key = f"cause/{id(grant):x}"
        causes.forget(namesake, grant)
        causes.forget(a, object())  # another grant: nothing happens
        causes.forget(a, grant)
        assert scheduler.due(key) is not None  # b is still watched
        causes.forget(b, grant)
        assert scheduler.due(key) is None
        await causes.watch(a, grant, version)  # watched again from scratch
        assert scheduler.due(key) is not None

    asyncio.run(scenario())
