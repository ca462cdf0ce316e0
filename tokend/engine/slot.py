"""`SinkSlot`: one sink of one token: what it holds, what it should hold, and how delivery goes.

A slot holds the newest token its sink should have. A failing sink is retried on its own backoff
schedule and, when it recovers, receives the newest token rather than a backlog. A sink never
receives a token that expires sooner than the one it holds (monotonic publish). A sink that can
tell whether what it holds is still tokend's (`verify()`) is asked now and then by the
`Verifier` (`tokend.engine.verifier`), and delivered to again when it is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from tokend.backoff import Backoff
from tokend.clock import Job, Timing
from tokend.engine.outcome import same_failure, settle
from tokend.engine.policy import retry_at
from tokend.engine.verifier import Verifier, verified
from tokend.errors import TokendError
from tokend.sinks import Sink, can_verify
from tokend.token import Token

log = logging.getLogger("tokend.publisher")


class PublishObserver(Protocol):
    def published(self, token: Token) -> None:
        """`token` is durably in the sink. Must not block: start background work, if any."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SlotKit:
    """How a sink of a token is run, beside the sink itself. Most sinks of a config share one
    (the composition root makes one per distinct combination), so each slot holds one
    reference rather than six (40 bytes less a slot: 4 MB at 100,000 tokens)."""

    timing: Timing
    backoff: Backoff
    """Retries of a failing sink."""
    withdraw_on_expiry: bool = False
    required_for_ready: bool = True
    """Readiness (`/readyz`, systemd READY) waits for this sink to hold a valid token."""
    shared: bool = False
    """The sink writes to a store shared between replicas (leader election gates it)."""
    verifier: Verifier | None = None
    """Plans checks of what the sink holds, if the sink can tell (`can_verify`)."""


class SinkSlot:
    """One sink of one token: what it holds, what it should hold, and how delivery is going."""

    __slots__ = (  # one per sink of each token: 100,000 of them must stay small
        "_halting", "_lock", "_lock_users", "_retry_pending", "_stopped", "_writing", "errors",
        "failures", "held", "kit", "last_error", "last_success", "observer", "sink", "standby",
        "successes", "token_name", "wanted",
    )  # fmt: skip

    def __init__(self, token_name: str, sink: Sink, kit: SlotKit) -> None:
        self.token_name = token_name
        self.sink = sink
        self.kit = kit
        self.standby = False
        """Another replica leads and writes this shared sink; this one leaves it alone."""
        self.held: Token | None = None
        self.wanted: Token | None = None
        self.failures = 0
        self.last_success: datetime | None = None
        self.last_error: TokendError | None = None
        self.successes = self.errors = 0
        """Publish attempts by outcome, since the slot was built (`failures`: in a row, now)."""
        self._lock: asyncio.Lock | None = None  # see `_exclusively`
        self._lock_users = 0
        self._retry_pending = False
        self._stopped = False
        self.observer: PublishObserver | None = None
        """Told after each durable write (consumer notification)."""
        if self._verifier is not None:
            self._verifier.watch(self)
        self._halting = False  # `halt()` is cancelling the write in flight
        self._writing: asyncio.Task[Any] | None = None  # the task inside `sink.publish`

    @property
    def shared(self) -> bool:
        return self.kit.shared

    @property
    def required_for_ready(self) -> bool:
        return self.kit.required_for_ready

    @property
    def _verifier(self) -> Verifier | None:
        verifier = self.kit.verifier
        return verifier if verifier is not None and can_verify(self.sink) else None

    @property
    def name(self) -> str:
        return self.sink.name

    @property
    def results(self) -> dict[str, int]:
        """Publish attempts by outcome, by the names metrics and status give them."""
        return {"success": self.successes, "error": self.errors}

    @property
    def _retry_key(self) -> str:
        return f"{self.token_name}/sink/{self.sink.name}"

    @contextlib.asynccontextmanager
    async def _exclusively(self) -> AsyncIterator[None]:
        """One delivery, withdrawal or check at a time. The lock exists only while someone holds
        or awaits it: 100,000 idle slots would otherwise keep 100,000 locks (8 MB, measured)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        lock = self._lock
        self._lock_users += 1
        try:
            async with lock:
                yield
        finally:
            self._lock_users -= 1
            if not self._lock_users:
                self._lock = None

    def _plan_retry(self, at: datetime, job: Job) -> None:
        self._retry_pending = True
        self.kit.timing.scheduler.schedule(self._retry_key, at, job)

    def _cancel_retry(self) -> None:
        if self._retry_pending:
            self._retry_pending = False
            self.kit.timing.scheduler.cancel(self._retry_key)

    def offer(self, token: Token) -> None:
        """Make `token` the one to deliver, unless something newer is already wanted."""
        if self.wanted is None or token.expires_at > self.wanted.expires_at:
            self.wanted = token

    def holds_valid_token(self, now: datetime) -> bool:
        return self.held is not None and self.held.is_valid(now)

    async def deliver(self) -> bool:
        """Try to bring the sink up to date. True when it holds the newest token."""
        async with self._exclusively():
            token = self.wanted
            if token is None or self._stopped:
                return False
            if self.held is not None and token.expires_at <= self.held.expires_at:
                return True
            self._writing = asyncio.current_task()
            try:
                failing = f"sink {self.name}: unexpected failure"
                outcome = await settle(self.sink.publish(token), log, failing, self.token_name)
            except asyncio.CancelledError:
                if not self._halting or self._writing is None:
                    raise
                self._halting = False
                self._writing.uncancel()  # our own `halt()`: the write is abandoned, not retried
                return False
            finally:
                self._writing = None
            if isinstance(outcome, TokendError):
                self._failed(token, outcome)
                return False
            self._succeeded(token)
            return True

    def halt(self) -> None:
        """`stop()`, and cancel a write in flight: nothing lands after this (leadership lost)."""
        self.stop()
        if self._writing is not None and not self._halting:
            self._halting = True
            self._writing.cancel()

    def open(self) -> None:
        """Deliver again after `stop()` or `halt()` (leadership regained)."""
        if self._stopped and self._verifier is not None:
            self._verifier.watch(self)
        self._stopped = False

    async def expire(self, now: datetime) -> None:
        """The held token has expired unreplaced: withdraw it if this sink is configured to."""
        if not self.kit.withdraw_on_expiry:
            return
        async with self._exclusively():
            if self.held is None or self.held.is_valid(now) or self._stopped:
                return  # already withdrawn, replaced meanwhile, or no longer this slot's
            error = await self._withdraw()
            if error is not None:
                self._failed_withdrawal(error)
                return
            self.held = None
            self.failures = 0
            self.last_error = None
            self._cancel_retry()
            log.warning("sink %s: expired token withdrawn", self.name, extra=self._extra)

    async def retire(self) -> None:
        """Its token was removed from the config: stop, then apply the `on_expiry` rule to what
        the sink holds now (withdraw it, or leave it and say so), and close the sink."""
        self.stop()
        async with self._exclusively():
            if self.held is None:
                pass
            elif not self.kit.withdraw_on_expiry:
                log.info(
                    "sink %s: token removed from the config; its last value (expiring %s) is "
                    "left in place (on_expiry: keep)",
                    self.name,
                    self.held.expires_at.isoformat(timespec="seconds"),
                    extra=self._extra,
                )
            else:
                await self._withdraw_retired()
        await self.close()

    async def _withdraw_retired(self) -> None:
        error = await self._withdraw()
        if error is not None:
            log.warning(
                "sink %s: token removed from the config, but its value could not be withdrawn: %s",
                self.name,
                error,
                extra=self._extra,
            )
            return
        self.held = None
        log.info(
            "sink %s: token removed from the config; value withdrawn", self.name, extra=self._extra
        )

    async def _withdraw(self) -> TokendError | None:
        failing = f"sink {self.name}: unexpected failure to withdraw"
        outcome = await settle(self.sink.withdraw(), log, failing, self.token_name)
        return outcome if isinstance(outcome, TokendError) else None

    async def check(self) -> None:
        """Ask a sink that can tell (`verify()`) whether it still holds the token it was given;
        if someone changed or deleted it, deliver again. Nothing to do while the sink is failing
        (its retries are planned) or holds no valid token."""
        async with self._exclusively():
            held = self.held
            if (
                held is None
                or self.failures
                or self._stopped
                or not held.is_valid(self.kit.timing.clock.now())
            ):
                return
            if await verified(self, held):
                return
            self.held = None
        log.warning(
            "sink %s: no longer holds tokend's token (changed or deleted by someone else); "
            "writing it again",
            self.name,
            extra=self._extra,
        )
        await self.deliver()

    async def catch_up(self) -> None:
        """Another sink of this type recovered: retry now if failing, else check."""
        if self.failures and self.wanted is not None and self._retry_pending:
            self._cancel_retry()
            await self.deliver()
        else:
            await self.check()

    def stop(self) -> None:
        """Deliver nothing more (a delivery already queued finds the slot stopped)."""
        self._stopped = True
        self._cancel_retry()
        if self._verifier is not None:
            self._verifier.forget(self)

    async def close(self) -> None:
        """Stop, wait for a write already under way (so that nothing this slot started lands
        after its successor's writes), and close the sink."""
        self.stop()
        async with self._exclusively():
            pass
        if self.observer is not None:
            await self.observer.close()
        try:
            await self.sink.close()
        except Exception:
            log.exception("sink %s: error while closing", self.name, extra=self._extra)

    def _failed_withdrawal(self, error: TokendError) -> None:
        self.failures += 1
        level = logging.DEBUG if same_failure(error, self.last_error) else logging.WARNING
        log.log(level, "sink %s: cannot withdraw: %s", self.name, error, extra=self._extra)
        self.last_error = error
        now = self.kit.timing.clock.now()
        at = retry_at(
            now=now,
            attempt=self.failures,
            backoff=self.kit.backoff,
            rand=self.kit.timing.rand.random(),
        )
        self._plan_retry(at, self._retry_withdrawal)

    async def _retry_withdrawal(self) -> None:
        await self.expire(self.kit.timing.clock.now())

    def _succeeded(self, token: Token) -> None:
        if self.failures:
            log.info(
                "sink %s: recovered after %d failed attempts",
                self.name,
                self.failures,
                extra=self._extra,
            )
            if self._verifier is not None:
                self._verifier.recovered(self)
        self.held = token
        self.failures = 0
        self.last_error = None
        self.last_success = self.kit.timing.clock.now()
        self.successes += 1
        self._cancel_retry()
        if self.observer is not None:
            self.observer.published(token)  # the write is durable: consumers may look now

    def _failed(self, token: Token, error: TokendError) -> None:
        self.failures += 1
        self.errors += 1
        now = self.kit.timing.clock.now()
        level = logging.DEBUG if same_failure(error, self.last_error) else logging.WARNING
        log.log(level, "sink %s: %s", self.name, error, extra=self._extra)  # repeats: DEBUG
        self.last_error = error
        if not token.is_valid(now):
            return  # nothing worth retrying; the next refresh offers a new token
        rand = self.kit.timing.rand.random()
        at = retry_at(now=now, attempt=self.failures, backoff=self.kit.backoff, rand=rand)
        self._plan_retry(at, self._retry)

    async def _retry(self) -> None:
        await self.deliver()

    @property
    def _extra(self) -> dict[str, str]:
        return {"token": self.token_name}
