"""`TokenClient`: sends the token requests grants build, over pooled httpx2 clients.

It finds the token endpoint (discovering it from an issuer when configured so), asks the
token's grant for a request, sends it within the global cap on concurrent requests, and turns
the answer into a `Token` or a `TransientError` / `PermanentError`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx2

from tokend.clock import SYSTEM_CLOCK, Clock
from tokend.oauth.dialects import Endpoint, Target
from tokend.oauth.errors import (
    Peer,
    PermanentError,
    TokenError,
    TransientError,
    classify_error_response,
)
from tokend.oauth.grants import Grant, exchange_of
from tokend.oauth.http import Clients, ExchangeFailed
from tokend.oauth.response import MalformedResponse, parse_token_response
from tokend.redaction import redactor
from tokend.secrets import SecretError
from tokend.token import Token
from tokend.transport import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_CONCURRENT_REQUESTS,
    DEFAULT_READ_TIMEOUT,
    url_problem,
)
from tokend.untrusted import json_or_none


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """One configured token: its name, the grant that asks for it (tokens of one identity share
    one), and what it is for. One exists per configured token: kept to four slots."""

    name: str
    grant: Grant
    resource: str | None = None
    scopes: tuple[str, ...] = ()

    @property
    def target(self) -> Target:
        return Target(self.resource, self.scopes)


@dataclass(frozen=True, slots=True)
class HttpSettings:
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS


class TokenClient:
    """Acquires tokens. Raises `TransientError` or `PermanentError`, never anything else."""

    def __init__(
        self, settings: HttpSettings | None = None, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self._settings = settings or HttpSettings()
        self._clock = clock
        self._slots = asyncio.Semaphore(self._settings.max_concurrent_requests)
        settings = self._settings
        self._http = Clients(
            deadline=settings.read_timeout,
            connect_timeout=settings.connect_timeout,
            max_connections=settings.max_concurrent_requests,
        )
        self._discovered: dict[str, str] = {}

    async def acquire(self, request: TokenRequest) -> Token:
        grant = request.grant
        peer = Peer(request.name, grant.endpoint.host)
        url = await self._token_url(grant.endpoint, peer)
        async with exchange_of(grant) as exchange:
            for last in (False, True):  # again only when the grant dropped a dead credential
                try:
                    return await self._exchange(request, url, peer)
                except TokenError as exc:
                    error = exchange.failed(exc)
                    if error is not None or last:
                        raise (error or exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _exchange(self, request: TokenRequest, url: str, peer: Peer) -> Token:
        """One request for `request`'s token: built by its grant, sent, answered."""
        grant, target = request.grant, request.target
        try:
            http = await grant.request(url, target)
        except SecretError as exc:
            raise _secret_unavailable(request.name, exc) from None
        async with self._slots:
            sent_at = self._clock.now()
            status, headers, body = await self._send(
                grant.endpoint,
                peer,
                http.method,
                http.url,
                params=http.params or None,
                data=http.form or None,
                headers=http.headers,
            )
        if not 200 <= status < 300:
            raise classify_error_response(
                peer,
                status,
                headers,
                body,
                self._clock.now(),
                transient_statuses=http.retry_statuses,
            )
        if not isinstance(body, dict):
            raise TransientError(
                peer, f"HTTP {status} with a body that is not JSON", code="not_json"
            )
        try:
            token = parse_token_response(
                body, sent_at=sent_at, resource=target.resource, scopes=target.scopes
            )
        except MalformedResponse as exc:
            raise TransientError(peer, f"HTTP {status} but {exc}", code="malformed") from None
        grant.absorb(body)
        return token

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _token_url(self, endpoint: Endpoint, peer: Peer) -> str:
        if endpoint.token_url:
            return endpoint.token_url
        if not endpoint.issuer:
            raise PermanentError(
                peer, "identity has neither token_endpoint nor issuer", code="no_endpoint"
            )
        if url := self._discovered.get(endpoint.issuer):
            return url
        url = await self._discover(endpoint, endpoint.issuer, peer)
        self._discovered[endpoint.issuer] = url
        return url

    async def _discover(self, endpoint: Endpoint, issuer: str, peer: Peer) -> str:
        document_url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        async with self._slots:
            status, headers, body = await self._send(
                endpoint, peer, "GET", document_url, headers={"Accept": "application/json"}
            )
        if status == 404:
            raise PermanentError(
                peer, f"no discovery document at {document_url} (HTTP 404)", code="no_discovery"
            )
        if not 200 <= status < 300:
            raise classify_error_response(peer, status, headers, body, self._clock.now())
        document = body if isinstance(body, dict) else {}
        if document.get("issuer") != issuer:
            named = redactor.shown(repr(document.get("issuer")), 200)  # the peer's, any length
            raise PermanentError(
                peer,
                f"discovery document {document_url} names issuer {named}, "
                f"not the configured {issuer!r}; they must be identical (RFC 8414 section 3.3): "
                "set issuer to the published value, or use token_endpoint",
                code="issuer_mismatch",
            )
        token_url = document.get("token_endpoint")
        if not isinstance(token_url, str):
            raise TransientError(
                peer,
                f"no token_endpoint in discovery document {document_url}",
                code="discovery_incomplete",
            )
        if problem := url_problem(token_url, allow_insecure_http=endpoint.allow_insecure_http):
            raise PermanentError(
                peer, f"discovered token_endpoint: {problem}", code="insecure_endpoint"
            )
        return token_url

    async def _send(
        self, endpoint: Endpoint, peer: Peer, method: str, url: str, **kwargs: Any
    ) -> tuple[int, httpx2.Headers, Any]:
        """One request; returns status, headers and the JSON body (None if it is not JSON)."""
        try:
            answer = await self._http.exchange(method, url, ca_bundle=endpoint.ca_bundle, **kwargs)
        except ExchangeFailed as exc:
            raise TransientError(peer, exc.reason, code=exc.code) from None
        return answer.status, answer.headers, json_or_none(answer.body)


def _secret_unavailable(token: str, exc: SecretError) -> TokenError:
    peer = Peer(token, "config")
    if exc.transient:
        return TransientError(peer, str(exc), code=exc.code)
    return PermanentError(peer, str(exc), code=exc.code)
