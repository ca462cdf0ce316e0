"""The JWKS cache: issuers' discovery documents and signing keys, shared by every token whose
minted tokens are checked before publishing (`verify:`).

A shared resource with defaults (the optional top-level `jwks:` section tunes it). Keys are kept
for `max_age` (24 h: Entra ID rotates its keys with weeks of overlap); a token signed by a key
the cache does not hold makes it fetch the set again, at most once per `refetch_interval` (1
minute), so a flood of forged or stray tokens cannot turn into a flood of requests. Concurrent
lookups of the same URL share one fetch.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from tokend.durations import PositiveDuration
from tokend.errors import TokendError
from tokend.redaction import redactor
from tokend.resources import RESOURCES, Environment, ResourceKind
from tokend.transport import url_problem
from tokend.untrusted import json_or_none

if TYPE_CHECKING:
    import jwt

    from tokend.oauth.http import Clients

# httpx2 and PyJWT load when a key set is first fetched: the cache is registered (a shared
# resource with defaults) by every process, but used only by tokens that ask for `verify:`.

log = logging.getLogger("tokend.jwks")


class JwksOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    refetch_interval: PositiveDuration = timedelta(minutes=1)
    """At most one fetch per key set in this time when a token names an unknown key."""
    max_age: PositiveDuration = timedelta(hours=24)
    """Discovery documents and key sets are fetched again when older than this."""
    timeout: PositiveDuration = timedelta(seconds=10)


class JwksError(TokendError):
    """A discovery document or key set could not be fetched; `transient` unless the server
    said it does not exist (a 4xx) or the URL may not be used."""

    def __init__(
        self, url: str, reason: str, *, transient: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{url}: {reason}", code="jwks_unavailable", transient=transient)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Connection:
    """How to reach an issuer: the identity's TLS and plain-http settings."""

    ca_bundle: Path | None = None
    allow_insecure_http: bool = False


@dataclass
class _Entry:
    fetched_at: datetime
    document: dict[str, Any]
    keys: dict[str | None, jwt.PyJWK] = field(default_factory=dict)


class JwksCache:
    """Discovery documents and key sets by URL."""

    def __init__(self, options: JwksOptions, environment: Environment) -> None:
        self._options = options
        self._clock = environment.clock
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._http: Clients | None = None

    async def document(self, url: str, connection: Connection) -> dict[str, Any]:
        """The JSON document at `url` (a discovery document), fetched at most every max_age."""
        entry, _ = await self._entry(url, connection, stale_after=self._options.max_age)
        return entry.document

    async def key(self, jwks_uri: str, kid: str | None, connection: Connection) -> jwt.PyJWK | None:
        """The key `kid` of the set at `jwks_uri` (the only key, when `kid` is None and the set
        has one), or None when a fresh fetch of the set does not hold it. Raises a transient
        `JwksError` (with `retry_after`) when the set was fetched too recently to fetch again."""
        interval = self._options.refetch_interval
        entry, _ = await self._entry(jwks_uri, connection, stale_after=self._options.max_age)
        found = _pick(entry, kid)
        if found is None:
            entry, fetched = await self._entry(jwks_uri, connection, stale_after=interval)
            found = _pick(entry, kid)
            if found is None and not fetched:  # a newer set may hold it: try again later
                age = self._clock.now() - entry.fetched_at
                named = redactor.shown(repr(kid), 80)  # from the token's header: the peer's
                raise JwksError(
                    jwks_uri,
                    f"key {named} is not in the set fetched {age.total_seconds():.0f}s ago; "
                    f"it is fetched again at most every {interval.total_seconds():.0f}s",
                    transient=True,
                    retry_after=(interval - age).total_seconds(),
                )
        return found

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    def close_sync(self) -> None:
        self._http = None  # nothing was sent outside an event loop: no connections to close

    async def _entry(
        self, url: str, connection: Connection, *, stale_after: timedelta
    ) -> tuple[_Entry, bool]:
        """The entry for `url`, fetched first if older than `stale_after`; and whether this
        call fetched it."""
        lock = self._locks.setdefault(url, asyncio.Lock())
        async with lock:  # one fetch per URL at a time; the others take its result
            entry = self._entries.get(url)
            if entry is not None and self._clock.now() - entry.fetched_at < stale_after:
                return entry, False
            entry = self._entries[url] = await self._fetch(url, connection)
            return entry, True

    async def _fetch(self, url: str, connection: Connection) -> _Entry:
        from tokend.oauth.http import ExchangeFailed

        if problem := url_problem(url, allow_insecure_http=connection.allow_insecure_http):
            raise JwksError(url, problem, transient=False)
        fetched_at = self._clock.now()
        try:
            answer = await self._clients().exchange(
                "GET", url, ca_bundle=connection.ca_bundle, headers={"Accept": "application/json"}
            )
        except ExchangeFailed as exc:
            raise JwksError(url, exc.reason, transient=True) from None
        status = answer.status
        if not 200 <= status < 300:
            raise JwksError(url, f"HTTP {status}", transient=status >= 500 or status == 429)
        document = json_or_none(answer.body)
        if not isinstance(document, dict):
            raise JwksError(
                url, f"HTTP {status} with a body that is not a JSON object", transient=True
            )
        log.debug("fetched %s", url)
        return _Entry(fetched_at, document, _keys(document))

    def _clients(self) -> Clients:
        from tokend.oauth.http import Clients

        if self._http is None:
            seconds = self._options.timeout.total_seconds()
            self._http = Clients(deadline=seconds, connect_timeout=seconds, max_connections=4)
        return self._http


def _keys(document: dict[str, Any]) -> dict[str | None, jwt.PyJWK]:
    """The signing keys of a JWK set, by `kid` (keys PyJWT cannot use are left out)."""
    import jwt

    keys: dict[str | None, jwt.PyJWK] = {}
    raw = document.get("keys")
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, dict) or item.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(item)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            continue
        keys[key.key_id] = key
    return keys


def _pick(entry: _Entry, kid: str | None) -> jwt.PyJWK | None:
    if kid is not None:
        return entry.keys.get(kid)
    return next(iter(entry.keys.values())) if len(entry.keys) == 1 else None


def _create(options: JwksOptions, environment: Environment) -> JwksCache:
    return JwksCache(options, environment)


JWKS: ResourceKind[JwksOptions, JwksCache] = RESOURCES.register(
    "jwks",
    ResourceKind(
        section="jwks",
        options=JwksOptions,
        create=_create,
        summary="refetch_interval, max_age, timeout",
        default=JwksOptions,
    ),
)
