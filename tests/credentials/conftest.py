"""The fake Entra ID with credential checks (`tests.support.entra.EntraFake`), one per session,
reset for each test; and helpers that write certificate files and configs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar, cast

import pytest

from tests.support.clock import FakeClock
from tests.support.entra import EntraFake
from tests.support.harness import Harness, harness
from tests.support.idp import CLIENT_ID, TENANT, FakeIdp, running_idp
from tokend.clock import SYSTEM_CLOCK
from tokend.config import validate_config

T = TypeVar("T")


@pytest.fixture(scope="session")
def _entra_server() -> Iterator[FakeIdp]:
    with running_idp(kind=EntraFake) as idp:
        yield idp


@pytest.fixture
def entra(_entra_server: FakeIdp) -> Iterator[FakeIdp]:
    """The fake Entra ID, reset: no faults, no recorded requests, no registered credentials,
    on the system clock."""
    fake(_entra_server).reset_credentials()
    _entra_server.reset()
    _entra_server.provider.clock = SYSTEM_CLOCK
    yield _entra_server
    fake(_entra_server).reset_credentials()
    _entra_server.reset()
    _entra_server.provider.clock = SYSTEM_CLOCK


def fake(idp: FakeIdp) -> EntraFake:
    return cast(EntraFake, idp.provider)


def identity(idp: FakeIdp, credential: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """An Entra ID identity at the fake, with this credential."""
    return {
        "tenant": TENANT,
        "authority_host": idp.url,
        "allow_insecure_http": True,
        "client_id": CLIENT_ID,
        "credential": credential,
        **extra,
    }


def document(
    identity_: dict[str, Any], tokens: dict[str, dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    """A config with one identity `app` and these tokens (each gets `identity: app`)."""
    return {
        "identities": {"app": identity_},
        "tokens": {name: {"identity": "app", **spec} for name, spec in tokens.items()},
        "defaults": {"startup_spread": 0},
        "listen": None,
        **extra,
    }


def run(
    idp: FakeIdp,
    document_: dict[str, Any],
    scenario: Callable[[Harness], Awaitable[T]],
    clock: FakeClock | None = None,
) -> T:
    """`scenario` on the real composition root and virtual time; the fake Entra ID keeps the
    same (fake) clock, so assertion lifetimes are checked against it."""
    clock = clock or FakeClock()
    idp.provider.clock = clock

    async def main() -> T:
        async with harness(validate_config(document_), clock) as running:
            return await scenario(running)

    return asyncio.run(main())
