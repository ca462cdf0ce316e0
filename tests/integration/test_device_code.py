"""The device code flow's client side (RFC 8628) against a scripted endpoint on loopback, on a
fake clock whose sleep only moves time: what it sends, how long it waits before each try, when
it gives up, and one exact line per way the sign-in can end."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.clock import EPOCH, FakeClock
from tests.support.pki import CertificateAuthority
from tests.support.servers import free_port, serve
from tokend.oauth.device_code import (
    GRANT_TYPE,
    DeviceCode,
    DeviceFlowError,
    poll_for_token,
    request_device_code,
)
from tokend.oauth.http import Clients

TOKEN = {"access_token": "at-1", "token_type": "Bearer", "expires_in": 3600, "refresh_token": "r"}
CODE = DeviceCode("dc-secret", "ABCD-EFGH", "https://login.example/device", 900, 5)


@dataclass
class Endpoint:
    """Answers each POST with the next of `answers` (status, JSON body or raw bytes)."""

    url: str = ""
    answers: list[tuple[int, Any]] = field(default_factory=list)
    forms: list[dict[str, str]] = field(default_factory=list)
    accepts: list[str | None] = field(default_factory=list)

    async def answer(self, request: Request) -> Response:
        self.forms.append(dict(parse_qsl((await request.body()).decode())))
        self.accepts.append(request.headers.get("accept"))
        status, body = self.answers.pop(0) if self.answers else (200, TOKEN)
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return Response(raw, status_code=status, media_type="application/json")


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    scripted = Endpoint()
    app = Starlette(routes=[Route("/{path:path}", scripted.answer, methods=["POST"])])
    with serve(app) as url:
        scripted.url = f"{url}/tenant/oauth2/v2.0/token"
        yield scripted


@dataclass
class Waits:
    clock: FakeClock = field(default_factory=lambda: FakeClock(EPOCH))
    seconds: list[float] = field(default_factory=list)

    async def sleep(self, seconds: float) -> None:
        self.seconds.append(seconds)
        self.clock.advance(seconds)


def poll(url: str, waits: Waits, code: DeviceCode = CODE) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        http = Clients(deadline=5, connect_timeout=5, max_connections=1)
        try:
            return await poll_for_token(
                http, url, "app-1", code, clock=waits.clock, sleep=waits.sleep
            )
        finally:
            await http.aclose()

    return asyncio.run(main())


def failure(url: str, waits: Waits, code: DeviceCode = CODE) -> str:
    with pytest.raises(DeviceFlowError) as caught:
        poll(url, waits, code)
    assert caught.value.code == "device_flow"
    return str(caught.value)


def test_polling_sends_the_device_code_and_returns_the_token(endpoint: Endpoint) -> None:
    endpoint.answers = [(400, {"error": "authorization_pending"})] * 2
    waits = Waits()
    assert poll(endpoint.url, waits) == TOKEN
    assert waits.seconds == [5, 5, 5]
    assert (
        endpoint.forms
        == [{"grant_type": GRANT_TYPE, "client_id": "app-1", "device_code": "dc-secret"}] * 3
    )
    assert endpoint.accepts == ["application/json"] * 3
    assert GRANT_TYPE == "urn:ietf:params:oauth:grant-type:device_code"


@pytest.mark.parametrize(
    "slower",
    [(400, {"error": "slow_down"}), (429, {}), (500, {}), (503, b"<html>busy</html>")],
)
def test_slow_down_and_busy_answers_add_five_seconds(
    endpoint: Endpoint, slower: tuple[int, Any]
) -> None:
    endpoint.answers = [slower, slower, (400, {"error": "authorization_pending"})]
    waits = Waits()
    poll(endpoint.url, waits)
    assert waits.seconds == [5, 10, 15, 15]


def test_a_network_failure_also_slows_down(endpoint: Endpoint) -> None:
    dead = f"http://127.0.0.1:{free_port()}/token"
    waits = Waits()
    message = failure(dead, waits, DeviceCode("dc", "A", "https://x.example/d", 40, 5))
    assert waits.seconds == [5, 10, 15]  # 30 s waited; another 20 would pass the 40 s code
    assert message == "nobody signed in before the code expired: run tokend login again"


@pytest.mark.parametrize(
    ("expires_in", "waits_made"),
    [(16, [5, 5, 5]), (15, [5, 5]), (5, []), (6, [5])],
)
def test_no_try_is_made_that_would_end_after_the_code_expires(
    endpoint: Endpoint, expires_in: int, waits_made: list[int]
) -> None:
    endpoint.answers = [(400, {"error": "authorization_pending"})] * 10
    waits = Waits()
    code = DeviceCode("dc", "A", "https://x.example/d", expires_in, 5)
    message = failure(endpoint.url, waits, code)
    assert message == "nobody signed in before the code expired: run tokend login again"
    assert waits.seconds == waits_made


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ((400, {"error": "expired_token"}),
         "the code expired before the sign-in completed: run tokend login again"),
        ((400, {"error": "access_denied"}), "the sign-in was declined"),
        ((400, {"error": "authorization_declined"}), "the sign-in was declined"),
        ((400, {"error": "invalid_grant", "error_codes": [70000]}),
         "no token: 127.0.0.1: HTTP 400 invalid_grant (AADSTS70000)"),
        ((401, b"not json"),
         "no token: 127.0.0.1: HTTP 401 with a body that is not a JSON token response"),
        ((200, ["not", "an", "object"]),
         "no token: 127.0.0.1: HTTP 200 with a body that is not a JSON token response"),
    ],
)  # fmt: skip
def test_how_a_sign_in_ends(endpoint: Endpoint, answer: tuple[int, Any], message: str) -> None:
    endpoint.answers = [answer]
    waits = Waits()
    assert failure(endpoint.url, waits) == message
    assert waits.seconds == [5]


def test_a_token_answer_is_checked(endpoint: Endpoint) -> None:
    endpoint.answers = [(200, {"token_type": "Bearer", "expires_in": 3600})]
    assert failure(endpoint.url, Waits()) == (
        f"{endpoint.url}: the token answer is unusable: response has no access_token"
    )


def test_the_device_code_request(endpoint: Endpoint) -> None:
    body = {
        "device_code": "dc-2",
        "user_code": "WXYZ-1234",
        "verification_uri": "https://login.example/device",
        "verification_uri_complete": "https://login.example/device?code=WXYZ-1234",
        "expires_in": 600,
        "interval": 7,
    }
    endpoint.answers = [(200, body)]

    async def main() -> DeviceCode:
        http = Clients(deadline=5, connect_timeout=5, max_connections=1)
        try:
            return await request_device_code(
                http, endpoint.url, "app-1", ("openid", "offline_access"), clock=FakeClock()
            )
        finally:
            await http.aclose()

    code = asyncio.run(main())
    assert code == DeviceCode(
        "dc-2",
        "WXYZ-1234",
        "https://login.example/device",
        600,
        7,
        "https://login.example/device?code=WXYZ-1234",
    )
    assert endpoint.forms == [{"client_id": "app-1", "scope": "openid offline_access"}]
    assert endpoint.accepts == ["application/json"]
    assert "dc-2" not in repr(code)


def test_a_device_code_endpoint_that_does_not_answer() -> None:
    url = f"http://127.0.0.1:{free_port()}/devicecode"

    async def main() -> None:
        http = Clients(deadline=5, connect_timeout=5, max_connections=1)
        try:
            await request_device_code(http, url, "app-1", ("s",), clock=FakeClock())
        finally:
            await http.aclose()

    with pytest.raises(DeviceFlowError) as caught:
        asyncio.run(main())
    assert str(caught.value).startswith(f"{url}: ConnectError: ")


@pytest.mark.parametrize(
    ("extra", "complete"),
    [
        ({"verification_uri_complete": "javascript:alert(1)"}, None),
        ({"verification_uri_complete": 7}, None),
        ({"verification_uri_complete": "http://x.example/d?c=1"}, "http://x.example/d?c=1"),
        ({}, None),
    ],
)
def test_only_a_web_address_is_shown_to_complete_the_sign_in(
    endpoint: Endpoint, extra: dict[str, Any], complete: str | None
) -> None:
    body = {"device_code": "d", "user_code": "U", "verification_uri": "https://x.example/d",
            "expires_in": 60, **extra}  # fmt: skip
    endpoint.answers = [(200, body)]

    assert asyncio.run(_device_code(endpoint)).verification_uri_complete == complete


@pytest.mark.parametrize(
    ("field_name", "value", "accepted"),
    [
        ("expires_in", 86_400, 86_400),
        ("expires_in", 86_401, None),
        ("expires_in", 0, 0),
        ("expires_in", True, None),
        ("expires_in", "12a", None),
        ("interval", 600, 600),
        ("interval", 601, None),
    ],
)
def test_the_seconds_an_answer_may_give(
    endpoint: Endpoint, field_name: str, value: Any, accepted: int | None
) -> None:
    body = {"device_code": "d", "user_code": "U", "verification_uri": "https://x.example/d",
            "expires_in": 60, "interval": 5, field_name: value}  # fmt: skip
    endpoint.answers = [(200, body)]

    if accepted is None:
        with pytest.raises(DeviceFlowError) as caught:
            asyncio.run(_device_code(endpoint))
        assert str(caught.value) == (
            f"{endpoint.url}: the device code answer is unusable: {field_name} is missing or not"
            " a sane number of seconds"
        )
    else:
        assert getattr(asyncio.run(_device_code(endpoint)), field_name) == accepted


def test_a_refused_device_code_is_one_line_with_the_time_of_the_clock(endpoint: Endpoint) -> None:
    endpoint.answers = [(503, {"error": "temporarily_unavailable"})]

    async def main() -> None:
        http = Clients(deadline=5, connect_timeout=5, max_connections=1)
        try:
            await request_device_code(http, endpoint.url, "a", ("s",), clock=FakeClock())
        finally:
            await http.aclose()

    with pytest.raises(DeviceFlowError) as caught:
        asyncio.run(main())
    assert str(caught.value) == "no device code: 127.0.0.1: HTTP 503 temporarily_unavailable"


def test_an_identity_provider_with_a_private_ca(tmp_path: Path) -> None:
    authority = CertificateAuthority(tmp_path, "private CA")
    scripted = Endpoint(answers=[(200, CODE_ANSWER), (200, TOKEN)])
    app = Starlette(routes=[Route("/{path:path}", scripted.answer, methods=["POST"])])
    tls = authority.issue("idp", "idp", server_ips=("127.0.0.1",))
    waits = Waits()

    async def login(ca_bundle: Path | None) -> dict[str, Any]:
        http = Clients(deadline=5, connect_timeout=5, max_connections=1)
        try:
            code = await request_device_code(
                http, f"{url}/devicecode", "a", ("s",), clock=waits.clock, ca_bundle=ca_bundle
            )
            return await poll_for_token(
                http, f"{url}/token", "a", code, clock=waits.clock, sleep=waits.sleep,
                ca_bundle=ca_bundle,
            )  # fmt: skip
        finally:
            await http.aclose()

    with serve(app, tls=tls) as url:
        assert asyncio.run(login(authority.cert)) == TOKEN
        with pytest.raises(DeviceFlowError, match="TLS: the server's certificate is not trusted"):
            asyncio.run(login(None))


CODE_ANSWER = {
    "device_code": "dc",
    "user_code": "U-1",
    "verification_uri": "https://x.example/d",
    "expires_in": 60,
    "interval": 1,
}


async def _device_code(endpoint: Endpoint) -> DeviceCode:
    """One device code request to `endpoint`, with its own clients."""
    http = Clients(deadline=5, connect_timeout=5, max_connections=1)
    try:
        return await request_device_code(http, endpoint.url, "a", ("s",), clock=FakeClock())
    finally:
        await http.aclose()
