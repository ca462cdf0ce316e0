"""The certificate credential as `private_key_jwt` (RFC 7523) against oidc-provider, a real
OAuth2 server from npm that verifies each assertion with the client's registered keys and
refuses an assertion whose `jti` it has seen before."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
import yaml

from tests.interop.conftest import RESOURCE, SCOPE, OidcServer
from tests.support.clock import FakeClock
from tests.support.harness import harness
from tests.support.processes import tokend, wait_for
from tokend.config import validate_config
from tokend.oauth import Target

pytestmark = pytest.mark.interop

CLIENT_ID = "tokend-jwt"


def _document(server: OidcServer, directory: Path, key_type: str) -> dict[str, Any]:
    cert_path, key_path = server.jwt_keys[key_type].write(directory, "client")
    return {
        "identities": {
            "oidc": {
                "issuer": server.issuer,
                "allow_insecure_http": True,
                "client_id": CLIENT_ID,
                "credential": {
                    "type": "certificate",
                    "certificate": {"file": str(cert_path)},
                    "private_key": {"file": str(key_path)},
                },
            }
        },
        "tokens": {
            "api": {
                "identity": "oidc",
                "resource": RESOURCE,
                "scopes": [SCOPE],
                "verify": True,
                "sinks": [{"type": "file", "path": str(directory / "api.token")}],
            }
        },
        "defaults": {"startup_spread": 0},
        "listen": None,
    }


@pytest.mark.parametrize("key_type", ["RSA", "EC"])
def test_once_signs_in_with_an_assertion(
    tmp_path: Path, oidc_server: OidcServer, key_type: str
) -> None:
    config = tmp_path / "tokend.yaml"
    config.write_text(yaml.safe_dump(_document(oidc_server, tmp_path, key_type)))
    for _ in range(2):  # two processes, two assertions: both accepted, so neither was replayed
        run = tokend("once", "-c", str(config))
        assert run.returncode == 0, run.stderr + oidc_server.log_tail()
    claims = jwt.decode((tmp_path / "api.token").read_text(), options={"verify_signature": False})
    assert (claims["client_id"], claims["aud"], claims["scope"]) == (CLIENT_ID, RESOURCE, SCOPE)


def test_a_replayed_assertion_is_refused_and_tokend_never_sends_one(
    tmp_path: Path, oidc_server: OidcServer
) -> None:
    config = validate_config(_document(oidc_server, tmp_path, "RSA"))

    async def scenario() -> list[dict[str, Any]]:
        async with harness(config, FakeClock(datetime.now(UTC))) as h:
            for _ in range(3):  # one process, refresh after refresh: each assertion is new
                assert await h.refresh_all(), h.job("api").last_error
                h.clock.advance(timedelta(seconds=1))
            grant = h.job("api").request.grant
            built = [
                await grant.request(oidc_server.token_endpoint, Target(RESOURCE)) for _ in "ab"
            ]
        return [dict(request.form) for request in built]

    first, second = asyncio.run(scenario())
    assert _claims(first)["jti"] != _claims(second)["jti"]
    assert _claims(first)["aud"] == oidc_server.token_endpoint
    with httpx2.Client() as client:
        accepted = client.post(oidc_server.token_endpoint, data=first)
        replayed = client.post(oidc_server.token_endpoint, data=first)
    assert accepted.status_code == 200, accepted.text
    assert replayed.status_code == 401 and replayed.json()["error"] == "invalid_client"
    wait_for(
        lambda: "client assertion tokens must only be used once" in oidc_server.log_tail(50),
        what="the server's reason for refusing the replay",
    )


def _claims(form: dict[str, str]) -> dict[str, Any]:
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    return dict(jwt.decode(form["client_assertion"], options={"verify_signature": False}))


def test_check_accepts_the_certificate(tmp_path: Path, oidc_server: OidcServer) -> None:
    config = tmp_path / "tokend.yaml"
    config.write_text(json.dumps(_document(oidc_server, tmp_path, "EC")))
    run = tokend("check", "-c", str(config))
    assert run.returncode == 0 and "OK" in run.stdout, run.stderr
