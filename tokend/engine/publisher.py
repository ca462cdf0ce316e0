"""Getting each new token into every sink of its token, independently.

Each sink has a slot holding the newest token it should have. Delivery is attempted at once for
all sinks concurrently; a failing sink is retried on its own backoff schedule and, when it
recovers, receives the newest token rather than a backlog. A sink never receives a token that
expires sooner than the one it holds (monotonic publish).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from datetime import datetime

from tokend.clock import Clock
from tokend.engine.policy import Backoff, retry_at
from tokend.engine.scheduler import Scheduler
from tokend.oauth.token import Token
from tokend.sinks import Sink, SinkError

log = logging.getLogger("tokend.publisher")


class SinkSlot:
    """One sink of one token: what it holds, what it should hold, and how delivery is going."""

    __slots__ = (
        "_backoff", "_clock", "_lock", "_rand", "_retry_key", "_scheduler", "failures", "held",
        "last_error", "last_success", "results", "sink", "token_name", "wanted",
        "withdraw_on_expiry",
    )  # fmt: skip

    def __init__(
        self,
        token_name: str,
        sink: Sink,
        *,
        clock: Clock,
        scheduler: Scheduler,
        backoff: Backoff,
        rand: random.Random,
        withdraw_on_expiry: bool = False,
    ) -> None:
        self.token_name = token_name
        self.sink = sink
        self.withdraw_on_expiry = withdraw_on_expiry
        self.held: Token | None = None
        self.wanted: Token | None = None
        self.failures = 0
        self.last_success: datetime | None = None
        self.last_error: str | None = None
        self.results: Counter[str] = Counter()
        self._clock = clock
        self._scheduler = scheduler
        self._backoff = backoff
        self._rand = rand
        self._lock = asyncio.Lock()
        self._retry_key = f"{token_name}/sink/{sink.name}"

    @property
    def name(self) -> str:
        return self.sink.name

    def offer(self, token: Token) -> None:
        """Make `token` the one to deliver, unless something newer is already wanted."""
        if self.wanted is None or token.expires_at > self.wanted.expires_at:
            self.wanted = token

    def holds_valid_token(self, now: datetime) -> bool:
        return self.held is not None and self.held.is_valid(now)

    async def deliver(self) -> bool:
        """Try to bring the sink up to date. True when it holds the newest token."""
        async with self._lock:
            token = self.wanted
            if token is None:
                return False
            if self.held is not None and token.expires_at <= self.held.expires_at:
                return True
            try:
                await self.sink.publish(token)
            except SinkError as exc:
                self._failed(token, str(exc))
                return False
            except Exception as exc:
                log.exception("sink %s: unexpected failure", self.name, extra=self._extra)
                self._failed(token, f"unexpected {type(exc).__name__}")
                return False
            self._succeeded(token)
            return True

    async def expire(self, now: datetime) -> None:
        """The held token has expired unreplaced: withdraw it if this sink is configured to."""
        if not self.withdraw_on_expiry:
            return
        async with self._lock:
            if self.held is None or self.held.is_valid(now):
                return  # already withdrawn, or replaced meanwhile
            try:
                await self.sink.withdraw()
            except SinkError as exc:
                self._failed_withdrawal(str(exc))
                return
            except Exception as exc:
                log.exception(
                    "sink %s: unexpected failure to withdraw", self.name, extra=self._extra
                )
                self._failed_withdrawal(f"unexpected {type(exc).__name__}")
                return
            self.held = None
            self.failures = 0
            self.last_error = None
            self._scheduler.cancel(self._retry_key)
            log.warning("sink %s: expired token withdrawn", self.name, extra=self._extra)

    def stop(self) -> None:
        self._scheduler.cancel(self._retry_key)

    async def close(self) -> None:
        try:
            await self.sink.close()
        except Exception:
            log.exception("sink %s: error while closing", self.name, extra=self._extra)

    def _failed_withdrawal(self, reason: str) -> None:
        self.failures += 1
        if reason != self.last_error:
            log.warning("sink %s: cannot withdraw: %s", self.name, reason, extra=self._extra)
        self.last_error = reason
        now = self._clock.now()
        at = retry_at(
            now=now, attempt=self.failures, backoff=self._backoff, rand=self._rand.random()
        )
        self._scheduler.schedule(self._retry_key, at, self._retry_withdrawal)

    async def _retry_withdrawal(self) -> None:
        await self.expire(self._clock.now())

    def _succeeded(self, token: Token) -> None:
        if self.failures:
            log.info(
                "sink %s: recovered after %d failed attempts",
                self.name,
                self.failures,
                extra=self._extra,
            )
        self.held = token
        self.failures = 0
        self.last_error = None
        self.last_success = self._clock.now()
        self.results["success"] += 1
        self._scheduler.cancel(self._retry_key)

    def _failed(self, token: Token, reason: str) -> None:
        self.failures += 1
        self.results["error"] += 1
        now = self._clock.now()
        if reason != self.last_error:
            log.warning("sink %s: %s", self.name, reason, extra=self._extra)
        self.last_error = reason
        if not token.is_valid(now):
            return  # nothing worth retrying; the next refresh offers a new token
        rand = self._rand.random()
        at = retry_at(now=now, attempt=self.failures, backoff=self._backoff, rand=rand)
        self._scheduler.schedule(self._retry_key, at, self._retry)

    async def _retry(self) -> None:
        await self.deliver()

    @property
    def _extra(self) -> dict[str, str]:
        return {"token": self.token_name}


class Publisher:
    """All the sinks of one token."""

    __slots__ = ("slots",)

    def __init__(self, slots: list[SinkSlot]) -> None:
        self.slots = slots

    async def publish(self, token: Token) -> bool:
        """Deliver `token` to every sink concurrently. True when every sink holds it."""
        for slot in self.slots:
            slot.offer(token)
        delivered = await asyncio.gather(*(slot.deliver() for slot in self.slots))
        return all(delivered)

    def all_hold_valid_token(self, now: datetime) -> bool:
        return all(slot.holds_valid_token(now) for slot in self.slots)

    async def expire(self, now: datetime) -> None:
        await asyncio.gather(*(slot.expire(now) for slot in self.slots))

    def stop(self) -> None:
        for slot in self.slots:
            slot.stop()

    async def close(self) -> None:
        for slot in self.slots:
            await slot.close()
