"""How tokend speaks HTTP to a peer (an identity provider, a key set): the rules every request
follows, in one place.

Pooled httpx2 clients per CA bundle that never follow a redirect, say `User-Agent:
tokend/<version>`, and, for addresses on this machine (loopback, link-local such as IMDS), ignore
`HTTP(S)_PROXY`. `exchange()` bounds the whole exchange (connecting, sending, the whole answer) by
one deadline, so a peer that drips its answer cannot hold tokend, and reads at most 1 MiB.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpcore2
import httpx2

from tokend.oauth.network import AsyncioBackend
from tokend.transport import USER_AGENT, is_on_this_machine, ssl_context, untrusting_context

MAX_BODY = 1 << 20  # a token response or a key set is a few KiB; past 1 MiB it is not one


class ExchangeFailed(Exception):
    """No complete answer. `reason` is one line; `code` names the kind (`timeout`,
    `too_large`, or the transport error's class name)."""

    def __init__(self, reason: str, code: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass(frozen=True)
class Answer:
    status: int
    headers: httpx2.Headers
    body: bytes


class Clients:
    """The pooled clients of one user of HTTP (the token client, the key-set cache)."""

    def __init__(self, *, deadline: float, connect_timeout: float, max_connections: int) -> None:
        self.deadline = deadline
        self._connect_timeout = connect_timeout
        self._max_connections = max_connections
        self._clients: dict[tuple[Path | None, bool, bool], httpx2.AsyncClient] = {}

    async def exchange(
        self, method: str, url: str, *, ca_bundle: Path | None = None, **kwargs: Any
    ) -> Answer:
        """One request and its whole answer within `deadline`. Raises `ExchangeFailed`; a
        bad CA bundle raises `tokend.transport.CaBundleError`."""
        parts = urlsplit(url)
        direct = is_on_this_machine(parts.hostname or "")
        tls = parts.scheme == "https"
        client = self._client(ca_bundle if tls else None, direct=direct, tls=tls)
        try:
            async with asyncio.timeout(self.deadline):
                async with client.stream(method, url, **kwargs) as response:
                    body = await _read_capped(response)
        except (TimeoutError, httpx2.TimeoutException):
            reason = f"timed out: no complete answer within {self.deadline:g}s"
            raise ExchangeFailed(reason, "timeout") from None
        except httpx2.TransportError as exc:
            raise ExchangeFailed(_transport_reason(exc), type(exc).__name__) from None
        return Answer(response.status_code, response.headers, body)

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    def _client(self, ca_bundle: Path | None, *, direct: bool, tls: bool) -> httpx2.AsyncClient:
        """Without `tls`, a client for `http://` URLs (a loopback identity provider), which
        never loads a CA store (tens of milliseconds before the first token otherwise)."""
        key = (ca_bundle, direct, tls)
        client = self._clients.get(key)
        if client is None:
            verify = ssl_context(ca_bundle) if tls else untrusting_context()
            limits = httpx2.Limits(
                max_connections=self._max_connections,
                max_keepalive_connections=self._max_connections,
            )
            client = self._clients[key] = httpx2.AsyncClient(
                verify=verify,
                timeout=httpx2.Timeout(self.deadline, connect=self._connect_timeout),
                limits=limits,
                follow_redirects=False,
                trust_env=not direct,
                headers={"User-Agent": USER_AGENT},
            )
            # Swapped after construction: given a `transport=`, httpx2 would ignore the
            # environment's proxies (it builds its proxy transports only without one).
            client._transport = _transport(verify, limits)
        return client


def _transport(verify: ssl.SSLContext, limits: httpx2.Limits) -> httpx2.AsyncHTTPTransport:
    """httpx2's transport on a connection pool of asyncio streams (`tokend.oauth.network`),
    for peers reached directly. httpx2 takes no network backend, so its pool is replaced by an
    equal one built with ours (tests check that the pool in use is this one, and that a proxy
    from the environment still gets httpx2's own proxy transport, with the same trust and cap)."""
    transport = httpx2.AsyncHTTPTransport(verify=verify, limits=limits)
    transport._pool = httpcore2.AsyncConnectionPool(
        ssl_context=verify,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=AsyncioBackend(),
    )
    return transport


def _transport_reason(exc: httpx2.TransportError) -> str:
    if refusal := _certificate_refusal(exc):
        detail = refusal.verify_message or "certificate verify failed"
        return (
            f"TLS: the server's certificate is not trusted ({detail}); if a private CA signed "
            "it, set ca_bundle (the identity's or http.ca_bundle) to that CA's certificate"
        )
    return f"{type(exc).__name__}: {str(exc) or 'the connection failed'}"


def _certificate_refusal(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind `exc` (httpx2 and httpcore2 each wrap it)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None or isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


async def _read_capped(response: httpx2.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_BODY:
            raise ExchangeFailed("response body larger than 1 MiB", "too_large")
        chunks.append(chunk)
    return b"".join(chunks)
