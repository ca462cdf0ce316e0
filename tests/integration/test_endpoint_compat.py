"""`compat: requesttoken`: the original helper's clients (`requests.post(url, json={username,
password})`, reading `accesstoken`) get tokend's cached token; wrong credentials are a 401 with a
JSON error and, repeated, a 429; nothing they send is echoed or logged.

The identity is a real `type: password` one, signed in at the fake Entra ID with its users
(`tests.support.delegated`); the tokend under test runs in this process on virtual time, its
endpoint on a real socket.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import entra_identity
from tests.support.delegated import (
    PASSWORD,
    USER,
    delegated_config,
    env,
    password_credential,
    users_idp,
)
from tests.support.harness import Harness, harness
from tests.support.idp import CLIENT_SECRET, FakeIdp
from tests.support.servers import free_port, post_json
from tokend.config import validate_config
from tokend.endpoint.compat import FAILURES_ALLOWED, RequestToken
from tokend.endpoint.service import Endpoint
from tokend.metrics import Metrics

USERNAME = USER
WRONG = "CANARY-wrong-password-7a7a"


@dataclass
class Compat:
    url: str
    running: Harness

    async def post(self, body: object) -> requests.Response:
        return await asyncio.to_thread(requests.post, self.url, json=body, timeout=10)

    def held(self) -> str:
        token = self.running.job("crm").token
        assert token is not None
        return token.value


@asynccontextmanager
async def running_compat(idp: FakeIdp, tmp: Path) -> AsyncIterator[Compat]:
    port = free_port()
    document = delegated_config(
        idp,
        tmp,
        password_credential(password={"env": "HELPER_PASSWORD"}),
        {"crm": {"resource": "https://crm.example"}},
        endpoint={"listen": f"127.0.0.1:{port}", "protocols": [], "compat": "requesttoken"},
    )
    document["identities"]["app"] = entra_identity(idp, CLIENT_SECRET)
    document["tokens"]["other"] = {
        "identity": "app",
        "resource": "https://other.example",
        "sinks": [{"type": "file", "path": str(tmp / "other.token")}],
    }
    config = validate_config(document)
    async with harness(config) as running:
        assert await running.refresh_all()
        assert config.endpoint is not None
        endpoint = Endpoint(
            config,
            config.endpoint,
            engine=running.engine,
            metrics=Metrics(running.clock),
            clock=running.clock,
        )
        serving = asyncio.create_task(endpoint.serve())
        try:
            yield Compat(f"http://127.0.0.1:{port}/requesttoken", running)
        finally:
            endpoint.stop()
            await serving


Scenario = Callable[[Compat], Awaitable[None]]


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[Scenario], None]:
    """Runs a scenario against a running compat endpoint (each test on its own event loop)."""
    for key, value in env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HELPER_PASSWORD", PASSWORD)

    def run_scenario(scenario: Scenario) -> None:
        async def main() -> None:
            with users_idp() as idp:
                async with running_compat(idp, tmp_path) as compat:
                    await scenario(compat)

        asyncio.run(main())

    return run_scenario


def test_the_original_clients_flow(
    run: Callable[[Scenario], None], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    run(the_original_clients_flow)
    assert PASSWORD not in caplog.text


async def the_original_clients_flow(compat: Compat) -> None:
    response = await compat.post({"username": USERNAME, "password": PASSWORD})
    assert response.status_code == 200
    body = response.json()
    assert body["accesstoken"] == compat.held()
    upper = await compat.post({"username": USERNAME.upper(), "password": PASSWORD})
    assert upper.json()["accesstoken"] == compat.held()  # user names: as Entra ID compares them
    assert int(body["expires_on"]) == int(compat.running.job("crm").token.expires_at.timestamp())  # type: ignore[union-attr]
    assert set(body) == {"accesstoken", "expires_on"}


def test_wrong_credentials_are_refused_then_rate_limited(
    run: Callable[[Scenario], None], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    run(wrong_credentials)
    assert WRONG not in caplog.text and PASSWORD not in caplog.text
    assert "CANARY-token" not in caplog.text


async def wrong_credentials(compat: Compat) -> None:
    for body in (
        {"username": USERNAME, "password": WRONG},
        {"username": "nobody@contoso.example", "password": PASSWORD},
        {"username": USERNAME, "password": PASSWORD.lower()},
        {"username": USERNAME, "password": PASSWORD + " "},
    ):
        response = await compat.post(body)
        assert response.status_code == 401
        assert response.json() == {
            "error": "invalid_credentials",
            "description": "wrong username or password",
        }
        assert WRONG not in response.text and PASSWORD not in response.text
    # The unknown username's failure is not this identity's: its fifth is this one.
    assert (await compat.post({"username": USERNAME, "password": WRONG})).status_code == 401
    await compat.post({"username": USERNAME.upper(), "password": WRONG})  # the same identity
    limited = await compat.post({"username": USERNAME, "password": PASSWORD})
    assert limited.status_code == 429  # even right credentials, for the rest of the window
    assert int(limited.headers["Retry-After"]) >= 1
    assert "accesstoken" not in limited.text


def test_the_budget_is_the_usernames_whatever_the_client_address(
    run: Callable[[Scenario], None],
) -> None:
    """On loopback any of 127.0.0.0/8 reaches the listener: wrong passwords sent from five
    addresses exhaust one budget (a per-address one would give each five). Other usernames do
    not spend it: the identity's right password still works after them."""

    async def scenario(compat: Compat) -> None:
        for _ in range(FAILURES_ALLOWED):
            refused = await _post_from(compat, "127.0.0.9", {"username": "x@y.z", "password": "p"})
            assert refused == 401
        assert (
            await _post_from(compat, "127.0.0.2", {"username": USERNAME, "password": PASSWORD})
            == 200
        )
        for source in range(3, 3 + FAILURES_ALLOWED):
            wrong = {"username": USERNAME, "password": WRONG}
            assert await _post_from(compat, f"127.0.0.{source}", wrong) == 401
        right = {"username": USERNAME, "password": PASSWORD}
        assert await _post_from(compat, "127.0.0.200", right) == 429

    run(scenario)


def test_a_refused_username_costs_no_secret_read(
    run: Callable[[Scenario], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a username's budget is spent, its requests are refused before any configured
    username or password is read (each may be a Vault request)."""
    reads: list[object] = []
    reading = RequestToken._digest_of

    async def counted(self: RequestToken, reference: Any, *, casefold: bool = False) -> bytes:
        reads.append(reference)
        return await reading(self, reference, casefold=casefold)

    monkeypatch.setattr(RequestToken, "_digest_of", counted)

    async def scenario(compat: Compat) -> None:
        for _ in range(FAILURES_ALLOWED):
            assert (await compat.post({"username": USERNAME, "password": WRONG})).status_code == 401
        assert reads  # each wrong password was compared with the configured ones
        reads.clear()
        limited = await compat.post({"username": USERNAME, "password": PASSWORD})
        assert limited.status_code == 429 and reads == []

    run(scenario)


async def _post_from(compat: Compat, source: str, body: object) -> int:
    """The status of a POST of `body` sent from the local address `source`."""
    status, _ = await asyncio.to_thread(post_json, compat.url, body, source=source)
    return status


@pytest.mark.parametrize(
    "body",
    [None, "text", ["list"], {"username": USERNAME}, {"username": USERNAME, "password": 5}, {}],
)
def test_malformed_requests_are_a_400(run: Callable[[Scenario], None], body: object) -> None:
    async def scenario(compat: Compat) -> None:
        response = await compat.post(body)
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_request"

    run(scenario)


def test_json_nested_past_the_stack_is_a_400(run: Callable[[Scenario], None]) -> None:
    """A client's body that `json` answers with RecursionError, not ValueError."""

    async def scenario(compat: Compat) -> None:
        headers = {"Content-Type": "application/json"}
        post = functools.partial(requests.post, data=b"[" * 5000, headers=headers, timeout=10)
        response = await asyncio.to_thread(post, compat.url)
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_request"

    run(scenario)


def test_a_password_is_read_at_each_request(
    run: Callable[[Scenario], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(compat: Compat) -> None:
        monkeypatch.setenv("HELPER_PASSWORD", "CANARY-rotated-password-99")
        refused = await compat.post({"username": USERNAME, "password": PASSWORD})
        assert refused.status_code == 401  # the old one no longer works: nothing was cached
        rotated = {"username": USERNAME, "password": "CANARY-rotated-password-99"}
        assert (await compat.post(rotated)).json()["accesstoken"] == compat.held()

    run(scenario)
