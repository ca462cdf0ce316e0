"""`VaultSession`: the one Vault login of a process, shared by every Vault sink and every
`{vault: ...}` secret reference.

hvac is synchronous. Every call runs on the session's own small thread pool, so a slow or hung
Vault never stalls the event loop, the scheduler, or sinks that write elsewhere (file sinks have
their own writer thread). Each worker thread has its own
hvac client (requests sessions are not meant to be shared between threads); the login they all
use is guarded by a lock.

The token is kept alive in the background by a `TokenKeeper` (renewed at two thirds of its TTL,
replaced by a new login when it cannot be renewed any more), on the daemon's scheduler, so tests
drive it on virtual time like everything else. A token that turns out to be dead when used (Vault
was restored, the token was revoked) is replaced by a new login and the operation retried once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from tokend.clock import SYSTEM_CLOCK, Clock, Scheduler
from tokend.secrets import Secret, SecretError
from tokend.vault.errors import Problem, VaultError, classify
from tokend.vault.health import VaultHealth, VaultReport
from tokend.vault.keeper import UPKEEP_KEY, TokenKeeper
from tokend.vault.kv import kv_version_of
from tokend.vault.login import Login
from tokend.vault.options import VaultOptions

log = logging.getLogger("tokend.vault")

T = TypeVar("T")
Operation = Callable[[Any], T]
"""Something to do with an hvac client that is logged in."""

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
        self._scheduler = scheduler
        self._timeout = options.timeout.total_seconds()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tokend-vault")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._secrets: dict[str, Secret] = {}
        self._clock = clock
        self.health = VaultHealth()
        self._keeper = TokenKeeper(
            options, self._client, clock=clock, timeout=self._timeout, health=self.health
        )

    def __repr__(self) -> str:
        return f"VaultSession({self.address!r}, auth={self.options.auth.method!r})"

    def where(self, path: str) -> str:
        """How messages name `path` on this Vault: its URL (and namespace, if any)."""
        namespace = f" (namespace {self.options.namespace})" if self.options.namespace else ""
        return f"{self.address}/v1/{path}{namespace}"

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
            self._keeper.plan(self._scheduler, self._pool)

    def call(self, operation: Operation[T], *, path: str, action: str) -> T:
        """Do `operation(client)` logged in, blocking. `path` and `action` ("write this secret")
        name what is attempted, in error messages. Raises `VaultError` and nothing else."""
        where = self.where(path)
        for attempt in (1, 2):
            current = self._keeper.current()
            client = self._client(current)
            try:
                result = operation(client)
            except Exception as exc:
                error = classify(exc, where, action, self._timeout)
            else:
                self.health.observe(None, self._clock.now())
                return result
            self.health.observe(error, self._clock.now())
            if error.problem is Problem.DENIED and attempt == 1 and self._is_dead(client):
                self._keeper.forget(current)  # the token died under us: log in, try once more
                continue
            raise error
        raise AssertionError("unreachable")  # pragma: no cover

    def check_login(self) -> str | None:
        """Why tokend cannot log in to Vault now, or None when it can (for `tokend check`)."""
        try:
            self._keeper.current()
        except VaultError as exc:
            return str(exc)
        return None

    def check_policy(self) -> str | None:
        """What tokend's policy lacks of what it needs for its own token, or None (for `tokend
        check`, once logged in). Tried for real: all three are harmless."""
        current = self._keeper.current()
        client = self._client(current)
        needed: list[tuple[str, str, Operation[Any], str]] = [
            ("read", "auth/token/lookup-self", _lookup_self, _LOOKUP),
            ("update", "sys/capabilities-self", _capabilities, _CAPABILITIES),
        ]
        if current.renewable:
            renew = _RENEW_LOGIN if self._keeper.can_login else _RENEW_GIVEN
            needed.insert(1, ("update", "auth/token/renew-self", _renew_self, renew))
        lacking = []
        for capability, path, attempt, why in needed:
            try:
                attempt(client)
            except Exception as exc:
                error = classify(exc, self.where(path), "use it", self._timeout)
                if error.problem is not Problem.DENIED:
                    return str(error)
                lacking.append(f"{capability} on {path} ({why})")
        if not lacking:
            return None
        return (
            f"tokend's Vault policy lacks {'; '.join(lacking)}: add the rules from the README, or "
            "attach Vault's default policy"
        )

    def report(self) -> VaultReport:
        """Health and login, for `/status` and `/metrics` (no request is made)."""
        login = self._keeper.login_now
        return VaultReport(
            address=self.address,
            method=self.options.auth.method,
            logged_in=login is not None,
            token_expires_at=login.expires_at if login else None,
            renewable=login.renewable if login else None,
            health=self.health.snapshot(),
        )

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
            raise SecretError(self._explained(exc, path, field), transient=exc.transient) from None
        with self._lock:
            self._secrets[reference] = secret
        return secret

    def _explained(self, exc: VaultError, path: str, field: str) -> str:
        """The error, with the fix for the usual slip: a reference without `data/` under a KV
        version 2 mount (Vault says 'permission denied', or 'not found' with a warning)."""
        mount, _, rest = path.partition("/")
        if exc.transient or not rest or rest.startswith("data/"):
            return str(exc)
        try:
            version = self.call(
                functools.partial(kv_version_of, path), path=path, action="look up its mount"
            )
        except VaultError:
            version = None
        if version != 2:
            return str(exc)
        fix = f"{mount} is KV version 2: write {{vault: {mount}/data/{rest}#{field}}}"
        if exc.problem is Problem.DENIED:
            return f"{self.where(path)}: permission denied, and {fix}"
        return f"{self.where(path)}: {fix}"

    async def read_secret_async(self, reference: str) -> Secret:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, self.read_secret, reference)
        except RuntimeError:  # the pool is shut down: the session was closed
            raise SecretError(f"Vault secret {reference}: the Vault session is closed") from None
        finally:
            self._keeper.plan(self._scheduler, self._pool)

    async def close(self) -> None:
        """Stop renewing; revoke the token if tokend made it by logging in (never a token it was
        given); release the worker threads."""
        if self._keeper.closed:
            return
        self._keeper.closed = True
        if self._scheduler is not None:
            self._scheduler.cancel(UPKEEP_KEY)
        loop = asyncio.get_running_loop()
        revoking = loop.run_in_executor(self._pool, self._keeper.revoke)
        try:
            await asyncio.wait_for(revoking, _REVOKE_TIMEOUT)
        except TimeoutError:
            log.debug("vault: token not revoked within %ss", _REVOKE_TIMEOUT)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def close_sync(self) -> None:
        """`close()` for callers without an event loop (`tokend check`)."""
        self._keeper.closed = True
        self._keeper.revoke()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _client(self, current: Login | None) -> Any:
        """This thread's hvac client, carrying the current token."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._new_client()
        client.token = current.token.reveal() if current else ""
        return client

    def _new_client(self) -> Any:
        import hvac

        from tokend.vault.http import vault_http_session

        ca_bundle = self.options.ca_bundle
        return hvac.Client(
            url=self.address,
            token="",  # never hvac's fallback to $VAULT_TOKEN or ~/.vault-token
            namespace=self.options.namespace,
            verify=str(ca_bundle) if ca_bundle else True,
            timeout=self._timeout,
            allow_redirects=False,
            session=vault_http_session(self.address, ca_bundle),
        )

    def _is_dead(self, client: Any) -> bool:
        """After a "permission denied": is it the token itself that is no good?"""
        try:
            client.auth.token.lookup_self()
        except Exception as exc:
            return classify(exc, "", "look up its token", self._timeout).problem is Problem.DENIED
        return False


_LOOKUP = "to tell a revoked token from a refused request"
_CAPABILITIES = "for tokend check to see what each sink may do"
_RENEW_LOGIN = "else it logs in again at every renewal instead of renewing"
_RENEW_GIVEN = "else the token it was given expires at the end of its TTL"


def _lookup_self(client: Any) -> Any:
    return client.auth.token.lookup_self()


def _renew_self(client: Any) -> Any:
    return client.auth.token.renew_self()


def _capabilities(client: Any) -> Any:
    return client.sys.get_capabilities(paths=["sys/health"])


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
