"""A fake Entra ID for tests: tokend's development identity provider behind a fault injector,
served over real HTTP on loopback.

Queue faults with `idp.fail(...)`; each token request takes the next one (or gets a real token
when none is queued). Every token request's form and headers are recorded for assertions.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from tests.support.pki import CertPair
from tests.support.servers import serve
from tokend.devidp import DevIdentityProvider

TENANT = "test-tenant"
CLIENT_ID = "test-client"
CLIENT_SECRET = "test-secret-9f8e7d"

Fault = Callable[[], Awaitable[Response | None]]
"""Answers one token request; None means: answer it normally (after any side effect)."""


@dataclass
class RecordedRequest:
    path: str
    form: dict[str, str]
    headers: dict[str, str]
    query: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeIdp:
    provider: DevIdentityProvider
    url: str = ""
    faults: deque[Fault] = field(default_factory=deque)
    requests: list[RecordedRequest] = field(default_factory=list)
    policy: Callable[[RecordedRequest], Fault | None] | None = None
    """Consulted for token requests when no fault is queued: a fault, or None to answer."""

    @property
    def authority(self) -> str:
        return self.url

    def token_url(self, version: int = 2) -> str:
        path = "oauth2/token" if version == 1 else "oauth2/v2.0/token"
        return f"{self.url}/{TENANT}/{path}"

    @property
    def issuer(self) -> str:
        return self.provider.issuer(TENANT)

    def fail(self, *faults: Fault) -> None:
        self.faults.extend(faults)

    def reset(self) -> None:
        self.policy = None
        self.faults.clear()
        self.requests.clear()
        self.provider.issued.clear()

    @property
    def token_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/token")]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        body = await request.body()
        recorded = RecordedRequest(
            scope["path"],
            dict(parse_qsl(body.decode())),
            dict(request.headers),
            dict(parse_qsl(scope["query_string"].decode())),
        )
        self.requests.append(recorded)
        fault = self._fault_for(recorded) if scope["path"].endswith("/token") else None
        if fault is not None:
            response = await fault()
            if response is not None:
                await response(scope, receive, send)
                return
        await self.provider.app(scope, _replay(body), send)

    def _fault_for(self, request: RecordedRequest) -> Fault | None:
        if self.faults:
            return self.faults.popleft()
        return self.policy(request) if self.policy else None


def _replay(body: bytes) -> Receive:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


@contextmanager
def running_idp(
    lifetime: timedelta = timedelta(hours=1),
    kind: type[DevIdentityProvider] = DevIdentityProvider,
    tls: CertPair | None = None,
    **options: Any,
) -> Iterator[FakeIdp]:
    """`kind`: the provider behind the fault injector (`tests.support.entra.EntraFake` adds
    certificate, federated and managed-identity credentials); `tls`: served over HTTPS with
    that certificate."""
    provider = kind(clients={CLIENT_ID: CLIENT_SECRET}, lifetime=lifetime, **options)
    idp = FakeIdp(provider)
    with serve(idp, tls) as url:
        idp.url = url
        provider.base_url = url
        yield idp


# --- faults ------------------------------------------------------------------------------------


def status(code: int, body: Any = None, headers: dict[str, str] | None = None) -> Fault:
    async def respond() -> Response:
        if body is None:
            return Response(status_code=code, headers=headers)
        return JSONResponse(body, status_code=code, headers=headers)

    return respond


def raw(code: int, content: str, media_type: str, headers: dict[str, str] | None = None) -> Fault:
    async def respond() -> Response:
        return Response(content, status_code=code, media_type=media_type, headers=headers)

    return respond


def html(code: int = 502) -> Fault:
    page = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
    return raw(code, page, "text/html")


def too_many_requests(retry_after: str) -> Fault:
    return status(429, {"error": "too_many_requests"}, {"Retry-After": retry_after})


def entra_error(code: int, error: str, aadsts: int, description: str = "") -> Fault:
    """An Entra-shaped error; like the real service, fresh trace and correlation ids each time."""

    async def respond() -> Response:
        trace, correlation = uuid.uuid4(), uuid.uuid4()
        body = {
            "error": error,
            "error_description": f"AADSTS{aadsts}: {description or error}\r\nTrace ID: {trace}",
            "error_codes": [aadsts],
            "trace_id": str(trace),
            "correlation_id": str(correlation),
        }
        return JSONResponse(body, status_code=code)

    return respond


def truncated_json() -> Fault:
    return raw(200, '{"token_type": "Bearer", "expires_in": 3599, "access_tok', "application/json")


def token_body(body: dict[str, Any]) -> Fault:
    """A 200 with exactly this JSON body (e.g. an opaque canary token)."""
    return raw(200, json.dumps(body), "application/json")


def meanwhile(action: Callable[[], object]) -> Fault:
    """Do `action` while handling the request (e.g. move a fake clock), then answer normally."""

    async def respond() -> None:
        action()

    return respond


def drip(every: float, count: int) -> Fault:
    """A 200 whose body comes one byte every `every` seconds, `count` bytes in all: each read
    is quick, the whole answer is not."""

    async def respond() -> Response:
        async def body() -> AsyncIterator[bytes]:
            for _ in range(count):
                await asyncio.sleep(every)
                yield b" "

        return StreamingResponse(body(), status_code=200, media_type="application/json")

    return respond


def hang(seconds: float) -> Fault:
    async def respond() -> Response:
        await asyncio.sleep(seconds)
        return Response(status_code=504)

    return respond
