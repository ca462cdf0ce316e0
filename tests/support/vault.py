"""Helpers for the Vault tests: policies and tokens on a real OpenBao, configs that use it,
and the engine on virtual time (`run`)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from tests.conftest import entra_identity
from tests.support.harness import Harness
from tests.support.idp import CLIENT_SECRET, FakeIdp
from tests.support.openbao import Bao
from tokend.config import Config
from tokend.resources import Resources
from tokend.sinks import SinkContext
from tokend.token import Token
from tokend.vault import VAULT, VaultOptions, VaultSession

M = timedelta(minutes=1)
H = timedelta(hours=1)
T = TypeVar("T")


def writer_policy(bao: Bao, path: str, mount: str = "secret") -> str:
    """The policy the README gives tokend for a KV v2 sink."""
    name = f"tokend-{uuid.uuid4().hex[:8]}"
    bao.client().sys.create_or_update_policy(
        name,
        f'path "{mount}/data/{path}" {{ capabilities = ["create", "read", "update"] }}\n'
        f'path "{mount}/metadata/{path}" {{ capabilities = ["create", "update"] }}\n',
    )
    return name


def token_with(bao: Bao, *policies: str, **options: Any) -> str:
    auth = bao.client().auth.token.create(policies=list(policies), **options)["auth"]
    return str(auth["client_token"])


def stored(bao: Bao, path: str, mount: str = "secret") -> dict[str, Any]:
    body = bao.client().secrets.kv.v2.read_secret_version(
        path=path, mount_point=mount, raise_on_deleted_version=True
    )
    data: dict[str, Any] = body["data"]["data"]
    return data


def config_for(
    idp: FakeIdp,
    bao: Bao,
    sinks: list[dict[str, Any]],
    *,
    auth: dict[str, Any] | None = None,
    secret: object = CLIENT_SECRET,
    **token_options: Any,
) -> Config:
    return Config.model_validate(config_document(idp, bao, sinks, auth, secret, **token_options))


def config_document(
    idp: FakeIdp,
    bao: Bao,
    sinks: list[dict[str, Any]],
    auth: dict[str, Any] | None = None,
    secret: object = CLIENT_SECRET,
    **token_options: Any,
) -> dict[str, Any]:
    target = token_options or {"resource": "https://crm.example"}
    return {
        "identities": {"app": entra_identity(idp, secret)},
        "tokens": {"crm": {"identity": "app", **target, "sinks": sinks}},
        "defaults": {"startup_spread": 0},
        "vault": {
            "address": bao.url,
            "allow_insecure_http": True,
            "auth": auth or {"method": "token", "token": bao.root_token},
            "timeout": "5s",
        },
        "listen": None,
    }


def run(config: Config, scenario: Callable[[Harness], Awaitable[T]]) -> T:
    async def main() -> T:
        harness = Harness(config)
        try:
            return await scenario(harness)
        finally:
            await harness.stop()

    return asyncio.run(main())


def problems(stderr: str) -> str:
    """`tokend check`'s problem lines (not its log lines, which start with a timestamp)."""
    return "\n".join(line for line in stderr.splitlines() if not line[:4].isdigit())


class RacingSession(VaultSession):
    """A session before whose first write another writer stores `interloper` (no CAS)."""

    def __init__(self, bao: Bao, path: str, interloper: dict[str, Any]) -> None:
        super().__init__(vault_options(bao))
        self._bao, self._path, self._interloper = bao, path, interloper
        self.raced = False

    async def run(self, operation: Any, *, path: str, action: str) -> Any:
        if action == "write this secret" and not self.raced:
            self.raced = True
            await asyncio.to_thread(
                self._bao.client().secrets.kv.v2.create_or_update_secret,
                path=self._path,
                secret=self._interloper,
            )
        return await super().run(operation, path=path, action=action)


def vault_options(bao: Bao, token: str | None = None) -> VaultOptions:
    return VaultOptions.model_validate(
        {
            "address": bao.url,
            "allow_insecure_http": True,
            "auth": {"method": "token", "token": token or bao.root_token},
        }
    )


def a_token(value: str, expires_in: timedelta) -> Token:
    now = datetime.now(UTC)
    return Token(value=value, token_type="Bearer", expires_at=now + expires_in, obtained_at=now)


def sink_context(session: VaultSession) -> SinkContext:
    """What the Vault sink of token `crm` is given, with `session` as the process's session."""
    resources = Resources({"vault": session.options})
    resources.provide(VAULT, session)
    return SinkContext("crm", "vault", resources)


async def eventually(condition: Callable[[], Any], what: str, timeout: float = 10) -> Any:
    """Poll `condition` (off the loop) until it is truthy: waiting for an event, not a time."""
    deadline = time.monotonic() + timeout
    while True:
        result = await asyncio.to_thread(condition)
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
