"""Someone else changes tokend's Vault secret: a far-future `expires_on` that tokend cannot have
written is replaced (said once), one it could have written is left alone; a secret deleted or
overwritten is written again within one verify interval; a Vault that comes back having lost its
data is whole again as soon as one of its sinks recovers. All on a real OpenBao."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import hvac.exceptions as hx
import jwt
import pytest

from tests.support.harness import Harness
from tests.support.idp import FakeIdp
from tests.support.openbao import Bao, dev_server
from tests.support.vault import H, M, config_document, config_for, run, stored
from tokend.config import Config
from tokend.engine.once import refresh_once

S = timedelta(seconds=1)
FOREIGN = "holds a token tokend cannot have written"


def put(bao: Bao, path: str, **values: Any) -> int:
    """Another writer's `bao kv put` (no check-and-set). Returns the version it made."""
    body = bao.client().secrets.kv.v2.create_or_update_secret(path=path, secret=values)
    return int(body["data"]["version"])


def current_version(bao: Bao, path: str) -> int:
    return int(
        bao.client().secrets.kv.v2.read_secret_metadata(path=path)["data"]["current_version"]
    )


def foreign_jwt(exp: int) -> str:
    return jwt.encode({"exp": exp, "sub": "someone-else"}, "k" * 32, algorithm="HS256")


def interloper(kind: str, ours: int) -> dict[str, Any]:
    """A value with a later `expires_on` than tokend's token, that tokend cannot have written."""
    if kind == "milliseconds":  # bao kv put ... expires_on=$(date +%s)000
        return {"access_token": "typo", "expires_on": ours * 1000}
    if kind == "a year ahead":
        return {"access_token": "test-value", "expires_on": ours + 366 * 86400}
    return {"access_token": foreign_jwt(ours), "expires_on": ours + 7200}  # exp says otherwise


@pytest.mark.parametrize("kind", ["milliseconds", "a year ahead", "jwt exp differs"])
def test_a_later_expiry_tokend_cannot_have_written_is_replaced_and_said_once(
    kind: str, idp: FakeIdp, bao: Bao, kvpath: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tokend")
    sinks = [{"type": "vault", "path": kvpath, "verify_interval": "10s"}]

    async def scenario(h: Harness) -> None:
        await h.start()
        await h.run_for(timedelta(0))
        ours = int(h.job().token.expires_at.timestamp())
        for _ in range(2):  # the operator makes the same mistake twice
            await asyncio.to_thread(put, bao, kvpath, **interloper(kind, ours))
            await h.run_for(15 * S)  # one verify interval (jittered): written again
            assert stored(bao, kvpath)["access_token"] == h.job().token.value
        await h.run_for(H)  # and refreshes go on writing
        assert stored(bao, kvpath)["access_token"] == h.job().token.value
        assert int(stored(bao, kvpath)["expires_on"]) > ours

    run(config_for(idp, bao, sinks), scenario)
    warnings = [r.getMessage() for r in caplog.records if FOREIGN in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"sink vault: vault secret/{kvpath} {FOREIGN} (")
    assert "replacing it" in warnings[0]
    assert "already holds a token expiring no sooner" not in caplog.text


def test_a_later_token_tokend_could_have_written_is_left_alone_and_not_rewritten(
    idp: FakeIdp, bao: Bao, kvpath: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Another tokend instance wrote a token living longer (a JWT whose exp matches, the secret's
    metadata names tokend): monotonic publish leaves it, and verification does not fight it."""
    sinks = [{"type": "vault", "path": kvpath, "verify_interval": "10s"}]

    async def scenario(h: Harness) -> None:
        await h.start()
        await h.run_for(timedelta(0))
        later = int(h.job().token.expires_at.timestamp()) + 600
        other = foreign_jwt(later)
        await asyncio.to_thread(put, bao, kvpath, access_token=other, expires_on=later)
        version = await asyncio.to_thread(current_version, bao, kvpath)
        await h.run_for(5 * M)  # thirty verify intervals
        assert stored(bao, kvpath)["access_token"] == other
        assert await asyncio.to_thread(current_version, bao, kvpath) == version
        assert h.slot("vault").failures == 0

    run(config_for(idp, bao, sinks), scenario)
    assert FOREIGN not in caplog.text


@pytest.mark.parametrize(
    "change",
    ["deleted", "deleted with its metadata", "overwritten", "KV v1 deleted", "KV v1 overwritten"],
)
def test_a_secret_changed_by_someone_else_is_current_again_within_one_verify_interval(
    change: str, idp: FakeIdp, bao: Bao, tmp_path: Path, kvpath: str
) -> None:
    v1 = {"mount": "kv1", "kv_version": 1} if change.startswith("KV v1") else {}
    sinks = [
        {"type": "file", "path": str(tmp_path / "crm.token")},
        {"type": "vault", "path": kvpath, "verify_interval": "20s", **v1},
    ]

    def meddle() -> None:
        kv = bao.client().secrets.kv
        if change == "deleted":
            kv.v2.delete_latest_version_of_secret(path=kvpath)
        elif change == "deleted with its metadata":
            kv.v2.delete_metadata_and_all_versions(path=kvpath)
        elif change == "overwritten":
            put(bao, kvpath, access_token="stale-by-hand", expires_on=1)
        elif change == "KV v1 deleted":
            kv.v1.delete_secret(path=kvpath, mount_point="kv1")
        else:  # someone else's older token
            data = kv.v1.read_secret(path=kvpath, mount_point="kv1")["data"]
            data.update(access_token="someone-elses", expires_on=data["expires_on"] - 600)
            kv.v1.create_or_update_secret(path=kvpath, secret=data, mount_point="kv1")

    async def scenario(h: Harness) -> None:
        await h.start()
        await h.run_for(timedelta(0))
        token = h.job().token
        await asyncio.to_thread(meddle)
        repaired_after = None
        for second in range(1, 31):
            await h.run_for(S)
            data = await asyncio.to_thread(_data, bao, kvpath, bool(v1))
            if data and data.get("access_token") == token.value:
                repaired_after = second
                break
        assert repaired_after is not None and repaired_after <= 26  # 20 s x 1.25 + 1 s
        assert h.job().token is token  # not by a refresh: the same token, written again
        assert h.job().results["success"] == 1
        if change == "deleted with its metadata":
            metadata = bao.client().secrets.kv.v2.read_secret_metadata(path=kvpath)["data"]
            assert metadata["custom_metadata"]["managed-by"] == "tokend"

    run(config_for(idp, bao, sinks), scenario)


def _data(bao: Bao, path: str, v1: bool = False) -> dict[str, Any] | None:
    try:
        if v1:
            found: dict[str, Any] = bao.client().secrets.kv.v1.read_secret(
                path=path, mount_point="kv1"
            )["data"]
            return found
        body = bao.client().secrets.kv.v2.read_secret_version(
            path=path, raise_on_deleted_version=False
        )
    except hx.InvalidPath:
        return None  # deleted (with its metadata)
    data: dict[str, Any] | None = body["data"]["data"]
    return data


def test_vault_back_without_its_data_is_whole_again_when_one_sink_recovers(
    idp: FakeIdp, tmp_path: Path
) -> None:
    """Vault goes away while tokens crm and hr are refreshed (their Vault sinks fail and back
    off) and comes back empty (a dev server forgets everything, as a restore from an older
    snapshot loses recent writes). Verification on a timer is off (`verify_interval: 0`): the
    moment crm's sink recovers, hr's (failing, due later) retries at once, and erp's (never
    failing: erp was not refreshed meanwhile) is checked and written again."""
    names = ("crm", "hr", "erp")
    with dev_server(tmp_path) as bao:
        document = config_document(idp, bao, [])
        document["tokens"] = {
            name: {
                "identity": "app",
                "resource": f"https://{name}.example",
                "sinks": [
                    {"type": "file", "path": str(tmp_path / f"{name}.token")},
                    {"type": "vault", "path": f"apps/{name}", "verify_interval": 0},
                ],
            }
            for name in names
        }

        async def scenario(h: Harness) -> None:
            await h.start()
            await h.run_for(timedelta(0))
            await asyncio.to_thread(bao.stop)
            await h.run_for(M)  # (so that a new token expires later than the first)
            assert await refresh_once(h.job("crm")) is False  # the file has it; Vault is down
            await h.run_for(3 * S)
            assert await refresh_once(h.job("hr")) is False
            await h.run_for(20 * S)  # both back off: 1, 2, 4, 8, 16 s ...
            crm, hr, erp = (h.slot("vault", job=name) for name in names)
            assert crm.failures >= 3 and hr.failures >= 3 and erp.failures == 0
            await asyncio.to_thread(bao.start)  # empty: every secret is gone
            crm_due, hr_due = h.scheduler.due("crm/sink/vault"), h.scheduler.due("hr/sink/vault")
            assert crm_due is not None and hr_due is not None and crm_due < hr_due
            await h.run_for(crm_due - h.clock.now())  # crm's next retry: it recovers
            assert h.clock.now() < hr_due
            assert crm.failures == hr.failures == erp.failures == 0
            for name in names:
                assert stored(bao, f"apps/{name}")["access_token"] == h.job(name).token.value

        run(Config.model_validate(document), scenario)
