"""Vault going away and coming back (sealed, as after a restart), and reloads that keep or replace
the Vault session."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from tests.support.harness import Harness
from tests.support.idp import CLIENT_SECRET, FakeIdp
from tests.support.openbao import Bao, PersistentServer
from tests.support.vault import (
    H,
    M,
    config_document,
    config_for,
    run,
    stored,
)
from tokend.config import Config
from tokend.vault import VAULT, VaultError


def test_vault_stopped_and_restarted_mid_run(
    idp: FakeIdp, persistent: PersistentServer, tmp_path: Path, kvpath: str
) -> None:
    """Refreshes and the file sink go on while Vault is down (the client secret read from Vault
    earlier is reused); Vault, restarted and so sealed, says so; once unsealed it gets the
    newest token within one backoff step."""
    bao = persistent
    bao.client().secrets.kv.v2.create_or_update_secret("apps/crm", {"client_secret": CLIENT_SECRET})
    sinks = [
        {"type": "file", "path": str(tmp_path / "crm.token")},
        {"type": "vault", "path": kvpath},
    ]
    config = config_for(idp, bao, sinks, secret={"vault": "secret/data/apps/crm#client_secret"})

    async def scenario(h: Harness) -> None:
        await h.start()
        await h.run_for(timedelta(0))
        first = h.job().token
        assert stored(bao, kvpath)["access_token"] == first.value
        vault = h.slot("vault")

        await asyncio.to_thread(bao.stop)
        await h.run_for(H)
        assert h.job().results["success"] == 2  # refreshed, with the client secret read before
        assert (tmp_path / "crm.token").read_text() == h.job().token.value != first.value
        assert vault.failures > 0
        assert str(vault.last_error) == (
            f"{bao.url}/v1/secret/data/{kvpath}: cannot connect to Vault "
            "(connection refused, reset or name not resolved)"
        )

        await asyncio.to_thread(bao.start)  # sealed, as after any restart
        await h.run_for(5 * M)
        assert (
            str(vault.last_error)
            == f"{bao.url}/v1/secret/data/{kvpath}: Vault is sealed (unseal it)"
        )

        await asyncio.to_thread(bao.unseal)
        await h.run_for(5 * M)  # one maximum backoff step
        assert vault.failures == 0
        assert stored(bao, kvpath)["access_token"] == h.job().token.value
        assert h.engine.is_ready(h.clock.now())

    run(config, scenario)


def test_reload_keeps_or_replaces_the_vault_session(
    idp: FakeIdp, bao: Bao, tmp_path: Path, kvpath: str
) -> None:
    """Reloading the same vault: block keeps the login and every job; a changed block gets a new
    session, rebuilds the jobs that use Vault, and {vault: ...} client secrets keep working."""
    app = uuid.uuid4().hex[:8]
    bao.client().secrets.kv.v2.create_or_update_secret(
        f"apps/{app}", {"client_secret": CLIENT_SECRET}
    )
    sinks = [{"type": "vault", "path": kvpath}]
    document = config_document(
        idp, bao, sinks, secret={"vault": f"secret/data/apps/{app}#client_secret"}
    )

    async def scenario(h: Harness) -> None:
        await h.start()
        await h.run_for(timedelta(0))
        resources = h.assembly.resources
        job, session = h.job(), resources.get(VAULT)
        assert job.token is not None
        same = await h.reload(Config.model_validate(document))
        assert same.unchanged == ["crm"] and resources.get(VAULT) is session and h.job() is job
        document["vault"]["timeout"] = "7s"
        changed = await h.reload(Config.model_validate(document))
        assert changed.changed == ["crm"] and resources.get(VAULT) is not session
        assert h.job().token is job.token  # carried over: same request
        assert await h.refresh_all()  # reads the client secret through the new session
        assert stored(bao, kvpath)["access_token"] == h.job().token.value
        with pytest.raises(VaultError, match="the Vault session is closed"):
            await session.run(lambda client: None, path="x", action="anything")

    run(Config.model_validate(document), scenario)
