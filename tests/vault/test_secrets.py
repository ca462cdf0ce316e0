"""`{vault: PATH#FIELD}` client secrets read from a real OpenBao (KV v2 and v1)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from tests.support.harness import Harness
from tests.support.idp import CLIENT_SECRET, FakeIdp
from tests.support.openbao import Bao
from tests.support.vault import (
    config_for,
    run,
)


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
