"""The Vault sink against a real OpenBao: KV version 2 and 1, mounts, TLS, withdrawal, monotonic
publish between writers, and one-line errors."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import hvac.exceptions as hx
import pytest

from tests.support import idp as faults
from tests.support.harness import Harness
from tests.support.idp import FakeIdp
from tests.support.openbao import Bao, dev_server
from tests.support.vault import (
    H,
    M,
    RacingSession,
    a_token,
    config_document,
    config_for,
    run,
    sink_context,
    stored,
    vault_options,
)
from tokend.config import Config
from tokend.errors import TokendError
from tokend.sinks.file import rfc3339
from tokend.sinks.vault import VaultSink, VaultSinkOptions
from tokend.token import Token
from tokend.vault import VaultOptions, VaultSession


def test_kv2_holds_the_current_token_with_metadata_and_few_versions(
    idp: FakeIdp, bao: Bao, tmp_path: Path, kvpath: str
) -> None:
    sinks = [
        {"type": "file", "path": str(tmp_path / "crm.token")},
        {"type": "vault", "path": kvpath, "max_versions": 3},
    ]

    async def scenario(h: Harness) -> Token:
        await h.start()
        await h.run_for(timedelta(0))
        first = h.job().token
        assert stored(bao, kvpath) == {
            "access_token": first.value,
            "token_type": "Bearer",
            "expires_on": int(first.expires_at.timestamp()),
            "expires_at": rfc3339(first.expires_at),
            "resource": "https://crm.example",
            "refreshed_at": rfc3339(first.obtained_at),
        }
        await h.run_for(5 * H)  # a refresh every 44 to 50 minutes
        assert h.job().results["success"] >= 6
        assert h.engine.is_ready(h.clock.now())
        token: Token = h.job().token
        return token

    last = run(config_for(idp, bao, sinks), scenario)
    assert stored(bao, kvpath)["access_token"] == last.value
    assert (tmp_path / "crm.token").read_text() == last.value
    metadata = bao.client().secrets.kv.v2.read_secret_metadata(path=kvpath)["data"]
    assert metadata["max_versions"] == 3
    assert metadata["current_version"] >= 6
    assert len(metadata["versions"]) == 3  # hourly writes do not pile up
    assert metadata["custom_metadata"]["managed-by"] == "tokend"
    assert metadata["custom_metadata"]["tokend-token"] == "crm"


def test_kv1_mount_with_chosen_fields(idp: FakeIdp, bao: Bao, kvpath: str) -> None:
    sink = {
        "type": "vault",
        "mount": "kv1",
        "kv_version": 1,
        "path": kvpath,
        "fields": ["access_token", "expires_on", "scopes"],
    }
    config = config_for(idp, bao, [sink], scopes=["https://crm.example/.default"])

    async def scenario(h: Harness) -> Token:
        assert await h.refresh_all()
        token: Token = h.job().token
        return token

    token = run(config, scenario)
    body = bao.client().secrets.kv.v1.read_secret(path=kvpath, mount_point="kv1")
    assert body["data"] == {
        "access_token": token.value,
        "expires_on": int(token.expires_at.timestamp()),
        "scopes": "https://crm.example/.default",
    }


def test_wrong_or_missing_mount_is_named_and_nothing_is_written(
    idp: FakeIdp, bao: Bao, tmp_path: Path, kvpath: str
) -> None:
    sinks = [
        {"type": "vault", "name": "v2-on-v1", "mount": "kv1", "path": kvpath},
        {"type": "vault", "name": "nowhere", "mount": "nowhere", "path": kvpath},
        {"type": "file", "path": str(tmp_path / "crm.token")},
    ]

    async def scenario(h: Harness) -> None:
        assert not await h.refresh_all()
        assert str(h.slot("v2-on-v1").last_error) == (
            f"{bao.url}/v1/kv1/data/{kvpath}: mount 'kv1' is KV version 1: set kv_version: 1"
        )
        assert str(h.slot("nowhere").last_error) == (
            f"{bao.url}/v1/nowhere/data/{kvpath}: no secrets engine is mounted at 'nowhere' "
            "(check the mount)"
        )
        assert (tmp_path / "crm.token").read_text() == h.job().token.value

    run(config_for(idp, bao, sinks), scenario)
    # A KV v2 write to a v1 mount would have created a secret literally named data/PATH.
    assert bao.client().read(f"kv1/data/{kvpath}") is None


def test_https_with_the_configured_ca_bundle(tmp_path: Path) -> None:
    with dev_server(tmp_path, tls=True) as bao:
        assert bao.url.startswith("https://")
        auth = {"method": "token", "token": bao.root_token}
        trusted = VaultOptions.model_validate(
            {"address": bao.url, "ca_bundle": str(bao.ca_bundle), "auth": auth}
        )
        untrusted = VaultOptions.model_validate({"address": bao.url, "auth": auth})
        sessions = VaultSession(trusted), VaultSession(untrusted)
        try:
            assert sessions[0].check_login() is None
            assert sessions[1].check_login() == (
                f"{bao.url}/v1/auth/token/lookup-self: TLS handshake failed (check "
                "vault.ca_bundle and the server's certificate)"
            )
        finally:
            for session in sessions:
                session.close_sync()


def test_on_expiry_withdraw_deletes_the_dead_token(idp: FakeIdp, bao: Bao, kvpath: str) -> None:
    sinks = [{"type": "vault", "path": kvpath, "on_expiry": "withdraw"}]

    async def scenario(h: Harness) -> None:
        await h.start()
        await h.run_for(timedelta(0))
        first = h.job().token
        idp.fail(*[faults.html(502)] * 100)  # a long identity-provider outage
        await h.run_for(first.expires_at - h.clock.now() - timedelta(seconds=1))
        assert stored(bao, kvpath)["access_token"] == first.value  # valid to the very end
        await h.run_for(timedelta(seconds=1))
        with pytest.raises(hx.InvalidPath):  # consumers now fail fast
            stored(bao, kvpath)
        idp.reset()
        await h.run_for(6 * M)
        assert stored(bao, kvpath)["access_token"] == h.job().token.value != first.value

    run(config_for(idp, bao, sinks), scenario)


def test_removing_a_token_withdraws_its_vault_value(idp: FakeIdp, bao: Bao, kvpath: str) -> None:
    """A token removed from the config by a reload: its Vault sink with `on_expiry: withdraw`
    deletes the value (consumers fail fast rather than read a token nobody refreshes)."""
    document = config_document(
        idp, bao, [{"type": "vault", "path": kvpath, "on_expiry": "withdraw"}]
    )
    document["tokens"]["other"] = {
        "identity": "app",
        "resource": "https://other.example",
        "sinks": [{"type": "vault", "path": f"{kvpath}-other"}],
    }
    config = Config.model_validate(document)
    del document["tokens"]["crm"]

    async def scenario(h: Harness) -> None:
        await h.start()
        await h.run_for(timedelta(0))
        assert stored(bao, kvpath)["access_token"] == h.job("crm").token.value
        summary = await h.reload(Config.model_validate(document))
        assert summary.removed == ["crm"]

    run(config, scenario)
    with pytest.raises(hx.InvalidPath):
        stored(bao, kvpath)
    assert stored(bao, f"{kvpath}-other")["access_token"]  # the other token's is left alone


def test_monotonic_publish_and_check_and_set_between_two_writers(bao: Bao, kvpath: str) -> None:
    options = VaultSinkOptions(type="vault", path=kvpath)
    newer_elsewhere = a_token("interloper-newer", 3 * H)
    older_elsewhere = a_token("interloper-older", 4 * H)

    def fields(token: Token) -> dict[str, Any]:
        return {"access_token": token.value, "expires_on": int(token.expires_at.timestamp())}

    async def main() -> None:
        first = VaultSession(vault_options(bao))
        racing_newer = RacingSession(bao, kvpath, fields(newer_elsewhere))
        racing_older = RacingSession(bao, kvpath, fields(older_elsewhere))
        sessions = (first, racing_newer, racing_older)
        a, b, c = (VaultSink(options, sink_context(s)) for s in sessions)
        try:
            await a.publish(a_token("a-2h", 2 * H))
            await a.publish(a_token("a-1h", 1 * H))  # never replaces a token that lives longer
            assert stored(bao, kvpath)["access_token"] == "a-2h"
            # b read version 1, then another writer stored a newer token before b's write:
            # b's check-and-set fails, b looks again and leaves the newer token alone.
            await b.publish(a_token("b-2h30", 2 * H + 30 * M))
            assert racing_newer.raced
            assert stored(bao, kvpath)["access_token"] == "interloper-newer"
            # c raced with an older token (3h vs its 5h): after its check-and-set fails, c
            # looks again and writes over it with the current version.
            await c.publish(a_token("c-5h", 5 * H))
            assert stored(bao, kvpath)["access_token"] == "c-5h"
        finally:
            for session in sessions:
                await session.close()

    asyncio.run(main())
    metadata = bao.client().secrets.kv.v2.read_secret_metadata(path=kvpath)["data"]
    assert metadata["current_version"] == 4  # a-2h, interloper-newer, interloper-older, c-5h


def test_sink_errors_are_one_line_tokend_errors(bao: Bao, kvpath: str) -> None:
    """Whatever goes wrong in Vault, publish() raises a TokendError with one line, saying
    whether trying again can help."""
    options = VaultSinkOptions(type="vault", path=kvpath)

    async def main() -> TokendError:
        session = VaultSession(vault_options(bao, "s.not-a-token"))
        sink = VaultSink(options, sink_context(session))
        try:
            with pytest.raises(TokendError) as caught:
                await sink.publish(a_token("x" * 20, H))
        finally:
            await session.close()
        return caught.value

    error = asyncio.run(main())
    assert not error.transient  # an operator must give tokend a valid token
    message = str(error)
    assert "\n" not in message
    assert message.endswith("is invalid, expired or revoked (give tokend a valid token)")
    assert "s.not-a-token" not in message
