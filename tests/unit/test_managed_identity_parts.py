"""`type: managed_identity` piece by piece: which endpoint it picks from the environment, the
exact request it sends to IMDS and to App Service for each way of choosing an identity, and one
line per mistake."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import ValidationError

from tokend.oauth.dialects import Endpoint, Target
from tokend.oauth.grants.base import GrantContext, HttpRequest
from tokend.oauth.grants.managed_identity import (
    IMDS_URL,
    ManagedIdentityGrant,
    ManagedIdentityOptions,
    endpoint_problem,
)
from tokend.secrets import SecretError

APP_SERVICE = {"IDENTITY_ENDPOINT": "http://127.0.0.1:41741/msi/token", "IDENTITY_HEADER": "hdr-1"}
RETRY = frozenset({404, 410})


def _options(**options: Any) -> ManagedIdentityOptions:
    return ManagedIdentityOptions.model_validate({"type": "managed_identity", **options})


def _grant(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], **options: Any
) -> ManagedIdentityGrant:
    for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    context = GrantContext(client_id="", endpoint=Endpoint())
    return ManagedIdentityGrant(_options(**options), context)


def _request(grant: ManagedIdentityGrant, target: Target) -> HttpRequest:
    return asyncio.run(grant.request(grant.endpoint.token_url or "", target))


@pytest.mark.parametrize(
    ("selector", "param"),
    [
        ({}, {}),
        ({"client_id": "c-1"}, {"client_id": "c-1"}),
        ({"object_id": "o-1"}, {"object_id": "o-1"}),
        ({"msi_res_id": "/sub/x"}, {"msi_res_id": "/sub/x"}),
    ],
)
def test_the_imds_request(
    monkeypatch: pytest.MonkeyPatch, selector: dict[str, str], param: dict[str, str]
) -> None:
    grant = _grant(monkeypatch, {}, **selector)
    assert grant.endpoint.token_url == IMDS_URL
    assert IMDS_URL == "http://169.254.169.254/metadata/identity/oauth2/token"
    request = _request(grant, Target(resource="https://vault.azure.net"))
    assert request == HttpRequest(
        "GET",
        IMDS_URL,
        params={"resource": "https://vault.azure.net", "api-version": "2018-02-01", **param},
        headers={"Metadata": "true", "Accept": "application/json"},
        retry_statuses=RETRY,
    )
    assert grant.client_id == next(iter(selector.values()), "")
    assert asyncio.run(grant.source_version()) == "imds"
    assert repr(grant) == f"ManagedIdentityGrant(source='imds', client_id={grant.client_id!r})"


@pytest.mark.parametrize(
    ("selector", "param"),
    [
        ({}, {}),
        ({"client_id": "c-1"}, {"client_id": "c-1"}),
        ({"object_id": "o-1"}, {"object_id": "o-1"}),
        ({"msi_res_id": "/sub/x"}, {"mi_res_id": "/sub/x"}),  # App Service's name for it
    ],
)
def test_the_app_service_request(
    monkeypatch: pytest.MonkeyPatch, selector: dict[str, str], param: dict[str, str]
) -> None:
    grant = _grant(monkeypatch, APP_SERVICE, **selector)
    assert grant.endpoint.token_url == APP_SERVICE["IDENTITY_ENDPOINT"]
    request = _request(grant, Target(scopes=("https://vault.azure.net/.default",)))
    assert request == HttpRequest(
        "GET",
        APP_SERVICE["IDENTITY_ENDPOINT"],
        params={"resource": "https://vault.azure.net", "api-version": "2019-08-01", **param},
        headers={"X-IDENTITY-HEADER": "hdr-1", "Accept": "application/json"},
        retry_statuses=RETRY,
    )
    assert asyncio.run(grant.source_version()) == "app_service"


def test_the_identity_header_is_read_at_each_request(monkeypatch: pytest.MonkeyPatch) -> None:
    grant = _grant(monkeypatch, APP_SERVICE)
    monkeypatch.setenv("IDENTITY_HEADER", "hdr-2")  # rotated under the process
    assert _request(grant, Target(resource="r")).headers["X-IDENTITY-HEADER"] == "hdr-2"
    monkeypatch.delenv("IDENTITY_HEADER")
    with pytest.raises(SecretError, match=r"^environment variable IDENTITY_HEADER is not set$"):
        _request(grant, Target(resource="r"))


@pytest.mark.parametrize(
    ("source", "endpoint", "env", "resolved"),
    [
        ("auto", None, {}, ("imds", IMDS_URL)),
        ("auto", None, {"IDENTITY_ENDPOINT": "http://127.0.0.1:1/t"}, ("imds", IMDS_URL)),
        ("auto", None, {"IDENTITY_HEADER": "h"}, ("imds", IMDS_URL)),
        ("auto", None, APP_SERVICE, ("app_service", APP_SERVICE["IDENTITY_ENDPOINT"])),
        ("imds", None, APP_SERVICE, ("imds", IMDS_URL)),
        ("imds", "http://169.254.169.254/other", {}, ("imds", "http://169.254.169.254/other")),
        ("app_service", "https://msi.example/t", APP_SERVICE, ("app_service", "https://msi.example/t")),
        ("auto", "https://msi.example/t", APP_SERVICE, ("app_service", "https://msi.example/t")),
        ("app_service", "https://msi.example/t", {"IDENTITY_HEADER": "h"},
         ("app_service", "https://msi.example/t")),
    ],
)  # fmt: skip
def test_which_endpoint_is_asked(
    source: str, endpoint: str | None, env: dict[str, str], resolved: tuple[str, str]
) -> None:
    options = ManagedIdentityOptions.model_construct(type="managed_identity", source=source,
                                                      endpoint=endpoint)  # fmt: skip
    assert options.resolve(env) == resolved


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({}, "source app_service: IDENTITY_HEADER is not set (App Service, Functions and "
             "Container Apps set it for a managed identity)"),
        ({"IDENTITY_ENDPOINT": "http://127.0.0.1:1/t"}, "source app_service: IDENTITY_HEADER is"),
        ({"IDENTITY_HEADER": "h"}, "source app_service: IDENTITY_ENDPOINT is not set"),
        ({"IDENTITY_HEADER": "h", "IDENTITY_ENDPOINT": ""},
         "source app_service: IDENTITY_ENDPOINT is not set"),
    ],
)  # fmt: skip
def test_app_service_outside_app_service(env: dict[str, str], problem: str) -> None:
    options = ManagedIdentityOptions.model_construct(type="managed_identity", source="app_service")
    with pytest.raises(ValueError, match=r"^source app_service") as caught:
        options.resolve(env)
    assert str(caught.value).startswith(problem)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://169.254.169.254/metadata/identity/oauth2/token", None),
        ("http://127.0.0.1:8081/msi/token", None),
        ("https://msi.example/token", None),
        ("http://msi.example/token", "'http://msi.example/token' uses plain http; https is"
                                     " required except for loopback addresses"),
        ("http://169.254.169.253/token", "'http://169.254.169.253/token' uses plain http; https"
                                         " is required except for loopback addresses"),
        ("ftp://169.254.169.254/token", "'ftp://169.254.169.254/token' is not an http(s) URL"),
    ],
)  # fmt: skip
def test_plain_http_only_to_imds_or_loopback(url: str, problem: str | None) -> None:
    assert endpoint_problem(url) == problem


@pytest.mark.parametrize(
    ("options", "env", "line"),
    [
        ({"endpoint": "http://msi.example/t"}, {}, "endpoint: 'http://msi.example/t' uses plain"),
        ({"source": "app_service"}, {"IDENTITY_HEADER": "h", "IDENTITY_ENDPOINT":
          "http://msi.example/t"}, "endpoint ($IDENTITY_ENDPOINT): 'http://msi.example/t' uses"),
        ({"source": "app_service", "endpoint": "http://msi.example/t"}, {"IDENTITY_HEADER": "h"},
         "endpoint: 'http://msi.example/t' uses plain"),
        ({"client_id": "a", "msi_res_id": "b"}, {},
         "give at most one of client_id, object_id or msi_res_id (got client_id, msi_res_id)"),
        ({"object_id": "a", "client_id": "b"}, {},
         "give at most one of client_id, object_id or msi_res_id (got client_id, object_id)"),
    ],
)  # fmt: skip
def test_config_mistakes_name_the_key(
    monkeypatch: pytest.MonkeyPatch, options: dict[str, str], env: dict[str, str], line: str
) -> None:
    for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        _options(**options)
    (error,) = caught.value.errors()
    assert error["msg"].removeprefix("Value error, ").startswith(line)


@pytest.mark.parametrize(
    ("resource", "scopes", "problem"),
    [
        ("https://r", (), None),
        (None, ("https://r/.default",), None),
        (None, (), "a managed identity takes exactly one resource, or one scope"),
        ("https://r", ("s",), "a managed identity takes exactly one resource, or one scope"),
        (None, ("a", "b"), "a managed identity takes exactly one resource, or one scope"),
    ],
)
def test_one_resource_or_one_scope(
    resource: str | None, scopes: tuple[str, ...], problem: str | None
) -> None:
    assert _options().target_problem(resource, scopes) == problem
