"""`VaultSession`: the one Vault login of a process, shared by every Vault sink and every
`{vault: ...}` secret reference.

hvac is synchronous. Every call runs on the session's own small thread pool, so a slow or hung
Vault never stalls the event loop, the scheduler, or sinks that write elsewhere (file sinks have
their own writer thread). Each worker thread has its own
hvac client (requests sessions are not meant to be shared between threads); the login they all
use is guarded by a lock.

The token is kept alive in the background: renewed at two thirds of its TTL, and replaced by a
new login (AppRole, Kubernetes) when it cannot be renewed any more. A token that turns out to be
dead when used (Vault was restored, the token was revoked) is replaced by a new login and the
operation retried once. The renewal runs on the engine's scheduler, so tests drive it on virtual
time like everything else.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from tokend.clock import SYSTEM_CLOCK, Clock
from tokend.secrets import Secret, SecretError
from tokend.vault.errors import Problem, VaultError, classify
from tokend.vault.login import Login, login, renewed_ttl
from tokend.vault.options import TokenAuth, VaultOptions

if TYPE_CHECKING:
    from tokend.engine.scheduler import Scheduler

log = logging.getLogger("tokend.vault")

T = TypeVar("T")
Operation = Callable[[Any], T]
"""Something to do with an hvac client that is logged in."""

MAINTENANCE_KEY = "vault/token"
_MAX_RETRY = timedelta(minutes=1)
_REVOKE_TIMEOUT = 2.0


class VaultSession:
    def __init__(
        self,
        options: VaultOptions,
        *,
        clock: Clock = SYSTEM_CLOCK,
        scheduler: Scheduler | None = None,
        workers: int = 4,
    ) -> None:
        self.options = options
        self.address = options.address
        self._clock = clock
        self._scheduler = scheduler
        self._timeout = options.timeout.total_seconds()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tokend-vault")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._login: Login | None = None
        self._generation = 0  # counts logins and renewals, so the loop knows when to re-plan
        self._planned = 0
        self._failures = 0
        self._last_problem = ""
        self._secrets: dict[str, Secret] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"VaultSession({self.address!r}, auth={self.options.auth.method!r})"

    def where(self, path: str) -> str:
        """How messages name `path` on this Vault: its URL (and namespace, if any)."""
        namespace = f" (namespace {self.options.namespace})" if self.options.namespace else ""
        return f"{self.address}/v1/{path}{namespace}"

    # --- for sinks and secret references ------------------------------------------------------

    async def run(self, operation: Operation[T], *, path: str, action: str) -> T:
        """`call()` on a Vault worker thread, keeping the event loop free."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._pool, functools.partial(self.call, operation, path=path, action=action)
            )
        except RuntimeError:  # the pool is shut down: the session was closed
            raise VaultError(
                self.where(path), "the Vault session is closed", Problem.INTERNAL
            ) from None
        finally:
            self._plan_maintenance()

    def call(self, operation: Operation[T], *, path: str, action: str) -> T:
        """Do `operation(client)` logged in, blocking. `path` and `action` ("write this secret")
        name what is attempted, in error messages. Raises `VaultError` and nothing else."""
        where = self.where(path)
        for attempt in (1, 2):
            current = self._current_login()
            client = self._client(current)
            try:
                return operation(client)
            except Exception as exc:
                error = classify(exc, where, action, self._timeout)
            if error.problem is Problem.DENIED and attempt == 1 and self._is_dead(client):
                self._forget(current)  # the token died under us: log in again, try once more
                continue
            raise error
        raise AssertionError("unreachable")  # pragma: no cover

    def check_login(self) -> str | None:
        """Why tokend cannot log in to Vault now, or None when it can (for `tokend check`)."""
        try:
            self._current_login()
        except VaultError as exc:
            return str(exc)
        return None

    def read_secret(self, reference: str) -> Secret:
        """The value of `PATH#FIELD`, blocking. While Vault is unreachable or sealed, the value
        read last is used (with a warning), so an outage does not stop refreshes of tokens whose
        client secret lives in Vault. Raises `SecretError`."""
        path, _, field = reference.partition("#")
        try:
            body = self.call(
                lambda client: client.adapter.get(f"/v1/{path}"),
                path=path,
                action="read this secret",
            )
            secret = Secret(_field(body, field, self.where(path)))
        except VaultError as exc:
            with self._lock:
                cached = self._secrets.get(reference)
            if exc.transient and cached is not None:
                log.warning("%s; using the value of %s read earlier", exc, reference)
                return cached
            raise SecretError(str(exc)) from None
        with self._lock:
            self._secrets[reference] = secret
        return secret

    async def read_secret_async(self, reference: str) -> Secret:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, self.read_secret, reference)
        except RuntimeError:  # the pool is shut down: the session was closed
            raise SecretError(f"Vault secret {reference}: the Vault session is closed") from None
        finally:
            self._plan_maintenance()

    async def close(self) -> None:
        """Stop renewing; revoke the token if tokend made it by logging in (never a token it was
        given); release the worker threads."""
        if self._closed:
            return
        self._closed = True
        if self._scheduler is not None:
            self._scheduler.cancel(MAINTENANCE_KEY)
        loop = asyncio.get_running_loop()
        revoking = loop.run_in_executor(self._pool, self._revoke)
        try:
            await asyncio.wait_for(revoking, _REVOKE_TIMEOUT)
        except TimeoutError:
            log.debug("vault: token not revoked within %ss", _REVOKE_TIMEOUT)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def close_sync(self) -> None:
        """`close()` for callers without an event loop (`tokend check`)."""
        self._closed = True
        self._revoke()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- the login ----------------------------------------------------------------------------

    @property
    def _can_login(self) -> bool:
        """Whether tokend can get a new token by itself (not so with a token it was given)."""
        return not isinstance(self.options.auth, TokenAuth)

    def _current_login(self) -> Login:
        with self._lock:
            if self._closed:
                raise VaultError(self.address, "the Vault session is closed", Problem.INTERNAL)
            current = self._login
            now = self._clock.now()
            if current is None or (current.expires_at is not None and current.expires_at <= now):
                current = self._login = self._new_login(now)
            return current

    def _new_login(self, now: datetime) -> Login:
        """Log in (lock held). Raises `VaultError`."""
        fresh = login(self._client(None), self.options, now, self._timeout)
        self._generation += 1
        self._failures = 0
        lifetime = f"TTL {_span(fresh.ttl)}" if fresh.ttl else "no expiry"
        renewable = "renewable" if fresh.renewable else "not renewable"
        log.info(
            "vault: logged in to %s (%s, %s, %s)",
            self.address,
            self.options.auth.method,
            lifetime,
            renewable,
        )
        if fresh.ttl and not fresh.renewable and not self._can_login:
            log.warning(
                "vault: the Vault token is not renewable and expires at %s; tokend cannot "
                "extend it: give it a renewable or longer-lived token",
                _clock_time(fresh.obtained_at + fresh.ttl),
            )
        return fresh

    def _client(self, current: Login | None) -> Any:
        """This thread's hvac client, carrying the current token."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._new_client()
        client.token = current.token.reveal() if current else ""
        return client

    def _new_client(self) -> Any:
        import hvac

        ca_bundle = self.options.ca_bundle
        return hvac.Client(
            url=self.address,
            token="",  # never hvac's fallback to $VAULT_TOKEN or ~/.vault-token
            namespace=self.options.namespace,
            verify=str(ca_bundle) if ca_bundle else True,
            timeout=self._timeout,
        )

    def _is_dead(self, client: Any) -> bool:
        """After a "permission denied": is it the token itself that is no good?"""
        try:
            client.auth.token.lookup_self()
        except Exception as exc:
            return classify(exc, "", "look up its token", self._timeout).problem is Problem.DENIED
        return False

    def _forget(self, dead: Login) -> None:
        with self._lock:
            if self._login is dead:
                self._login = None

    def _revoke(self) -> None:
        with self._lock:
            current, self._login = self._login, None
        if current is None or not self._can_login:
            return
        try:
            self._client(current).auth.token.revoke_self()
        except Exception as exc:
            log.debug("vault: could not revoke tokend's token: %s", type(exc).__name__)

    # --- keeping the token alive --------------------------------------------------------------

    def _plan_maintenance(self) -> None:
        """(Event loop thread.) Plan the next renewal after each new login or renewal."""
        if self._scheduler is None or self._closed:
            return
        with self._lock:
            current, generation = self._login, self._generation
        if current is None or generation == self._planned:
            return
        self._planned = generation
        at = self._renewal_time(current)
        if at is None:
            self._scheduler.cancel(MAINTENANCE_KEY)
        else:
            self._scheduler.schedule(MAINTENANCE_KEY, at, self._maintain)

    def _renewal_time(self, current: Login) -> datetime | None:
        if current.ttl <= timedelta(0) or not (current.renewable or self._can_login):
            return None
        return current.obtained_at + current.ttl * 2 / 3

    async def _maintain(self) -> None:
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        retry_at = await loop.run_in_executor(self._pool, self._renew_or_login)
        if retry_at is not None and self._scheduler is not None and not self._closed:
            self._scheduler.schedule(MAINTENANCE_KEY, retry_at, self._maintain)
        self._plan_maintenance()

    def _renew_or_login(self) -> datetime | None:
        """Renew the token, or log in anew when it cannot be renewed (worker thread). Returns
        when to try again after a failure, or None."""
        with self._lock:
            current = self._login
            if current is None or self._closed:
                return None
            now = self._clock.now()
            try:
                if current.renewable and not (current.capped and self._can_login):
                    self._login = self._renewed(current, now)
                    self._generation += 1
                elif self._can_login:
                    self._login = self._new_login(now)
                self._failures = 0
                self._last_problem = ""
                return None
            except VaultError as exc:
                return self._maintenance_failed(current, exc, now)

    def _renewed(self, current: Login, now: datetime) -> Login:
        where = self.where("auth/token/renew-self")
        try:
            body = self._client(current).auth.token.renew_self()
        except Exception as exc:
            raise classify(exc, where, "renew its token", self._timeout) from None
        ttl = renewed_ttl(body)
        renewed = current.renewed(ttl, now)
        log.debug("vault: token renewed (TTL %s)", _span(ttl))
        if renewed.capped and not self._can_login:
            log.warning(
                "vault: the Vault token reaches its maximum TTL at %s and cannot be renewed past "
                "it: give tokend a new token before then",
                _clock_time(now + ttl),
            )
        return renewed

    def _maintenance_failed(
        self, current: Login, exc: VaultError, now: datetime
    ) -> datetime | None:
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
        delay = min(timedelta(seconds=2**self._failures), _MAX_RETRY)
        expires_at = current.expires_at
        if expires_at is not None and now + delay >= expires_at:
            self._login = None  # it will have expired: the next use logs in again
            return None
        return now + delay


def _field(body: Any, field: str, where: str) -> str:
    """`field` of a KV secret read at its API path: KV version 2 nests the fields in `data`."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise VaultError(where, "unexpected answer (no data)", Problem.INTERNAL)
    if isinstance(data.get("data"), dict) and isinstance(data.get("metadata"), dict):
        data = data["data"]
    value = data.get(field)
    if value is None:
        known = ", ".join(sorted(str(key) for key in data)) or "none"
        raise VaultError(where, f"has no field '{field}' (fields: {known})", Problem.NOT_FOUND)
    if not isinstance(value, str) or not value:
        raise VaultError(where, f"field '{field}' is not a non-empty string", Problem.INVALID)
    return value


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds}s"


def _clock_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
