"""tokend's client-credentials flow against oidc-provider (panva, 9.x): a real OAuth2 server from
npm, over real HTTP on 127.0.0.1, driven through the `tokend` command line as an operator would.

The server only accepts the secret transport each client registered (client_secret_basic or
client_secret_post), so a token proves tokend used the configured method.
"""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import jwt
import pytest
import yaml

from tests.interop.conftest import ACCESS_TOKEN_TTL, RESOURCE, SCOPE, OidcClient, OidcServer
from tests.support.processes import tokend

pytestmark = pytest.mark.interop

AUTH_METHODS = ["client_secret_basic", "client_secret_post"]
SECRET_ENV = "OIDC_SECRET"
CLOCK_SLACK = 5  # seconds between the server's iat and tokend's request, rounded either way


def explain(run: subprocess.CompletedProcess[str]) -> str:
    return f"exit {run.returncode}\n--- stdout\n{run.stdout}--- stderr\n{run.stderr}"


@pytest.fixture(scope="session")
def discovery(oidc_server: OidcServer) -> dict[str, Any]:
    url = f"{oidc_server.issuer}/.well-known/openid-configuration"
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback http
        document: dict[str, Any] = json.load(response)
    assert document["issuer"] == oidc_server.issuer
    assert document["token_endpoint"] == oidc_server.token_endpoint
    return document


@pytest.fixture(scope="session")
def jwks(discovery: dict[str, Any]) -> jwt.PyJWKClient:
    return jwt.PyJWKClient(discovery["jwks_uri"], cache_keys=True, timeout=10)


def write_config(
    directory: Path,
    server: OidcServer,
    client: OidcClient,
    *,
    naming: str = "issuer",
    auth_method: str | None = None,
) -> tuple[Path, Path]:
    """A tokend config for one token from `server`; returns (config path, token file path)."""
    token_file = directory / "api.json"
    where = (
        {"issuer": server.issuer}
        if naming == "issuer"
        else {"token_endpoint": server.token_endpoint}
    )
    config = {
        "identities": {
            "oidc": {
                **where,
                "allow_insecure_http": True,
                "client_id": client.client_id,
                "credential": {
                    "type": "client_secret",
                    "secret": {"env": SECRET_ENV},
                    "auth_method": auth_method or client.auth_method,
                },
            }
        },
        "tokens": {
            "api": {
                "identity": "oidc",
                "resource": RESOURCE,
                "scopes": [SCOPE],
                "sinks": [{"type": "file", "path": str(token_file), "format": "json"}],
            }
        },
        "listen": None,
    }
    path = directory / "tokend.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path, token_file


def secret_forms(client_id: str, secret: str) -> Iterator[str]:
    """The secret as it might leak: itself, form-encoded, and inside HTTP Basic credentials."""
    yield secret
    yield quote(secret, safe="")
    yield quote_plus(secret)
    for pair in (f"{client_id}:{secret}", f"{client_id}:{quote(secret, safe='')}"):
        yield base64.b64encode(pair.encode()).decode()


@pytest.mark.parametrize("naming", ["token_endpoint", "issuer"])
@pytest.mark.parametrize("auth_method", AUTH_METHODS)
def test_once_publishes_a_verifiable_jwt(
    tmp_path: Path,
    oidc_server: OidcServer,
    jwks: jwt.PyJWKClient,
    auth_method: str,
    naming: str,
) -> None:
    client = oidc_server.client(auth_method)
    config, token_file = write_config(tmp_path, oidc_server, client, naming=naming)

    run = tokend("once", "-c", str(config), env={SECRET_ENV: client.secret})

    assert run.returncode == 0, explain(run) + "\n--- server log\n" + oidc_server.log_tail()
    for leaked in secret_forms(client.client_id, client.secret):
        assert leaked not in run.stdout + run.stderr
    assert token_file.stat().st_mode & 0o777 == 0o600
    published = json.loads(token_file.read_text(encoding="utf-8"))
    value = published["access_token"]
    assert value not in run.stdout + run.stderr

    header = jwt.get_unverified_header(value)
    assert header["alg"] == "RS256"
    assert header["typ"] == "at+jwt"
    claims = jwt.decode(
        value,
        jwks.get_signing_key_from_jwt(value).key,
        algorithms=["RS256"],
        audience=RESOURCE,
        issuer=oidc_server.issuer,
        options={"require": ["exp", "iat", "iss", "aud", "client_id"]},
    )
    assert claims["aud"] == RESOURCE
    assert claims["iss"] == oidc_server.issuer
    assert claims["client_id"] == client.client_id
    assert claims["scope"] == SCOPE
    assert claims["exp"] - claims["iat"] == ACCESS_TOKEN_TTL

    assert published["token_type"] == "Bearer"
    assert abs(published["expires_on"] - claims["exp"]) <= CLOCK_SLACK
    assert published["resource"] == RESOURCE
    assert published["scopes"] == [SCOPE]


@pytest.mark.parametrize("auth_method", AUTH_METHODS)
def test_wrong_secret_fails_without_leaking_secrets(
    tmp_path: Path, oidc_server: OidcServer, auth_method: str
) -> None:
    client = oidc_server.client(auth_method)
    wrong = f"CANARY-wrong-secret:+/%& =?{auth_method}-7f3a9c1e5b"
    config, token_file = write_config(tmp_path, oidc_server, client)

    run = tokend("once", "-c", str(config), env={SECRET_ENV: wrong})

    assert run.returncode == 1, explain(run)
    error_lines = [line for line in run.stderr.splitlines() if "invalid_client" in line]
    assert error_lines, explain(run)
    assert any(oidc_server.host in line for line in error_lines), explain(run)
    output = run.stdout + run.stderr
    candidates = [(client.client_id, wrong)]
    candidates += [(known.client_id, known.secret) for known in oidc_server.clients.values()]
    for client_id, secret in candidates:
        for leaked in secret_forms(client_id, secret):
            assert leaked not in output, explain(run)
    assert "CANARY" not in output, explain(run)
    assert not token_file.exists()


@pytest.mark.parametrize(
    ("registered", "configured"),
    [("client_secret_basic", "client_secret_post"), ("client_secret_post", "client_secret_basic")],
)
def test_auth_method_other_than_registered_is_refused(
    tmp_path: Path, oidc_server: OidcServer, registered: str, configured: str
) -> None:
    """The counterpart of the success tests: the server really tells the two methods apart."""
    client = oidc_server.client(registered)
    config, token_file = write_config(tmp_path, oidc_server, client, auth_method=configured)

    run = tokend("once", "-c", str(config), env={SECRET_ENV: client.secret})

    assert run.returncode == 1, explain(run)
    assert "invalid_client" in run.stderr, explain(run)
    assert client.secret not in run.stdout + run.stderr
    assert not token_file.exists()


def test_check_accepts_the_config(tmp_path: Path, oidc_server: OidcServer) -> None:
    client = oidc_server.client("client_secret_basic")
    config, token_file = write_config(tmp_path, oidc_server, client)

    run = tokend("check", "-c", str(config), env={SECRET_ENV: client.secret})

    assert run.returncode == 0, explain(run)
    assert "OK" in run.stdout, explain(run)
    assert client.secret not in run.stdout + run.stderr
    assert not token_file.exists()
