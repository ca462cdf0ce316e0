"""`compat: requesttoken` for a password identity whose password is kept in a real OpenBao: the
endpoint compares what a client sends with the password read through the daemon's Vault client,
as the grant reads it."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from tests.support.delegated import (
    PASSWORD,
    USER,
    delegated_config,
    env,
    password_credential,
    users_idp,
)
from tests.support.harness import harness
from tests.support.openbao import Bao
from tests.support.servers import free_port, post_json
from tokend.config import validate_config
from tokend.endpoint.service import Endpoint
from tokend.metrics import Metrics


def test_a_password_kept_in_vault_is_accepted(
    bao: Bao, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env().items():
        monkeypatch.setenv(name, value)
    path = f"helper-{uuid.uuid4().hex[:8]}"
    bao.client().secrets.kv.v2.create_or_update_secret(path=path, secret={"password": PASSWORD})
    port = free_port()
    url = f"http://127.0.0.1:{port}/requesttoken"

    async def scenario() -> None:
        with users_idp() as idp:
            document = delegated_config(
                idp,
                tmp_path,
                password_credential(password={"vault": f"secret/data/{path}#password"}),
                {"crm": {"resource": "https://crm.example"}},
                endpoint={"listen": f"127.0.0.1:{port}", "protocols": [], "compat": "requesttoken"},
            )
            document["vault"] = {
                "address": bao.url,
                "allow_insecure_http": True,
                "auth": {"method": "token", "token": bao.root_token},
            }
            config = validate_config(document)
            assert config.endpoint is not None
            async with harness(config) as running:
                assert await running.refresh_all()  # the grant read the password from Vault
                endpoint = Endpoint(
                    config,
                    config.endpoint,
                    engine=running.engine,
                    metrics=Metrics(running.clock),
                    clock=running.clock,
                    resources=running.assembly.resources,
                )
                serving = asyncio.create_task(endpoint.serve())
                try:
                    right = {"username": USER, "password": PASSWORD}
                    status, body = await asyncio.to_thread(post_json, url, right)
                    assert status == 200, body
                    assert body["accesstoken"] == running.job("crm").token.value  # type: ignore[union-attr]
                    wrong = {"username": USER, "password": "not-it"}
                    assert (await asyncio.to_thread(post_json, url, wrong))[0] == 401
                finally:
                    endpoint.stop()
                    await serving

    asyncio.run(scenario())
