"""Vault's health in `/metrics`, `/status` and `tokend status`: logins and renewals, tokend's own
Vault token's expiry, reachable and sealed, read at scrape time from the session; and repeated
sink failures at DEBUG. Against a real OpenBao, stopped, restarted sealed and unsealed."""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import timedelta
from pathlib import Path

import hvac.exceptions as hx
import pytest

from tests.support.harness import Harness
from tests.support.idp import FakeIdp
from tests.support.openbao import Bao, PersistentServer
from tests.support.processes import wait_for
from tests.support.status import engine_status
from tests.support.vault import H, M, config_for, run, writer_policy
from tests.vault.test_check import role
from tokend.metrics import Metrics
from tokend.status import render_table
from tokend.vault import VAULT


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, or None when absent."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if not match or match[1] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
        if all(found.get(key) == value for key, value in labels.items()):
            return float(match[3])
    return None


def test_logins_renewals_and_the_token_expiry_in_metrics_and_status(
    idp: FakeIdp, bao: Bao, tmp_path: Path, kvpath: str
) -> None:
    auth = role(bao, tmp_path, writer_policy(bao, kvpath), token_ttl="30m")
    secrets = [(tmp_path / name).read_text() for name in ("role_id", "secret_id")]

    async def scenario(h: Harness) -> tuple[str, str, str]:
        metrics = Metrics(h.clock)
        metrics.watch(h.engine, h.assembly.resources)
        before = metrics.render().decode()  # the session exists: the sink was built with it
        assert sample(before, "tokend_vault_login_total", result="success") == 0
        assert sample(before, "tokend_vault_up") is None  # not contacted yet
        assert sample(before, "tokend_vault_token_expiry_timestamp_seconds") is None
        await h.start()
        await h.run_for(H)  # renewed at 20 and 40 minutes
        text = metrics.render().decode()
        session = h.assembly.resources.get(VAULT)
        address = {"address": bao.url}
        assert sample(text, "tokend_vault_login_total", result="success", **address) == 1
        assert sample(text, "tokend_vault_login_total", result="error", **address) == 0
        assert sample(text, "tokend_vault_renewal_total", result="success", **address) == 3
        assert sample(text, "tokend_vault_up", **address) == 1
        assert sample(text, "tokend_vault_sealed", **address) == 0
        expiry = session.report().token_expires_at
        assert expiry is not None and expiry > h.clock.now()
        assert sample(text, "tokend_vault_token_expiry_timestamp_seconds") == expiry.timestamp()
        status = engine_status(h.engine, h.clock.now(), h.assembly.resources)
        vault = status["vault"]
        assert vault["logged_in"] is True and vault["auth_method"] == "approle"
        assert vault["up"] is True and vault["sealed"] is False
        assert vault["logins"] == {"success": 1, "error": 0}
        assert vault["renewals"] == {"success": 3, "error": 0}
        assert 0 < vault["token_expires_in_seconds"] <= 30 * 60
        table = render_table(status)
        assert f"vault {bao.url}: up, logged in (approle), token expires in " in table
        assert "logins 1 (0 failed), renewals 3 (0 failed)" in table
        return text, str(status), table

    for shown in run(
        config_for(idp, bao, [{"type": "vault", "path": kvpath}], auth=auth), scenario
    ):
        for secret in secrets:
            assert secret not in shown


def test_down_sealed_and_back_as_vault_goes_away_and_returns(
    idp: FakeIdp, persistent: PersistentServer, tmp_path: Path, kvpath: str
) -> None:
    """The verify timer reads the secret every 20 s: those reads keep `up` and `sealed` current
    while no token needs writing."""
    bao = persistent
    sinks = [{"type": "vault", "path": kvpath, "verify_interval": "20s"}]
    wait_for(lambda: _writable(bao), what="the new KV v2 mount upgraded")

    async def scenario(h: Harness) -> None:
        metrics = Metrics(h.clock)
        metrics.watch(h.engine, h.assembly.resources)

        def gauges() -> tuple[float | None, float | None]:
            text = metrics.render().decode()
            return sample(text, "tokend_vault_up"), sample(text, "tokend_vault_sealed")

        await h.start()
        await h.run_for(timedelta(0))
        assert gauges() == (1, 0)
        await asyncio.to_thread(bao.stop)
        await h.run_for(30 * timedelta(seconds=1))
        assert gauges() == (0, 0)  # unreachable; not known to be sealed
        status = engine_status(h.engine, h.clock.now(), h.assembly.resources)["vault"]
        assert status["summary"].startswith(f"{bao.url}: DOWN, logged in (token)")
        assert "cannot connect to Vault" in status["last_error"]
        await asyncio.to_thread(bao.start)  # sealed
        await h.run_for(30 * timedelta(seconds=1))
        assert gauges() == (0, 1)
        status = engine_status(h.engine, h.clock.now(), h.assembly.resources)["vault"]
        assert status["summary"].startswith(f"{bao.url}: SEALED")
        await asyncio.to_thread(bao.unseal)
        await h.run_for(30 * timedelta(seconds=1))
        assert gauges() == (1, 0)
        assert h.slot("vault").failures == 0

    run(config_for(idp, bao, sinks), scenario)


def _writable(bao: Bao) -> bool:
    try:
        bao.client().secrets.kv.v2.create_or_update_secret(path="probe", secret={"a": 1})
    except hx.InvalidRequest:
        return False  # "Upgrading from non-versioned to versioned data"
    return True


def test_repeated_sink_failures_are_logged_at_debug(
    idp: FakeIdp, bao: Bao, tmp_path: Path, kvpath: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tokend")
    sinks = [
        {"type": "file", "path": str(tmp_path / "crm.token")},
        {"type": "vault", "path": kvpath, "mount": "nowhere"},
    ]

    async def scenario(h: Harness) -> int:
        await h.start()
        await h.run_for(10 * M)
        return h.slot("vault").failures

    failures = run(config_for(idp, bao, sinks), scenario)
    said = [r for r in caplog.records if "no secrets engine is mounted at 'nowhere'" in r.message]
    assert failures >= 5
    assert [r.levelno for r in said] == [logging.WARNING] + [logging.DEBUG] * (failures - 1)
