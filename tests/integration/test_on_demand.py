"""On-demand tokens in the engine, on virtual time: not acquired at start, not awaited for
readiness, started by the first demand and refreshed from then on; a reload keeps an unchanged
token's dormancy (or its schedule, once demanded)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

from tests.conftest import entra_identity
from tests.support.harness import harness
from tests.support.idp import CLIENT_SECRET, FakeIdp
from tests.support.status import engine_status
from tokend.config import validate_config


def _config(idp: FakeIdp, tmp_path: Path, **lazy: Any) -> Any:
    def token(name: str, **extra: Any) -> dict[str, Any]:
        sinks = [{"type": "file", "path": str(tmp_path / f"{name}.token")}]
        return {"identity": "app", "resource": f"https://{name}.example", "sinks": sinks, **extra}

    return validate_config(
        {
            "identities": {"app": entra_identity(idp, CLIENT_SECRET)},
            "tokens": {"eager": token("eager"), "lazy": token("lazy", on_demand=True, **lazy)},
            "defaults": {"startup_spread": 0},
            "endpoint": {"header_secret": "x-secret"},
        }
    )


def _requests_for(idp: FakeIdp, name: str) -> int:
    return sum(r.form.get("resource") == f"https://{name}.example" for r in idp.token_requests)


def test_dormant_until_demanded_then_refreshed(idp: FakeIdp, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with harness(_config(idp, tmp_path)) as running:
            await running.start()
            await running.run_for(timedelta(minutes=1))
            engine, now = running.engine, running.clock.now()
            assert _requests_for(idp, "eager") == 1 and _requests_for(idp, "lazy") == 0
            lazy = engine.view("lazy", now)
            assert lazy is not None and lazy.dormant and lazy.token is None
            assert engine.is_ready(now)  # a dormant token does not hold readiness back
            status = engine_status(engine, now)
            assert status["ready"] and status["tokens"]["lazy"]["state"] == "on_demand"
            assert engine.demand("lazy") and not engine.demand("lazy")  # once
            await running.run_for(timedelta(seconds=1))
            await engine.settled("lazy")
            view = engine.view("lazy", running.clock.now())
            assert view is not None and view.valid and not view.dormant
            await running.run_for(timedelta(hours=3))  # refreshed from then on, like any token
            assert _requests_for(idp, "lazy") >= 4
            assert engine.view("lazy", running.clock.now()).valid  # type: ignore[union-attr]

    asyncio.run(scenario())


def test_a_reload_keeps_dormancy_and_a_demanded_schedule(idp: FakeIdp, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with harness(_config(idp, tmp_path)) as running:
            await running.start()
            await running.run_for(timedelta(minutes=1))
            await running.reload(_config(idp, tmp_path))  # unchanged: still dormant
            assert running.engine.view("lazy", running.clock.now()).dormant  # type: ignore[union-attr]
            running.engine.demand("lazy")
            await running.run_for(timedelta(seconds=1))
            await running.reload(_config(idp, tmp_path))  # unchanged, demanded: keeps its token
            view = running.engine.view("lazy", running.clock.now())
            assert view is not None and view.valid and not view.dormant
            await running.reload(_config(idp, tmp_path, refresh_threshold="20m"))  # changed
            view = running.engine.view("lazy", running.clock.now())
            assert view is not None and view.valid and not view.dormant  # carried over
            assert _requests_for(idp, "lazy") == 1

    asyncio.run(scenario())


def test_once_leaves_on_demand_tokens_alone(idp: FakeIdp, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with harness(_config(idp, tmp_path)) as running:
            assert await running.refresh_all()
            assert _requests_for(idp, "eager") == 1 and _requests_for(idp, "lazy") == 0

    asyncio.run(scenario())
