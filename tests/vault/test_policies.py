"""What tokend's Vault policy must allow, and what `tokend check` says when it does not."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from tests.conftest import write_config
from tests.support.harness import Harness
from tests.support.idp import FakeIdp
from tests.support.openbao import Bao
from tests.support.processes import tokend
from tests.support.vault import (
    M,
    config_document,
    config_for,
    problems,
    run,
    token_with,
    writer_policy,
)


def test_a_policy_that_forbids_the_write(
    idp: FakeIdp, bao: Bao, tmp_path: Path, kvpath: str
) -> None:
    """A clear error naming the path; the file sink is written all the same; `tokend check`
    finds the problem without writing."""
    reader = f"reader-{uuid.uuid4().hex[:8]}"
    bao.client().sys.create_or_update_policy(
        reader, f'path "secret/data/{kvpath}" {{ capabilities = ["read"] }}'
    )
    token = token_with(bao, reader)
    sinks = [
        {"type": "file", "path": str(tmp_path / "crm.token")},
        {"type": "vault", "path": kvpath},
    ]
    auth = {"method": "token", "token": {"env": "TOKEND_TEST_VAULT_TOKEN"}}

    async def scenario(h: Harness) -> None:
        await h.start()
        await h.run_for(timedelta(0))
        assert (tmp_path / "crm.token").read_text() == h.job().token.value
        assert str(h.slot("vault").last_error) == (
            f"{bao.url}/v1/secret/metadata/{kvpath}: permission denied: the Vault policy of "
            "tokend's token does not allow it to update this secret's metadata (check the policy)"
        )
        view = h.engine.view("crm", h.clock.now())
        assert view is not None and view.ready and not view.published  # (Vault: not required)
        await h.run_for(10 * M)  # retried on the sink's own backoff, not more often
        assert 6 <= h.slot("vault").failures <= 12  # 1 s, 2 s, 4 s ... 5 min

    with pytest.MonkeyPatch.context() as env:
        env.setenv("TOKEND_TEST_VAULT_TOKEN", token)
        run(config_for(idp, bao, sinks, auth=auth), scenario)
    document = config_document(idp, bao, sinks, auth)
    config = write_config(tmp_path / "config.yaml", document)
    denied = tokend("check", "-c", str(config), env={"TOKEND_TEST_VAULT_TOKEN": token})
    assert denied.returncode == 2
    assert problems(denied.stderr) == (
        f"{config}: tokens.crm.sinks.1: vault secret/{kvpath}: tokend's Vault policy lacks "
        f"create, update on secret/data/{kvpath}; create, update on secret/metadata/{kvpath} "
        "(see the README for the policy)"
    )
    writer = token_with(bao, writer_policy(bao, kvpath))
    allowed = tokend("check", "-c", str(config), env={"TOKEND_TEST_VAULT_TOKEN": writer})
    assert allowed.returncode == 0, allowed.stderr
    revoked = tokend("check", "-c", str(config), env={"TOKEND_TEST_VAULT_TOKEN": "s.revoked"})
    assert revoked.returncode == 2
    assert problems(revoked.stderr) == (
        f"{config}: vault.auth: {bao.url}/v1/auth/token/lookup-self: the Vault token from "
        "environment variable TOKEND_TEST_VAULT_TOKEN is invalid, expired or revoked "
        "(give tokend a valid token)"
    )
    for result in (denied, allowed, revoked):
        assert token not in result.stderr + result.stdout
        assert writer not in result.stderr + result.stdout
    assert bao.client().read(f"secret/data/{kvpath}") is None  # check never wrote
