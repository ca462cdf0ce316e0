"""`TokenJob`: one configured token, its current value, and its refresh loop.

A run acquires a token (one request in flight per token), publishes it, and decides the next run:
the refresh policy after a success, backoff after a failure. The last good token stays current
until it expires, whatever the failures.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from tokend.backoff import Backoff
from tokend.clock import Timing
from tokend.engine.outcome import (
    Phase,
    log_expired,
    log_failure,
    log_recovered,
    log_resumed,
    log_success,
    settle,
)
from tokend.engine.policy import RefreshPolicy, retry_at
from tokend.engine.publisher import Publisher
from tokend.engine.recovery import Recovery
from tokend.engine.state import StateStore, fingerprint
from tokend.errors import TokendError
from tokend.oauth import TokenRequest
from tokend.redaction import redactor
from tokend.token import Token

log = logging.getLogger("tokend.refresh")


class Acquirer(Protocol):
    async def acquire(self, request: TokenRequest) -> Token: ...


class DurationObserver(Protocol):
    def observe(self, amount: float) -> None: ...


@dataclass(frozen=True, slots=True)
class JobKit:
    """What a job works with besides its own request and sinks. Thousands of tokens share the
    same few combinations, so the composition root makes one kit per distinct combination and
    each job holds one reference rather than seven (48 bytes less a job: 4.8 MB at 100,000)."""

    acquirer: Acquirer
    policy: RefreshPolicy
    backoff: Backoff
    timing: Timing
    durations: DurationObserver
    state: StateStore | None = None
    recovery: Recovery | None = None


class TokenJob:
    __slots__ = (  # one per configured token: 100,000 of them must stay small
        "_expiry_reported", "_fingerprint", "_inflight", "_scheduled", "_stopped", "_waiting",
        "failures", "kit", "last_error", "last_success", "next_run", "permanent_errors",
        "publisher", "request", "successes", "token", "transient_errors",
    )  # fmt: skip

    def __init__(self, request: TokenRequest, kit: JobKit, publisher: Publisher) -> None:
        self.request = request
        self.publisher = publisher
        self.token: Token | None = None
        self.next_run: datetime | None = None
        self.last_success: datetime | None = None
        self.last_error: TokendError | None = None
        self.failures = 0
        self.successes = self.transient_errors = self.permanent_errors = 0
        """Attempts by outcome, since the job was built (ints in slots: 100,000 of them)."""
        self.kit = kit
        self._fingerprint = fingerprint(request) if kit.state else ""
        self._inflight: asyncio.Task[Token | None] | None = None
        self._scheduled = False  # False for `tokend once`: no next run to speak of
        self._stopped = False
        self._waiting = False  # waiting at its endpoint for an outage to end (no own schedule)
        self._expiry_reported = False

    @property
    def name(self) -> str:
        return self.request.name

    @property
    def results(self) -> dict[str, int]:
        """Attempts by outcome, by the names metrics and status give them."""
        return {
            "success": self.successes,
            "transient_error": self.transient_errors,
            "permanent_error": self.permanent_errors,
        }

    def phase(self, now: datetime) -> Phase:
        if self._inflight is not None:
            return Phase.REFRESHING
        if self.token is not None and not self.token.is_valid(now):
            return Phase.EXPIRED
        if self.failures:
            return Phase.FAILING if self.failing_permanently else Phase.RETRYING
        if self.token is None:
            return Phase.PENDING
        if self.publisher.all_hold_valid_token(now):
            return Phase.FRESH
        return Phase.SINK_FAILING if self.publisher.last_error() else Phase.PUBLISHING

    def start(self, at: datetime) -> None:
        self._stopped = False
        self.publisher.open()
        self._plan(at)

    def stored_token(self, now: datetime) -> Token | None:
        """The last good token from persisted state, if still valid for this same request."""
        if self.kit.state is None:
            return None
        return self.kit.state.load(self.name, self._fingerprint, now)

    async def resume(self, token: Token) -> None:
        """Carry on with a stored token: publish it and plan its refresh as if just obtained."""
        self._stopped = False
        self.publisher.open()
        self._hold(token)
        self.last_success = token.obtained_at
        log_resumed(self.name, token)
        self._plan(self.kit.policy.refresh_at(token, self.kit.timing.rand.random()))
        await self.publisher.publish(token)

    def _hold(self, token: Token) -> None:
        """`token` is the current one; the redactor masks it wherever it might be echoed."""
        if self.token is not None:
            redactor.forget_token(self.token.value)
        redactor.add_token(token.value)
        self.token = token

    def stop(self) -> None:
        self._stopped = True
        self.kit.timing.scheduler.cancel(self.name)
        self.publisher.stop()
        self._stop_waiting()

    def wake(self) -> None:
        """Run at once: its endpoint recovered, the cause of its failure may have changed, or
        the config was reloaded."""
        if self._stopped:
            return
        self._stop_waiting()
        self._plan(self.kit.timing.clock.now())

    async def settled(self) -> None:
        """Wait for the acquisition in flight, if any (a reader with no token to serve yet)."""
        inflight = self._inflight
        if inflight is not None:
            await asyncio.shield(inflight)

    async def probe(self) -> bool:
        """Run now on behalf of every token waiting at this endpoint; True if it succeeded."""
        self._waiting = False
        await self._run()
        return self.failures == 0

    @property
    def failing_permanently(self) -> bool:
        return self.last_error is not None and not self.last_error.transient

    @property
    def endpoint(self) -> str:
        """The token endpoint (or issuer) this job's requests go to: outages are per endpoint."""
        endpoint = self.request.grant.endpoint
        return endpoint.token_url or endpoint.issuer or ""

    def _stop_waiting(self) -> None:
        self._waiting = False
        if (recovery := self.kit.recovery) is not None:
            recovery.outages.forget(self, self.endpoint)
            recovery.causes.forget(self, self.request.grant)

    def retry_delay(self, attempt: int, error: TokendError) -> float:
        """Seconds to wait before the `attempt`+1st try after `error` (`tokend once`)."""
        delay = self.kit.backoff.delay(attempt, self.kit.timing.rand.random()).total_seconds()
        return max(delay, error.retry_after or 0.0)

    def wind_down(self) -> None:
        """The process is stopping: a run in progress finishes (its token is published and
        saved), but nothing more is planned and its outcome claims no next try."""
        self._scheduled = False

    def halt(self) -> None:
        """Stop at once, writes included (leadership lost): nothing is planned, sink writes in
        flight are cancelled, and the answer to a request in flight is dropped unpublished.
        `start` or `resume` carry on."""
        self.stop()
        self.publisher.halt()
        self._expiry_reported = True  # its expiry is the leader's business now

    async def acquire(self) -> Token | None:
        """Acquire now, single flight: while an acquisition is in progress, another call shares
        its outcome rather than sending a second request. None when it failed."""
        if self._inflight is None:
            self._inflight = asyncio.create_task(self._acquire_and_record())
            self._inflight.add_done_callback(self._clear_inflight)
        return await asyncio.shield(self._inflight)

    def _clear_inflight(self, task: asyncio.Task[Token | None]) -> None:
        self._inflight = None

    async def _acquire_and_record(self) -> Token | None:
        started = time.perf_counter()
        acquiring = self.kit.acquirer.acquire(self.request)
        outcome = await settle(acquiring, log, "unexpected error while acquiring", self.name)
        took = time.perf_counter() - started
        self.kit.durations.observe(took)
        if self._stopped:
            # Removed or replaced (a reload) while the request was in flight: whatever came
            # back is not this job's to publish, persist or report; its successor owns the token.
            return None
        if isinstance(outcome, TokendError):
            self._failed(outcome)
            if self.failing_permanently and self.kit.recovery is not None:
                grant = self.request.grant
                await self.kit.recovery.causes.watch(self, grant, grant.source_version)
            return None
        self._succeeded(outcome, took)
        if self.kit.state is not None:
            await self.kit.state.persist(self.name, self._fingerprint, outcome)
        return outcome

    async def _expire_if_due(self) -> None:
        """The held token has expired unreplaced: say so once, and let sinks withdraw it.

        No timer is needed for this: while a valid token is held, the next try is never planned
        after its expiry, so after the last-chance try fails a run comes right at the expiry."""
        now = self.kit.timing.clock.now()
        token = self.token
        if token is None or token.is_valid(now) or self._expiry_reported:
            return
        self._expiry_reported = True
        log_expired(self.name, token, self.last_error)
        await self.publisher.expire(now)

    async def _run(self) -> None:
        """The scheduled run: acquire, hand the token to the sinks, plan the next run.

        Sinks publish in their own tasks: a slow sink (a remote store timing out) never holds
        one of the scheduler's few run slots that other tokens' refreshes are waiting for."""
        await self._expire_if_due()
        token = await self.acquire()
        if token is not None and not self._stopped:
            self.publisher.publish_in_background(token)
        if not self._stopped and not self._waiting and self._scheduled and self.next_run:
            self._plan(self.next_run)

    __call__ = _run  # what the scheduler runs: the job itself, not a bound method per plan

    def _plan(self, at: datetime) -> None:
        self._scheduled = True
        self.next_run = at
        self.kit.timing.scheduler.schedule(self.name, at, self)

    def _succeeded(self, token: Token, took: float) -> None:
        now = self.kit.timing.clock.now()
        self._stop_waiting()
        if self.failures:
            log_recovered(self.name, self.failures)
        if self.token is None or token.expires_at > self.token.expires_at:
            self._hold(token)
            self._expiry_reported = False
        self.failures = 0
        self.last_error = None
        self.last_success = token.obtained_at  # when it was asked for; no datetime of its own
        self.successes += 1
        self.next_run = self.kit.policy.refresh_at(token, self.kit.timing.rand.random())
        scheduled = self.next_run if self._scheduled else None
        log_success(self.name, token, now, next_run=scheduled, took=took)

    def _failed(self, error: TokendError) -> None:
        now = self.kit.timing.clock.now()
        permanent = not error.transient
        self.failures += 1
        if permanent:
            self.permanent_errors += 1
        else:
            self.transient_errors += 1
        holding = self.token if self.token and self.token.is_valid(now) else None
        recovery = self.kit.recovery
        if holding is None and not permanent and recovery is not None and self._scheduled:
            # No valid token to protect: wait for the endpoint's probe with every other token
            # that has none either, rather than each backing off on its own.
            self.next_run = recovery.outages.wait(self, self.endpoint, error, self.kit.backoff)
            self._waiting = True
        else:
            self.next_run = retry_at(
                now=now,
                attempt=self.failures,
                backoff=self.kit.backoff,
                rand=self.kit.timing.rand.random(),
                hard=permanent or error.back_off_hard,
                retry_after=error.retry_after,
                holding=holding,
            )
        repeated = self.last_error is not None and self.last_error.code == error.code
        self.last_error = error
        scheduled = self.next_run if self._scheduled else None
        log_failure(
            self.name,
            error,
            now,
            attempt=self.failures,
            repeated=repeated,
            next_run=scheduled,
            holding=holding,
        )
