"""`compat: requesttoken`: the original helper's `POST /requesttoken`, so its clients keep their
code: JSON `{"username": ..., "password": ...}` in, `{"accesstoken": ..., "expires_on": ...}` out,
from tokend's cache.

The username must be a configured password identity's and the password its configured password:
both compared in constant time, and a password is compared even for an unknown username, so the
answer's timing does not tell which usernames exist. Wrong credentials are a 401 with a JSON error
(the original answered errors with HTTP 200), and after a few for one username within a minute,
every request naming it is refused with a 429 until the minute is over (the original forwarded
every bad password to Entra ID: account lockout), before any configured secret is read. The
budget is the username's, not a client address's: on loopback every client has the same address,
and any of 127.0.0.0/8 reaches the listener, so a per-address budget would be shared by all and
yet bypassed by any. The credentials a client sends are never echoed, logged or kept.

A password identity is one whose credential has `username` and `password` secret references
(the `password` credential type); its token is the one configured token of that identity the
endpoint serves (or the one whose resource the request names, if it has several).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from tokend.config import Config
from tokend.endpoint.app import Answer, Receive, Scope
from tokend.endpoint.catalog import PasswordIdentity, password_identities, resource_key
from tokend.endpoint.options import EndpointOptions
from tokend.endpoint.supply import Supply, Unavailable
from tokend.secrets import SecretError, SecretReference
from tokend.untrusted import json_or_none

if TYPE_CHECKING:
    from tokend.resources import Resources

log = logging.getLogger("tokend.endpoint")
Headers = tuple[tuple[bytes, bytes], ...]

FAILURES_ALLOWED = 5
"""Wrong credentials a username may be sent per `WINDOW` before it is refused for the rest of it."""
WINDOW = 60.0
MAX_USERNAMES = 10_000
"""Usernames remembered (the least recently failed are forgotten first): a client that makes up
usernames to push a real one out must send thousands of requests per five guesses."""


class RateLimit:
    """Failures per key (a username's digest) in a sliding window, for a bounded number of keys."""

    def __init__(self) -> None:
        self._failures: OrderedDict[bytes, list[float]] = OrderedDict()

    def retry_after(self, key: bytes, now: float) -> int:
        """Seconds until `key` may be tried again (0: now)."""
        recent = [t for t in self._failures.get(key, ()) if now - t < WINDOW]
        if len(recent) < FAILURES_ALLOWED:
            return 0
        return max(int(WINDOW - (now - recent[0])) + 1, 1)

    def failed(self, key: bytes, now: float) -> None:
        recent = [t for t in self._failures.pop(key, []) if now - t < WINDOW]
        self._failures[key] = [*recent, now][-FAILURES_ALLOWED:]
        while len(self._failures) > MAX_USERNAMES:
            self._failures.popitem(last=False)


class RequestToken:
    def __init__(
        self,
        config: Config,
        options: EndpointOptions,
        supply: Supply,
        resources: Resources | None = None,
    ) -> None:
        self.identities = password_identities(config, options)
        self._supply = supply
        self._resources = resources
        """The daemon's shared clients: where a password kept in Vault is read."""
        self._limit = RateLimit()

    async def __call__(self, scope: Scope, receive: Receive) -> Answer:
        if scope["method"] not in ("POST", "GET"):
            return _error(405, "invalid_request", "POST a JSON body", "not_found")
        body = (await receive())["body"]
        credentials = _credentials(body)
        if credentials is None:
            return _error(
                400,
                "invalid_request",
                'send JSON {"username": ..., "password": ...}',
                "bad_request",
            )
        username, password, resource = credentials
        # Usernames compare as Entra ID compares them: without regard to case.
        key, now = _digest(username.casefold()), time.monotonic()
        if wait := self._limit.retry_after(key, now):  # even the right password, meanwhile
            message = "too many wrong credentials"
            retry: Headers = ((b"retry-after", str(wait).encode()),)
            return _error(429, "too_many_attempts", message, "rate_limited", retry)
        identity = await self._check(key, password)
        if identity is None:
            self._limit.failed(key, now)
            client = scope["client"][0] if scope.get("client") else "local"
            log.debug("requesttoken refused: wrong username or password (client %s)", client)
            return _error(401, "invalid_credentials", "wrong username or password", "unauthorized")
        token_name = _token_for(identity, resource)
        if token_name is None:
            message = (
                "tokend serves no token of this identity for that resource"
                if resource is not None or not identity.tokens
                else "this identity has several tokens: add resource to the request"
            )
            return _error(400, "invalid_request", message, "not_served")
        token = await self._supply.token(token_name)
        if isinstance(token, Unavailable):
            message, retry = token.message, token.headers
            return _error(503, "temporarily_unavailable", message, "unavailable", retry)
        expires_on = str(int(token.expires_at.timestamp()))
        return Answer(200, {"accesstoken": token.value, "expires_on": expires_on}, "success")

    async def _check(self, given_user: bytes, password: str) -> PasswordIdentity | None:
        """The identity these credentials are right for (`given_user`: the casefolded username's
        digest); every identity's password is compared, so timing says nothing about which
        username exists."""
        given_password = _digest(password)
        match = None
        for identity in self.identities:
            try:
                user = await self._digest_of(identity.username, casefold=True)
                user_ok = hmac.compare_digest(given_user, user)
                password_ok = hmac.compare_digest(
                    given_password, await self._digest_of(identity.password)
                )
            except SecretError as exc:
                log.warning("requesttoken: identity %s: %s", identity.name, exc)
                continue
            if user_ok and password_ok and match is None:
                match = identity
        return match

    async def _digest_of(self, reference: SecretReference, *, casefold: bool = False) -> bytes:
        """The configured value, read now (replacing the secret file takes effect at once)."""
        value = (await reference.read(self._resources)).reveal()
        return _digest(value.casefold() if casefold else value)


def _credentials(body: bytes) -> tuple[str, str, str | None] | None:
    document = json_or_none(body or b"null")
    if not isinstance(document, dict):
        return None
    username, password, resource = (document.get(k) for k in ("username", "password", "resource"))
    if not (isinstance(username, str) and isinstance(password, str) and username and password):
        return None
    return username, password, resource if isinstance(resource, str) else None


def _token_for(identity: PasswordIdentity, resource: str | None) -> str | None:
    if resource is not None:
        return identity.tokens.get(resource_key(resource))
    if len(identity.tokens) == 1:
        return next(iter(identity.tokens.values()))
    return None


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def _error(
    status: int,
    error: str,
    description: str,
    result: str,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> Answer:
    """The original helper's error shape (`error`, `description`), with a real status code."""
    return Answer(status, {"error": error, "description": description}, result, headers)
