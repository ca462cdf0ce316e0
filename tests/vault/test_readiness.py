"""Readiness per sink: by default `/readyz` waits for file sinks (the pod's own app reads them)
and not for Vault (a shared store whose outage must not take every pod out of service);
`required_for_ready` on any sink says otherwise. `/status` and `tokend status` say per sink."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.asgi import asgi_get
from tests.support.harness import Harness
from tests.support.idp import FakeIdp
from tests.support.openbao import Bao
from tests.support.status import engine_status
from tests.support.vault import config_for, run
from tokend.metrics import Metrics
from tokend.status import render_table
from tokend.status_app import create_app


async def get(app: Any, path: str) -> tuple[int, str]:
    status, body = await asgi_get(app, path)
    return status, body.decode()


Case = tuple[dict[str, Any], dict[str, Any], int]


def cases(tmp_path: Path, kvpath: str) -> dict[str, Case]:
    good_file = {"type": "file", "path": str(tmp_path / "crm.token")}
    bad_file = {"type": "file", "path": str(tmp_path / "missing" / "crm.token")}
    good_vault = {"type": "vault", "path": kvpath}
    bad_vault = {"type": "vault", "path": kvpath, "mount": "nowhere"}
    return {
        "vault failing, by default not awaited": (good_file, bad_vault, 200),
        "vault failing, required_for_ready": (
            good_file,
            {**bad_vault, "required_for_ready": True},
            503,
        ),
        "file failing, by default awaited": (bad_file, good_vault, 503),
        "file failing, not required": ({**bad_file, "required_for_ready": False}, good_vault, 200),
    }


@pytest.mark.parametrize(
    "case",
    [
        "vault failing, by default not awaited",
        "vault failing, required_for_ready",
        "file failing, by default awaited",
        "file failing, not required",
    ],
)
def test_readyz_waits_for_the_sinks_that_readiness_requires(
    case: str, idp: FakeIdp, bao: Bao, tmp_path: Path, kvpath: str
) -> None:
    file_sink, vault_sink, expected = cases(tmp_path, kvpath)[case]

    async def scenario(h: Harness) -> None:
        await h.start()
        await h.run_for(timedelta(0))
        app = create_app(h.engine, Metrics(h.clock), h.clock)
        assert await get(app, "/readyz") == (
            (200, "ready\n") if expected == 200 else (503, "not ready: crm\n")
        )
        status = json.loads((await get(app, "/status"))[1])
        assert status == engine_status(h.engine, h.clock.now()) | {"time": status["time"]}
        token = status["tokens"]["crm"]
        assert token["published"] is False  # one sink holds no token: the whole truth
        assert token["ready"] is status["ready"] is (expected == 200)
        failing = "file" if "file failing" in case else "vault"
        required = expected == 503
        assert token["sinks"][failing]["holds_valid_token"] is False
        assert token["sinks"][failing]["required_for_ready"] is required
        table = render_table(status)
        assert (f"sink {failing} (readiness does not wait for it): failing" in table) is (
            not required
        )
        assert table.endswith("ready" if expected == 200 else "that readiness waits for")
        view = h.engine.view("crm", h.clock.now())
        assert view is not None and view.ready is (expected == 200) and not view.published
        assert view.phase.value != "fresh"  # fresh means every sink: readiness is looser

    run(config_for(idp, bao, [file_sink, vault_sink]), scenario)
