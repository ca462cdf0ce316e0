"""`{vault: PATH#FIELD}` client secrets read from a real OpenBao (KV v2 and v1)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from tests.support.harness import Harness
from tests.support.idp import CLIENT_SECRET, FakeIdp
from tests.support.openbao import Bao
from tests.support.vault import (
    config_for,
    run,
)
from tokend.engine import Phase

S = timedelta(seconds=1)


def test_client_secrets_from_vault_kv2_and_kv1(idp: FakeIdp, bao: Bao, tmp_path: Path) -> None:
    app = uuid.uuid4().hex[:8]
    root = bao.client()
    root.secrets.kv.v2.create_or_update_secret(f"apps/{app}", {"client_secret": CLIENT_SECRET})
    root.secrets.kv.v1.create_or_update_secret(
        f"apps/{app}", {"client_secret": CLIENT_SECRET}, mount_point="kv1"
    )
    sinks = [{"type": "file", "path": str(tmp_path / "crm.token")}]

    async def refresh(h: Harness) -> Any:
        ok = await h.refresh_all()
        return ok, str(h.job().last_error)

    for reference in (f"secret/data/apps/{app}#client_secret", f"kv1/apps/{app}#client_secret"):
        ok, _ = run(config_for(idp, bao, sinks, secret={"vault": reference}), refresh)
        assert ok, reference
    ok, error = run(config_for(idp, bao, sinks, secret={"vault": f"secret/apps/{app}#x"}), refresh)
    assert not ok
    assert error == (
        f"config: client secret: {bao.url}/v1/secret/apps/{app}: secret is KV version 2: "
        f"write {{vault: secret/data/apps/{app}#x}}"
    )
    reference = {"vault": f"secret/data/apps/{app}#nope"}
    ok, error = run(config_for(idp, bao, sinks, secret=reference), refresh)
    assert not ok
    assert error.endswith(
        f"/v1/secret/data/apps/{app}: has no field 'nope' (fields: client_secret)"
    )


def test_a_permanent_failure_is_retried_when_the_vault_secret_changes(
    idp: FakeIdp, bao: Bao, tmp_path: Path
) -> None:
    """invalid_client until an operator writes the right secret to Vault: tried again within
    10 s of the new version (watched while the token fails), not after the 5-minute backoff."""
    app = uuid.uuid4().hex[:8]
    root = bao.client()
    root.secrets.kv.v2.create_or_update_secret(f"apps/{app}", {"client_secret": "the-wrong-one"})
    sinks = [{"type": "file", "path": str(tmp_path / "crm.token")}]
    secret = {"vault": f"secret/data/apps/{app}#client_secret"}

    async def scenario(h: Harness) -> None:
        await h.start()
        await h.run_for(30 * S)
        job = h.job()
        assert job.phase(h.clock.now()) is Phase.FAILING
        assert job.last_error is not None and job.last_error.code == "invalid_client/7000215"
        fixed_at = h.clock.now()
        root.secrets.kv.v2.create_or_update_secret(f"apps/{app}", {"client_secret": CLIENT_SECRET})
        await h.run_for(10 * S)
        assert job.phase(h.clock.now()) is Phase.FRESH
        assert job.last_success is not None and job.last_success - fixed_at <= 10 * S

    run(config_for(idp, bao, sinks, secret=secret), scenario)
