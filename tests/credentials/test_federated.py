"""`type: federated` against the fake Entra ID, which checks the federated token against the
app's federated identity credential (issuer, subject, audience, signature, lifetime)."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.credentials.conftest import document, fake, identity, run
from tests.support.clock import EPOCH, FakeClock
from tests.support.federation import cluster_trust, service_account_token
from tests.support.harness import Harness
from tests.support.idp import CLIENT_ID, TENANT, FakeIdp

GRAPH = {"scopes": ["https://graph.example/.default"]}


@pytest.fixture
def trusted(entra: FakeIdp) -> FakeIdp:
    fake(entra).federations[CLIENT_ID] = cluster_trust()
    return entra


def _tokens(tmp_path: Path) -> dict[str, dict[str, Any]]:
    return {"graph": {**GRAPH, "sinks": [{"type": "file", "path": str(tmp_path / "graph")}]}}


def test_the_token_file_is_read_afresh_at_every_request(trusted: FakeIdp, tmp_path: Path) -> None:
    token_file = tmp_path / "azure-identity-token"
    credential = {"type": "federated", "token_file": str(token_file)}
    config = document(identity(trusted, credential), _tokens(tmp_path))
    written: list[str] = []

    async def scenario(h: Harness) -> None:
        for _ in range(3):
            written.append(service_account_token(h.clock.now()))
            token_file.write_text(written[-1] + "\n")  # kubelet rotates the file
            assert await h.refresh_all(), h.job("graph").last_error
            h.clock.advance(timedelta(minutes=50))

    run(trusted, config, scenario)
    accepted = fake(trusted).accepted
    assert [a.kind for a in accepted] == ["federated"] * 3
    assert [a.assertion for a in accepted] == written
    form = trusted.token_requests[0].form
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert form["client_id"] == CLIENT_ID and "client_secret" not in form


def test_a_command_prints_the_token(trusted: FakeIdp, tmp_path: Path) -> None:
    source = tmp_path / "token"
    source.write_text(service_account_token(EPOCH))
    printer = "import sys; sys.stdout.write(open(sys.argv[1]).read())"
    credential = {"type": "federated", "command": [sys.executable, "-c", printer, str(source)]}
    config = document(identity(trusted, credential), _tokens(tmp_path))

    async def scenario(h: Harness) -> None:
        assert await h.refresh_all(), h.job("graph").last_error

    run(trusted, config, scenario)
    assert [a.assertion for a in fake(trusted).accepted] == [source.read_text()]


@pytest.mark.parametrize(
    ("program", "message"),
    [
        ("import sys; sys.stderr.write('CANARY-stderr'); sys.exit(3)", "exited with status 3"),
        ("import time; time.sleep(30)", "did not finish within 0.3s"),
        ("print('not a token')", "not a token"),
    ],
)
def test_a_command_that_fails_says_how(
    trusted: FakeIdp, tmp_path: Path, program: str, message: str
) -> None:
    credential = {"type": "federated", "command": [sys.executable, "-c", program],
                  "command_timeout": "300ms"}  # fmt: skip
    config = document(identity(trusted, credential), _tokens(tmp_path))

    async def scenario(h: Harness) -> None:
        assert not await h.refresh_all()
        error = h.job("graph").last_error
        assert error is not None and message in str(error), error
        assert "CANARY" not in str(error)
        assert error.transient == ("not a token" not in message)

    run(trusted, config, scenario)
    assert trusted.token_requests == []


def test_a_token_for_another_subject_is_refused_for_good(trusted: FakeIdp, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(service_account_token(EPOCH, subject="system:serviceaccount:x:y"))
    config = document(
        identity(trusted, {"type": "federated", "token_file": str(token_file)}), _tokens(tmp_path)
    )

    async def scenario(h: Harness) -> None:
        assert not await h.refresh_all()
        error = h.job("graph").last_error
        assert error is not None and not error.transient
        assert error.code == "invalid_client/700213"

    run(trusted, config, scenario)


def test_from_environment_as_the_workload_identity_webhook_sets_it(
    trusted: FakeIdp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(service_account_token(EPOCH))
    monkeypatch.setenv("AZURE_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("AZURE_TENANT_ID", TENANT)
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", trusted.url + "/")
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    pod_identity = {
        "allow_insecure_http": True,
        "credential": {"type": "federated", "from_environment": True},
    }
    config = document(pod_identity, _tokens(tmp_path))

    async def scenario(h: Harness) -> None:
        assert await h.refresh_all(), h.job("graph").last_error

    run(trusted, config, scenario, FakeClock())
    (request,) = trusted.token_requests
    assert request.path == f"/{TENANT}/oauth2/v2.0/token"
    assert fake(trusted).accepted[0].assertion == token_file.read_text()
