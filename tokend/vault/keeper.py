"""`TokenKeeper`: tokend's own Vault token, kept alive for the session that uses it.

It logs in when there is no token (or it has expired), renews the token at two thirds of its TTL
on the scheduler, logs in anew when it cannot be renewed any more (AppRole, Kubernetes), and
revokes a token it made when the session closes. Thread-safe: Vault worker threads ask for the
current login while the upkeep runs on another.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import datetime, timedelta
from typing import Any

from tokend.backoff import Backoff
from tokend.clock import Clock, Scheduler
from tokend.vault.auth import AUTH_METHODS, login
from tokend.vault.errors import Problem, VaultError, classify
from tokend.vault.health import VaultHealth
from tokend.vault.login import Login, renewed_ttl
from tokend.vault.options import VaultOptions

log = logging.getLogger("tokend.vault")

UPKEEP_KEY = "vault/token"
_UPKEEP_BACKOFF = Backoff(min=timedelta(seconds=1), max=timedelta(minutes=1))

ClientFor = Callable[[Login | None], Any]
"""This thread's hvac client, carrying the given login's token (none: not logged in)."""


class TokenKeeper:
    def __init__(
        self,
        options: VaultOptions,
        client_for: ClientFor,
        *,
        clock: Clock,
        timeout: float,
        health: VaultHealth | None = None,
    ) -> None:
        self._options = options
        self.health = health or VaultHealth()
        self._client_for = client_for
        self._clock = clock
        self._timeout = timeout
        self._lock = threading.Lock()
        self._login: Login | None = None
        self._generation = 0  # counts logins and renewals, so the upkeep knows when to re-plan
        self._planned = 0
        self._failures = 0
        self._last_problem = ""
        self._renewals_denied = 0  # in a row: twice means the policy, not a revoked token
        self._rand = random.Random()  # noqa: S311 - jitter, not cryptography
        self.closed = False

    @property
    def can_login(self) -> bool:
        """Whether tokend can get a new token by itself (not so with a token it was given)."""
        return AUTH_METHODS[self._options.auth.method].can_login

    def current(self) -> Login:
        """The login to use now, logging in first if there is none. Raises `VaultError`."""
        with self._lock:
            if self.closed:
                raise VaultError(
                    self._options.address, "the Vault session is closed", Problem.INTERNAL
                )
            current = self._login
            now = self._clock.now()
            if current is None or (current.expires_at is not None and current.expires_at <= now):
                current = self._login = self._new_login(now)
            return current

    def forget(self, dead: Login) -> None:
        """`dead` turned out not to work: the next use logs in again."""
        with self._lock:
            if self._login is dead:
                self._login = None

    def revoke(self) -> None:
        """Revoke the token if tokend made it by logging in (never a token it was given)."""
        with self._lock:
            current, self._login = self._login, None
        if current is None or not self.can_login:
            return
        try:
            self._client_for(current).auth.token.revoke_self()
        except Exception as exc:
            log.debug("vault: could not revoke tokend's token: %s", type(exc).__name__)

    @property
    def login_now(self) -> Login | None:
        """The current login, if any (for status: its expiry), without logging in. Read
        without the lock, which a login holds for as long as Vault takes to answer: a scrape
        must not wait for that (reading one attribute is atomic)."""
        return self._login

    def _new_login(self, now: datetime) -> Login:
        """Log in (lock held). Raises `VaultError`."""
        options = self._options
        try:
            fresh = login(self._client_for(None), options.address, options.auth, now, self._timeout)
        except VaultError as exc:
            self.health.login(False)
            self.health.observe(exc, now)
            raise
        self.health.login(True)
        self.health.observe(None, now)
        self._generation += 1
        self._failures = 0
        lifetime = f"TTL {_span(fresh.ttl)}" if fresh.ttl else "no expiry"
        renewable = "renewable" if fresh.renewable else "not renewable"
        log.info(
            "vault: logged in to %s (%s, %s, %s)",
            options.address,
            options.auth.method,
            lifetime,
            renewable,
        )
        if fresh.ttl and not fresh.renewable and not self.can_login:
            log.warning(
                "vault: the Vault token is not renewable and expires at %s; tokend cannot "
                "extend it: give it a renewable or longer-lived token",
                _clock_time(fresh.obtained_at + fresh.ttl),
            )
        return fresh

    # --- upkeep, on the scheduler -------------------------------------------------------------

    def plan(self, scheduler: Scheduler | None, executor: Executor) -> None:
        """(Event loop thread.) Plan the next renewal after each new login or renewal."""
        if scheduler is None or self.closed:
            return
        with self._lock:
            current, generation = self._login, self._generation
        if current is None or generation == self._planned:
            return
        self._planned = generation
        at = self._renewal_time(current)
        if at is None:
            scheduler.cancel(UPKEEP_KEY)
        else:
            scheduler.schedule(UPKEEP_KEY, at, lambda: self._upkeep(scheduler, executor))

    def _renewal_time(self, current: Login) -> datetime | None:
        if current.ttl <= timedelta(0) or not (current.renewable or self.can_login):
            return None
        return current.obtained_at + current.ttl * 2 / 3

    async def _upkeep(self, scheduler: Scheduler, executor: Executor) -> None:
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        retry_at = await loop.run_in_executor(executor, self._renew_or_login)
        if retry_at is not None and not self.closed:
            scheduler.schedule(UPKEEP_KEY, retry_at, lambda: self._upkeep(scheduler, executor))
        self.plan(scheduler, executor)

    def _renew_or_login(self) -> datetime | None:
        """Renew the token, or log in anew when it cannot be renewed (worker thread). Returns
        when to try again after a failure, or None."""
        with self._lock:
            current = self._login
            if current is None or self.closed:
                return None
            now = self._clock.now()
            try:
                if current.renewable and not (current.capped and self.can_login):
                    self._login = self._renewed_or_new(current, now)
                    self._generation += 1
                elif self.can_login:
                    self._login = self._new_login(now)
                self._failures = 0
                self._last_problem = ""
                return None
            except VaultError as exc:
                return self._upkeep_failed(current, exc, now)

    def _renewed_or_new(self, current: Login, now: datetime) -> Login:
        """Renew; if renewing is refused and tokend can log in, log in instead. Refused twice in
        a row (two different tokens) is the policy, not a revoked token: said once, loudly, as
        tokend would otherwise quietly log in again at every renewal."""
        try:
            renewed = self._renewed(current, now)
        except VaultError as exc:
            if exc.problem is not Problem.DENIED or not self.can_login:
                raise
            self._renewals_denied += 1
            if self._renewals_denied == 2:
                log.warning(
                    "vault: tokend's Vault policy does not allow it to renew its token (update "
                    "on auth/token/renew-self): it logs in again instead at every renewal; add "
                    "the rule (see the README) or attach Vault's default policy"
                )
            return self._new_login(now)
        self._renewals_denied = 0
        return renewed

    def _renewed(self, current: Login, now: datetime) -> Login:
        where = f"{self._options.address}/v1/auth/token/renew-self"
        try:
            body = self._client_for(current).auth.token.renew_self()
        except Exception as exc:
            error = classify(exc, where, "renew its token", self._timeout)
            self.health.renewal(False)
            self.health.observe(error, now)
            raise error from None
        self.health.renewal(True)
        self.health.observe(None, now)
        ttl = renewed_ttl(body)
        renewed = current.renewed(ttl, now)
        log.debug("vault: token renewed (TTL %s)", _span(ttl))
        if renewed.capped and not self.can_login:
            log.warning(
                "vault: the Vault token reaches its maximum TTL at %s and cannot be renewed past "
                "it: give tokend a new token before then",
                _clock_time(now + ttl),
            )
        return renewed

    def _upkeep_failed(self, current: Login, exc: VaultError, now: datetime) -> datetime | None:
        """(Lock held.) A renewal or re-login failed: log in again if the token is dead, else
        retry with backoff, never later than the token's expiry."""
        if not exc.transient:
            self._login = None  # dead or refused: the next use logs in again
            if exc.problem is not Problem.LOGIN:  # (a given token: re-read, it may be replaced)
                try:
                    self._login = self._new_login(now)
                    return None
                except VaultError as again:
                    exc = again
        self._failures += 1
        if str(exc) != self._last_problem:
            level = logging.WARNING if exc.transient else logging.ERROR
            log.log(level, "vault: cannot keep tokend's Vault token alive: %s", exc)
        self._last_problem = str(exc)
        if not exc.transient:
            return None
        delay = _UPKEEP_BACKOFF.delay(self._failures, self._rand.random())
        expires_at = current.expires_at
        if expires_at is not None and now + delay >= expires_at:
            self._login = None  # it will have expired: the next use logs in again
            return None
        return now + delay


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds}s"


def _clock_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
