"""One token's job (`TokenJob`) on a fake clock and a virtual scheduler: what it plans after
each kind of outcome, its phase as a token goes out to a sink, what it says when it succeeds or
fails with no next run (`tokend once`, or winding down), a stored token that expires
unreplaced, and the job's part in recovery (outage probes, watched causes)."""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import timedelta

import pytest

from tests.support.clock import FakeClock
from tests.support.requests import client_secret_request
from tests.support.virtual import VirtualScheduler
from tokend.backoff import Backoff
from tokend.clock import Timing
from tokend.engine import JobKit, RefreshPolicy, TokenJob
from tokend.engine.once import refresh_once
from tokend.engine.outcome import Phase
from tokend.engine.publisher import Deliveries, Publisher
from tokend.engine.query import view_of
from tokend.engine.recovery import Recovery
from tokend.engine.slot import SinkSlot, SlotKit
from tokend.errors import TokendError
from tokend.oauth import Endpoint, TokenRequest
from tokend.sinks import SinkError
from tokend.token import Token

BACKOFF = Backoff(min=timedelta(seconds=2), max=timedelta(seconds=60))
LIFETIME = timedelta(hours=1)
REFRESHED = "refreshed: expires 2026-01-01T01:00:00Z (in 1h00m), took "


class Idp:
    """Answers each request with the next outcome (an error to raise, None for a token), then
    with tokens of `LIFETIME`."""

    def __init__(self, clock: FakeClock, *outcomes: TokendError | None) -> None:
        self.clock = clock
        self.outcomes = list(outcomes)
        self.requests = 0

    async def acquire(self, request: TokenRequest) -> Token:
        self.requests += 1
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome
        now = self.clock.now()
        return Token(f"t{self.requests}", "Bearer", expires_at=now + LIFETIME, obtained_at=now)


class Sink:
    def __init__(self) -> None:
        self.name = "file"
        self.received: list[Token] = []
        self.withdrawals = 0
        self.error: TokendError | None = None

    async def publish(self, token: Token) -> None:
        if self.error is not None:
            raise self.error
        self.received.append(token)

    async def withdraw(self) -> None:
        self.withdrawals += 1

    async def close(self) -> None:
        pass


class Durations:
    def __init__(self) -> None:
        self.observed: list[float] = []

    def observe(self, amount: float) -> None:
        self.observed.append(amount)


class Setup:
    def __init__(self, *outcomes: TokendError | None, recovery: bool = False) -> None:
        self.clock = FakeClock()
        self.scheduler = VirtualScheduler(self.clock)
        self.idp = Idp(self.clock, *outcomes)
        self.sink = Sink()
        self.durations = Durations()
        rand = random.Random(5)
        self.slot = SinkSlot(
            "crm",
            self.sink,
            SlotKit(Timing(self.clock, self.scheduler, rand), BACKOFF, withdraw_on_expiry=True),
        )
        self.recovery = Recovery(Timing(self.clock, self.scheduler, rand)) if recovery else None
        self.job = TokenJob(
            client_secret_request(Endpoint(token_url="https://idp.example/token")),
            JobKit(
                self.idp,
                RefreshPolicy(),
                BACKOFF,
                Timing(self.clock, self.scheduler, rand),
                self.durations,
                recovery=self.recovery,
            ),
            Publisher([self.slot], Deliveries()),
        )

    def run_for(self, span: timedelta) -> None:
        asyncio.run(self.scheduler.run_until(self.clock.now() + span))

    def token(self, minutes: float) -> Token:
        now = self.clock.now()
        return Token(
            "stored", "Bearer", expires_at=now + timedelta(minutes=minutes), obtained_at=now
        )


def _down(*, transient: bool = True) -> TokendError:
    return TokendError("idp down", code="down" if transient else "refused", transient=transient)


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "tokend.refresh"]


def test_a_job_not_started_shows_no_next_refresh() -> None:
    """An on-demand token nobody asked for yet: `/status` shows `next_refresh: null`."""
    setup = Setup()
    view = view_of(setup.job, setup.clock.now(), dormant=True)
    assert (view.phase, view.next_refresh, view.ready) == (Phase.PENDING, None, True)


def test_a_first_failure_without_recovery_plans_the_jobs_own_retry() -> None:
    setup = Setup(_down())
    setup.job.start(setup.clock.now())
    setup.run_for(timedelta(seconds=1))
    retry = setup.job.next_run
    assert retry is not None and setup.scheduler.due("crm") == retry
    setup.run_for(timedelta(minutes=1))
    assert setup.idp.requests == 2 and [t.value for t in setup.sink.received] == ["t2"]
    assert len(setup.durations.observed) == 2
    assert all(0 <= took < 1 for took in setup.durations.observed)


def test_a_resumed_token_that_expires_unreplaced_is_reported_and_withdrawn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    setup = Setup(*[_down()] * 1000)
    caplog.set_level(logging.DEBUG, "tokend.refresh")
    asyncio.run(setup.job.resume(setup.token(10)))
    setup.run_for(timedelta(minutes=15))
    assert setup.sink.withdrawals == 1
    messages = _messages(caplog)
    assert sum(m.startswith("token expired at 2026-01-01T00:10:00Z") for m in messages) == 1
    after = messages[[m.startswith("token expired") for m in messages].index(True) + 1]
    assert after.startswith("refresh failed (transient, attempt ") and after.endswith(
        "; no valid token"
    )


def test_a_job_halted_then_started_again_leaves_an_expired_token_to_the_leader(
    caplog: pytest.LogCaptureFixture,
) -> None:
    setup = Setup(*[_down()] * 1000)
    asyncio.run(setup.job.resume(setup.token(10)))
    setup.job.halt()
    setup.clock.advance(timedelta(minutes=20))
    setup.job.start(setup.clock.now())
    setup.run_for(timedelta(minutes=5))
    assert setup.idp.requests > 0 and setup.sink.withdrawals == 0
    assert not any(m.startswith("token expired") for m in _messages(caplog))


def test_a_job_stopped_then_resumed_refreshes_and_publishes_again() -> None:
    setup = Setup()
    setup.job.stop()
    asyncio.run(setup.job.resume(setup.token(60)))
    setup.run_for(timedelta(hours=1))
    assert setup.idp.requests == 1
    assert [t.value for t in setup.sink.received] == ["stored", "t1"]


def test_a_probe_that_fails_permanently_plans_the_jobs_own_retry() -> None:
    setup = Setup(_down(), _down(transient=False), recovery=True)
    setup.job.start(setup.clock.now())
    setup.run_for(timedelta(seconds=1))
    assert setup.scheduler.due("crm") is None  # waiting for its endpoint's probe
    setup.run_for(timedelta(seconds=10))
    assert setup.idp.requests == 2 and setup.job.failing_permanently
    assert setup.job.next_run is not None and setup.scheduler.due("crm") == setup.job.next_run


def test_a_permanent_failure_is_watched_until_the_job_succeeds() -> None:
    setup = Setup(_down(transient=False), recovery=True)
    watch = f"cause/{id(setup.job.request.grant):x}"
    setup.job.start(setup.clock.now())
    setup.run_for(timedelta(seconds=1))
    assert setup.scheduler.due(watch) is not None
    setup.job.wake()
    setup.run_for(timedelta(seconds=1))
    assert setup.job.failures == 0 and setup.scheduler.due(watch) is None


def test_a_hard_back_off_without_a_token_probes_after_the_longest_backoff() -> None:
    hard = _down()
    hard.back_off_hard = True
    setup = Setup(hard, recovery=True)
    setup.job.start(setup.clock.now())
    setup.run_for(timedelta(seconds=1))
    assert setup.job.next_run is not None
    assert setup.job.next_run - setup.clock.now() > timedelta(seconds=30)  # not a 10 s probe


def test_phase_while_publishing_while_a_sink_fails_and_when_fresh() -> None:
    setup = Setup()
    job, now = setup.job, setup.clock.now()
    token = asyncio.run(job.acquire())
    assert token is not None
    assert job.phase(now) == Phase.PUBLISHING
    setup.sink.error = SinkError("disk full", code="disk_full", transient=True)
    assert asyncio.run(job.publisher.publish(token)) is False
    assert job.phase(now) == Phase.SINK_FAILING
    setup.sink.error = None
    assert asyncio.run(job.publisher.publish(token)) is True
    assert job.phase(now) == Phase.FRESH
    later = now + LIFETIME
    assert job.phase(later) == Phase.EXPIRED


def test_a_job_winding_down_finishes_its_run_and_plans_no_more(
    caplog: pytest.LogCaptureFixture,
) -> None:
    setup = Setup()
    caplog.set_level(logging.INFO, "tokend.refresh")
    setup.job.start(setup.clock.now())
    setup.job.wind_down()
    setup.run_for(timedelta(hours=2))
    assert setup.idp.requests == 1 and [t.value for t in setup.sink.received] == ["t1"]
    assert setup.scheduler.due("crm") is None
    (message,) = _messages(caplog)
    assert message.startswith(REFRESHED)  # and no ", next refresh in ..."


def test_once_says_no_next_refresh_or_next_try(caplog: pytest.LogCaptureFixture) -> None:
    setup = Setup(_down(transient=False))
    caplog.set_level(logging.INFO, "tokend.refresh")
    assert asyncio.run(refresh_once(setup.job)) is False
    assert asyncio.run(refresh_once(setup.job)) is True
    failed, recovered, refreshed = _messages(caplog)
    assert failed == "refresh failed (needs operator action, attempt 1): idp down; no valid token"
    assert recovered == "recovered after 1 failed attempts"
    assert refreshed.startswith(REFRESHED)


def test_a_job_waiting_for_its_endpoint_to_recover_is_forgotten_once_it_succeeds() -> None:
    """The outage's probe is for the jobs still waiting: a job that got its token by its own
    retry leaves the endpoint's waiting list (and the probe is cancelled with the last one)."""
    setup = Setup(_down(), recovery=True)
    assert setup.recovery is not None
    outages, endpoint = setup.recovery.outages, "https://idp.example/token"
    setup.job.start(setup.clock.now())
    setup.run_for(timedelta(seconds=1))
    assert outages.waiting(endpoint) == 1
    setup.job.wake()  # its own retry, before the probe: the endpoint answers again
    setup.run_for(timedelta(seconds=1))
    assert setup.job.failures == 0
    assert outages.waiting(endpoint) == 0
