"""`type: managed_identity` against the fake Entra ID's IMDS and App Service endpoints, with
IMDS's faults: 410 while it starts, 429 with Retry-After, an identity it does not know."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from starlette.responses import Response

from tests.credentials.conftest import fake, run
from tests.support import idp as faults
from tests.support.clock import EPOCH, FakeClock
from tests.support.harness import Harness
from tests.support.idp import FakeIdp
from tokend.engine import Phase

CRM = "https://crm.example"
HEADER_CANARY = "CANARY-identity-header-77f1"


def _config(tmp_path: Path, identities: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "identities": identities,
        "tokens": {
            name: {
                "identity": name,
                **(spec or {"resource": CRM}),
                "sinks": [{"type": "file", "path": str(tmp_path / name)}],
            }
            for name in identities
        },
        "defaults": {"startup_spread": 0},
        "listen": None,
    }


def _imds(idp: FakeIdp, **selector: str) -> dict[str, Any]:
    endpoint = f"{idp.url}/metadata/identity/oauth2/token"  # the fake stands in for 169.254.169.254
    return {"credential": {"type": "managed_identity", "source": "imds", "endpoint": endpoint,
                           **selector}}  # fmt: skip


def test_imds_system_and_user_assigned(entra: FakeIdp, tmp_path: Path) -> None:
    fake(entra).user_identities["user-mi-client"] = "user-mi-client"
    identities = {"system": _imds(entra), "user": _imds(entra, client_id="user-mi-client")}
    config = _config(tmp_path, identities, scopes=[f"{CRM}/.default"])

    async def scenario(h: Harness) -> None:
        assert await h.refresh_all()
        for name in identities:
            token = h.job(name).token
            assert token is not None and token.expires_at == EPOCH + timedelta(hours=1)

    run(entra, config, scenario)
    requests = sorted(entra.token_requests, key=lambda r: len(r.query))
    assert [r.query for r in requests] == [
        {"resource": CRM, "api-version": "2018-02-01"},
        {"resource": CRM, "api-version": "2018-02-01", "client_id": "user-mi-client"},
    ]
    assert all(r.headers["metadata"] == "true" and r.form == {} for r in requests)
    claims = jwt.decode((tmp_path / "user").read_text(), options={"verify_signature": False})
    assert claims["aud"] == CRM and claims["sub"] == "user-mi-client"


def test_imds_starting_up_and_throttling_is_waited_out(entra: FakeIdp, tmp_path: Path) -> None:
    clock, asked = FakeClock(), []

    def noted(fault: faults.Fault) -> faults.Fault:
        async def respond() -> Response | None:
            asked.append(clock.now())
            return await fault()

        return respond

    answers = [faults.status(410), faults.status(410), faults.too_many_requests("7")]
    entra.fail(*map(noted, [*answers, faults.meanwhile(lambda: None)]))
    config = _config(tmp_path, {"vm": _imds(entra)})

    async def scenario(h: Harness) -> None:
        await h.start()
        await h.run_for(timedelta(minutes=1))
        job = h.job("vm")
        assert job.phase(h.clock.now()) is Phase.FRESH
        assert (job.results["transient_error"], job.results["success"]) == (3, 1)

    run(entra, config, scenario, clock)
    assert len(asked) == 4 and asked[3] - asked[2] >= timedelta(seconds=7)  # Retry-After


def test_an_unknown_identity_needs_an_operator(entra: FakeIdp, tmp_path: Path) -> None:
    config = _config(tmp_path, {"vm": _imds(entra, object_id="no-such-object")})

    async def scenario(h: Harness) -> None:
        assert not await h.refresh_all()
        error = h.job("vm").last_error
        assert error is not None and not error.transient
        assert "Identity not found" in str(error)

    run(entra, config, scenario)
    assert entra.token_requests[0].query["object_id"] == "no-such-object"


def test_app_service_from_its_environment(
    entra: FakeIdp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{entra.url}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", HEADER_CANARY)
    fake(entra).identity_header = HEADER_CANARY
    fake(entra).user_identities["/subscriptions/s/rg/mi"] = "app-mi-client"
    identities = {
        "app": {"credential": {"type": "managed_identity"}},  # source: auto finds App Service
        "user": {
            "credential": {"type": "managed_identity", "msi_res_id": "/subscriptions/s/rg/mi"}
        },
    }
    config = _config(tmp_path, identities)

    async def scenario(h: Harness) -> None:
        assert await h.refresh_all(), [h.job(n).last_error for n in identities]
        token = h.job("app").token
        assert token is not None and token.expires_at == EPOCH + timedelta(hours=1)
        assert HEADER_CANARY not in repr(h.job("app").request.grant)

    run(entra, config, scenario)
    requests = sorted(entra.token_requests, key=lambda r: len(r.query))
    assert all(r.path == "/msi/token" for r in requests)
    assert all(r.headers["x-identity-header"] == HEADER_CANARY for r in requests)
    assert requests[1].query == {
        "resource": CRM,
        "api-version": "2019-08-01",
        "mi_res_id": "/subscriptions/s/rg/mi",
    }
