"""The local token endpoint, as unmodified SDKs use it: azure-identity (`ManagedIdentityCredential`,
`DefaultAzureCredential`) and MSAL (`ManagedIdentityClient`) from PyPI get the token a real
`tokend run` holds, over the App Service and the IMDS protocols; refusals are SDK-shaped; the
header secret and the tokens never reach the log.

One tokend process serves the whole module; the fake Entra ID answers every token request with an
opaque canary token per resource (no JWT shape for redaction to catch).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import msal
import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

from tests.conftest import entra_identity, write_config
from tests.support import idp as faults
from tests.support.idp import CLIENT_ID, CLIENT_SECRET, FakeIdp, RecordedRequest
from tests.support.processes import start_tokend, tokend, wait_for
from tests.support.servers import free_port

OTHER_CLIENT, OTHER_SECRET = "other-client", "other-secret-7c1d"
HEADER_SECRET = "CANARY-header-secret-4d2a9e"
PRINCIPAL, RESOURCE_ID = "0f0e0d0c-aaaa-bbbb-cccc-000000000002", "/subscriptions/s/rg/other-mi"
SDK_VARIABLES = (
    "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT",
    "MSI_ENDPOINT", "MSI_SECRET", "AZURE_POD_IDENTITY_AUTHORITY_HOST", "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_USERNAME",
)  # fmt: skip


def canary_token(resource: str, client_id: str) -> str:
    slug = resource.removeprefix("https://").replace(".", "-").replace("/", "_")
    return f"CANARY-token-{slug}-{client_id}-{time.monotonic_ns()}"


@dataclass
class Served:
    url: str
    app_service: str
    tmp: Path
    log: Path
    idp: FakeIdp
    issued: list[str]
    metrics: str

    def held(self, name: str) -> str:
        """The token tokend holds for `name`, as its file sink has it (sinks are written in the
        background: a token just acquired may take a moment to get there)."""
        path = self.tmp / f"{name}.token"
        return wait_for(lambda: path.exists() and path.read_text(), 10, f"{path} written")

    def get(
        self, path: str, headers: dict[str, str] | None = None, **params: str
    ) -> httpx2.Response:
        return httpx2.get(self.url + path, params=params, headers=headers or {}, timeout=10)

    def app_service_get(self, header: str | None = HEADER_SECRET, **params: str) -> httpx2.Response:
        headers = {"X-IDENTITY-HEADER": header} if header is not None else {}
        return self.get("/msi/token", headers, **{"api-version": "2019-08-01", **params})

    def imds_get(self, headers: dict[str, str] | None = None, **params: str) -> httpx2.Response:
        headers = {"Metadata": "true"} if headers is None else headers
        path = "/metadata/identity/oauth2/token"
        return self.get(path, headers, **{"api-version": "2018-02-01", **params})


@pytest.fixture(scope="module")
def served(_idp_server: FakeIdp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    idp, tmp = _idp_server, tmp_path_factory.mktemp("endpoint")
    idp.reset()
    idp.provider.clients[OTHER_CLIENT] = OTHER_SECRET
    issued: list[str] = []
    idp.policy = _opaque_tokens(issued)
    port, metrics = free_port(), free_port()

    tokens = {
        name: {
            "identity": identity,
            "sinks": [{"type": "file", "path": str(tmp / f"{name}.token")}],
            **target,
        }
        for name, identity, target in (
            ("crm", "app", {"resource": "https://crm.example"}),
            ("graph", "app", {"scopes": ["https://graph.example/.default"]}),
            ("crm-other", "other", {"resource": "https://crm.example"}),
            ("lazy", "app", {"resource": "https://lazy.example", "on_demand": True}),
            ("slow", "app", {"resource": "https://slow.example", "on_demand": True}),
            ("hung", "app", {"resource": "https://hung.example", "on_demand": True}),
            ("refused", "bad", {"resource": "https://refused.example", "on_demand": True}),
        )
    }
    other = entra_identity(idp, {"env": "OTHER_SECRET"}) | {"client_id": OTHER_CLIENT}
    config = write_config(
        tmp / "config.yaml",
        {
            "identities": {
                "app": entra_identity(idp, {"env": "APP_SECRET"}),
                "other": other,
                "bad": entra_identity(idp, "wrong-secret") | {"client_id": "bad-client"},
            },
            "tokens": tokens,
            "defaults": {"startup_spread": 0},
            "listen": f"127.0.0.1:{metrics}",
            "endpoint": {
                "listen": f"127.0.0.1:{port}",
                "protocols": ["app_service", "imds"],
                "header_secret": {"env": "ENDPOINT_HEADER"},
                "env_file": str(tmp / "endpoint.env"),
                "wait": "2s",
                "default_identity": "app",
                "identities": {"other": {"principal_id": PRINCIPAL, "mi_res_id": RESOURCE_ID}},
            },
        },
    )
    env = {
        "APP_SECRET": CLIENT_SECRET,
        "OTHER_SECRET": OTHER_SECRET,
        "ENDPOINT_HEADER": HEADER_SECRET,
    }
    log = tmp / "tokend.log"
    process = start_tokend("--log-level", "debug", "run", "-c", str(config), env=env, log=log)
    metrics_url = f"http://127.0.0.1:{metrics}"
    try:
        wait_for(lambda: _ok(f"{metrics_url}/readyz"), what="tokend ready")
        url = f"http://127.0.0.1:{port}"
        yield Served(url, f"{url}/msi/token", tmp, log, idp, issued, metrics_url)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
        idp.reset()
        del idp.provider.clients[OTHER_CLIENT]


def _opaque_tokens(issued: list[str]) -> object:
    def policy(request: RecordedRequest) -> faults.Fault | None:
        resource = request.form.get("resource") or request.form.get("scope", "").split()[0]
        if "hung" in resource:
            return faults.hang(4)
        if "slow" in resource:  # answered after a pause, while the first request waits
            return _after(0.5, _opaque(resource, request, issued))
        return _opaque(resource, request, issued)

    return policy


def _opaque(resource: str, request: RecordedRequest, issued: list[str]) -> faults.Fault:
    if request.form.get("client_secret") == "wrong-secret":
        return faults.entra_error(401, "invalid_client", 7000215)
    value = canary_token(resource, request.form.get("client_id", ""))
    issued.append(value)
    return faults.token_body({"access_token": value, "token_type": "Bearer", "expires_in": 3600})


def _after(seconds: float, fault: faults.Fault) -> faults.Fault:
    async def respond() -> object:
        import asyncio

        await asyncio.sleep(seconds)
        return await fault()

    return respond  # type: ignore[return-value]


def _ok(url: str) -> bool:
    try:
        return httpx2.get(url, timeout=2).status_code == 200
    except httpx2.TransportError:
        return False


@pytest.fixture
def app_service_env(served: Served, monkeypatch: pytest.MonkeyPatch) -> Served:
    for name in SDK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", served.app_service)
    monkeypatch.setenv("IDENTITY_HEADER", HEADER_SECRET)
    return served


@pytest.fixture
def imds_env(served: Served, monkeypatch: pytest.MonkeyPatch) -> Served:
    for name in SDK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", served.url)
    return served


# --- the SDKs, unmodified --------------------------------------------------------------------


def test_azure_identity_over_app_service(app_service_env: Served) -> None:
    credential = ManagedIdentityCredential()
    token = credential.get_token("https://crm.example/.default")
    assert token.token == app_service_env.held("crm")
    assert abs(token.expires_on - (time.time() + 3600)) < 120
    graph = credential.get_token("https://graph.example/.default")  # a v2 token, by its scope
    assert graph.token == app_service_env.held("graph")


def test_default_azure_credential_with_app_service_variables(app_service_env: Served) -> None:
    credential = DefaultAzureCredential(exclude_interactive_browser_credential=True)
    assert credential.get_token("https://crm.example/.default").token == app_service_env.held("crm")


def test_azure_identity_chooses_an_identity_by_client_id(app_service_env: Served) -> None:
    credential = ManagedIdentityCredential(client_id=OTHER_CLIENT)
    token = credential.get_token("https://crm.example/.default")
    assert token.token == app_service_env.held("crm-other") != app_service_env.held("crm")


def test_msal_managed_identity_client_over_app_service(app_service_env: Served) -> None:
    client = msal.ManagedIdentityClient(
        msal.SystemAssignedManagedIdentity(), http_client=requests.Session()
    )
    result = client.acquire_token_for_client(resource="https://crm.example")
    assert result.get("access_token") == app_service_env.held("crm"), result.get("error")
    other = msal.ManagedIdentityClient(
        msal.UserAssignedManagedIdentity(resource_id=RESOURCE_ID), http_client=requests.Session()
    )
    result = other.acquire_token_for_client(resource="https://crm.example")
    assert result.get("access_token") == app_service_env.held("crm-other"), result.get("error")


def test_azure_identity_and_msal_over_imds(imds_env: Served) -> None:
    token = ManagedIdentityCredential().get_token("https://crm.example/.default")
    assert token.token == imds_env.held("crm")
    client = msal.ManagedIdentityClient(
        msal.UserAssignedManagedIdentity(object_id=PRINCIPAL), http_client=requests.Session()
    )
    result = client.acquire_token_for_client(resource="https://crm.example")
    assert result.get("access_token") == imds_env.held("crm-other"), result.get("error")


def test_wrong_or_missing_header_secret_is_refused(
    app_service_env: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    for header in (None, "", "wrong", HEADER_SECRET + "x", HEADER_SECRET[:-1]):
        response = app_service_env.app_service_get(header, resource="https://crm.example")
        assert response.status_code == 401
        assert response.json() == {
            "statusCode": 401,
            "message": "X-IDENTITY-HEADER is missing or wrong",
        }
        assert "access_token" not in response.text
    monkeypatch.setenv("IDENTITY_HEADER", "wrong-header")
    with pytest.raises(ClientAuthenticationError):
        ManagedIdentityCredential().get_token("https://crm.example/.default")


def test_unconfigured_resource_is_a_400_in_each_protocols_shape(
    app_service_env: Served,
) -> None:
    response = app_service_env.app_service_get(resource="https://elsewhere.example")
    assert response.status_code == 400
    assert response.json()["statusCode"] == 400 and "no token" in response.json()["message"]
    response = app_service_env.imds_get(resource="https://elsewhere.example")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_resource"
    response = app_service_env.imds_get(resource="https://crm.example", client_id="nobody")
    assert (response.status_code, response.json()["error"]) == (400, "invalid_request")
    with pytest.raises(ClientAuthenticationError):
        ManagedIdentityCredential().get_token("https://elsewhere.example/.default")
    before = len(app_service_env.idp.token_requests)
    app_service_env.app_service_get(resource="https://minted-on-demand.example")
    assert len(app_service_env.idp.token_requests) == before  # nothing is minted for it


def test_imds_needs_metadata_and_refuses_proxied_requests(served: Served) -> None:
    for headers in ({}, {"Metadata": "false"}):
        response = served.imds_get(headers, resource="https://crm.example")
        assert response.status_code == 400
        assert response.json()["error_description"] == "Required metadata header not specified"
    proxied = {"Metadata": "true", "X-Forwarded-For": "203.0.113.9"}
    response = served.imds_get(proxied, resource="https://crm.example")
    assert response.status_code == 400 and "X-Forwarded-For" in response.json()["error_description"]
    response = served.imds_get(resource="https://crm.example")
    body = response.json()
    assert body["access_token"] == served.held("crm")
    assert body["expires_in"].isdigit() and body["expires_on"].isdigit()
    assert body["resource"] == "https://crm.example" and body["token_type"] == "Bearer"


def test_app_service_answer_and_parameters(served: Served) -> None:
    body = served.app_service_get(resource="https://crm.example").json()
    assert body["access_token"] == served.held("crm")
    assert body["client_id"] == CLIENT_ID and body["resource"] == "https://crm.example"
    assert isinstance(body["expires_on"], str) and body["expires_on"].isdigit()
    by_principal = served.app_service_get(resource="https://crm.example", principal_id=PRINCIPAL)
    assert by_principal.json()["access_token"] == served.held("crm-other")
    assert served.app_service_get(resource="https://crm.example/").json()["access_token"] == (
        served.held("crm")
    )
    wrong_version = served.get(
        "/msi/token", {"X-IDENTITY-HEADER": HEADER_SECRET}, resource="https://crm.example"
    )
    assert wrong_version.status_code == 400
    twice = httpx2.get(
        served.app_service + "?api-version=2019-08-01&resource=https://crm.example"
        "&resource=https://graph.example",
        headers={"X-IDENTITY-HEADER": HEADER_SECRET},
    )
    assert twice.status_code == 400
    assert served.get("/elsewhere").status_code == 404


# --- on demand, waiting, unavailable ---------------------------------------------------------


def _requested(served: Served, resource: str) -> int:
    return sum(r.form.get("resource") == resource for r in served.idp.token_requests)


def test_on_demand_token_is_acquired_by_its_first_request(served: Served) -> None:
    assert _requested(served, "https://lazy.example") == 0  # not at start
    assert not (served.tmp / "lazy.token").exists()
    response = served.app_service_get(resource="https://lazy.example")
    assert response.status_code == 200
    assert response.json()["access_token"] == served.held("lazy")
    assert _requested(served, "https://lazy.example") == 1
    again = served.app_service_get(resource="https://lazy.example")
    assert again.json()["access_token"] == served.held("lazy")
    assert _requested(served, "https://lazy.example") == 1  # served from memory afterwards


def test_first_request_waits_for_the_acquisition_in_flight(served: Served) -> None:
    started = time.monotonic()
    response = served.app_service_get(resource="https://slow.example")
    assert response.status_code == 200, response.text
    assert response.json()["access_token"] == served.held("slow")
    assert time.monotonic() - started >= 0.4  # it did wait for the slow identity provider


def test_no_token_within_the_wait_is_a_503_with_retry_after(served: Served) -> None:
    started = time.monotonic()
    response = served.app_service_get(resource="https://hung.example")
    waited = time.monotonic() - started
    assert response.status_code == 503
    assert 1.5 <= waited < 4  # the configured wait (2 s), not the identity provider's hang
    assert int(response.headers["Retry-After"]) >= 1
    refused = served.imds_get(resource="https://refused.example")
    assert refused.status_code == 503  # refused by the provider: no point waiting
    assert refused.json()["error"] == "temporarily_unavailable"
    assert "invalid_client" in refused.json()["error_description"]
    assert int(refused.headers["Retry-After"]) >= 1


# --- operating it ------------------------------------------------------------------------------


def test_endpoint_env_prints_what_clients_export(served: Served) -> None:
    result = tokend(
        "endpoint",
        "env",
        "-c",
        str(served.tmp / "config.yaml"),
        env={"ENDPOINT_HEADER": HEADER_SECRET},
    )
    assert result.returncode == 0, result.stderr
    assert f"export IDENTITY_ENDPOINT='{served.app_service}'" in result.stdout
    assert f"export IDENTITY_HEADER='{HEADER_SECRET}'" in result.stdout
    env_file = served.tmp / "endpoint.env"
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert f"IDENTITY_HEADER='{HEADER_SECRET}'" in env_file.read_text()


def test_requests_are_counted_and_never_logged(served: Served) -> None:
    served.app_service_get(resource="https://crm.example")
    served.app_service_get("wrong", resource="https://crm.example")
    log = served.log.read_text()
    assert "local token endpoint on 127.0.0.1" in log and "IDENTITY_ENDPOINT=" in log
    assert HEADER_SECRET not in log
    for value in served.issued:
        assert value not in log
    assert not [line for line in log.splitlines() if " INFO " in line and "msi/token?" in line]
    metrics = httpx2.get(f"{served.metrics}/metrics", timeout=5).text
    for line in (
        'tokend_endpoint_requests_total{protocol="app_service",result="success"}',
        'tokend_endpoint_requests_total{protocol="app_service",result="unauthorized"}',
        'tokend_endpoint_request_duration_seconds_count{protocol="app_service"}',
    ):
        value = next(m.split()[-1] for m in metrics.splitlines() if m.startswith(line))
        assert float(value) >= 1, line
    assert HEADER_SECRET not in metrics
