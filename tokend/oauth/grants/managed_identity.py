"""`type: managed_identity`: tokens from the Azure managed identity of the machine tokend runs
on, so one tokend on a VM can feed every consumer from the VM's identity. No tenant, no secret.

Two sources, as the Azure SDKs pick them:
- App Service, Functions, Container Apps (and Azure Arc): `IDENTITY_ENDPOINT` with the secret
  `IDENTITY_HEADER` sent as `X-IDENTITY-HEADER`, `api-version=2019-08-01`;
- a VM or scale set: the Instance Metadata Service at 169.254.169.254 with `Metadata: true`,
  `api-version=2018-02-01`.
`source: auto` (the default) takes App Service when both variables are set, else IMDS. A
user-assigned identity is chosen by one of `client_id`, `object_id` or `msi_res_id`.

These endpoints speak plain http by nature; plain http is allowed to exactly them: the
link-local IMDS address, and a loopback address (where App Service and its relatives listen).
IMDS's retry guidance applies: 404 and 410 while it starts or updates are transient, like 429
(with `Retry-After`) and 5xx.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import model_validator

from tokend.oauth.dialects import Endpoint, Target
from tokend.oauth.grants.base import (
    CREDENTIALS,
    CredentialOptions,
    CredentialType,
    GrantContext,
    HttpRequest,
)
from tokend.secrets import Secret, SecretError
from tokend.transport import url_problem

IMDS_ADDRESS = "169.254.169.254"
IMDS_URL = f"http://{IMDS_ADDRESS}/metadata/identity/oauth2/token"
IMDS_API_VERSION = "2018-02-01"
APP_SERVICE_API_VERSION = "2019-08-01"
ENDPOINT_VARIABLE = "IDENTITY_ENDPOINT"
HEADER_VARIABLE = "IDENTITY_HEADER"
RETRY_STATUSES = frozenset({404, 410})
_SELECTORS = ("client_id", "object_id", "msi_res_id")

Source = Literal["imds", "app_service"]


class ManagedIdentityOptions(CredentialOptions):
    own_endpoint: ClassVar[bool] = True

    type: Literal["managed_identity"]
    source: Literal["auto", "imds", "app_service"] = "auto"
    client_id: str | None = None
    object_id: str | None = None
    msi_res_id: str | None = None
    """A user-assigned identity's Azure resource ID (`mi_res_id` on App Service)."""
    endpoint: str | None = None
    """Default: the IMDS address, or `$IDENTITY_ENDPOINT` for App Service."""

    @model_validator(mode="after")
    def _valid(self) -> ManagedIdentityOptions:
        chosen = [key for key in _SELECTORS if getattr(self, key) is not None]
        if len(chosen) > 1:
            raise ValueError(
                f"give at most one of client_id, object_id or msi_res_id (got {', '.join(chosen)})"
            )
        source, url = self.resolve(os.environ)
        if problem := endpoint_problem(url):
            raise ValueError(f"{_endpoint_key(self, source)}: {problem}")
        return self

    def resolve(self, environ: Mapping[str, str]) -> tuple[Source, str]:
        """Which endpoint to ask, chosen as the Azure SDKs choose. Raises `ValueError` when
        App Service is asked for outside App Service."""
        app_service = bool(environ.get(ENDPOINT_VARIABLE) and environ.get(HEADER_VARIABLE))
        if self.source == "imds" or (self.source == "auto" and not app_service):
            return "imds", self.endpoint or IMDS_URL
        if not environ.get(HEADER_VARIABLE):
            raise ValueError(
                f"source app_service: {HEADER_VARIABLE} is not set (App Service, Functions and "
                "Container Apps set it for a managed identity)"
            )
        url = self.endpoint or environ.get(ENDPOINT_VARIABLE)
        if not url:
            raise ValueError(f"source app_service: {ENDPOINT_VARIABLE} is not set")
        return "app_service", url

    def target_problem(self, resource: str | None, scopes: tuple[str, ...]) -> str | None:
        if (resource is None) == (not scopes) or len(scopes) > 1:
            return "a managed identity takes exactly one resource, or one scope"
        return None

    def selector(self) -> tuple[str, str] | None:
        """The query parameter naming a user-assigned identity, if one is chosen."""
        for key in _SELECTORS:
            value = getattr(self, key)
            if value is not None:
                return key, value
        return None


def endpoint_problem(url: str) -> str | None:
    """Why `url` may not serve managed-identity tokens: https anywhere, plain http only to the
    IMDS address or to loopback."""
    if urlsplit(url).hostname == IMDS_ADDRESS and url.startswith("http://"):
        return None
    return url_problem(url, allow_insecure_http=True)


def _endpoint_key(options: ManagedIdentityOptions, source: Source) -> str:
    if options.endpoint or source == "imds":
        return "endpoint"
    return f"endpoint (${ENDPOINT_VARIABLE})"


class ManagedIdentityGrant:
    __slots__ = ("_options", "_source", "client_id", "endpoint")

    def __init__(self, options: ManagedIdentityOptions, context: GrantContext) -> None:
        self._options = options
        self._source, url = options.resolve(os.environ)  # validated when the config loaded
        self.endpoint = Endpoint(token_url=url)
        selector = options.selector()
        self.client_id = selector[1] if selector else ""

    async def request(self, token_url: str, target: Target) -> HttpRequest:
        params = {"resource": _resource(target)}
        selector = self._options.selector()
        if self._source == "imds":
            params["api-version"] = IMDS_API_VERSION
            if selector:
                params[selector[0]] = selector[1]
            headers = {"Metadata": "true"}
        else:
            params["api-version"] = APP_SERVICE_API_VERSION
            if selector:
                name = "mi_res_id" if selector[0] == "msi_res_id" else selector[0]
                params[name] = selector[1]
            headers = {"X-IDENTITY-HEADER": _identity_header().reveal()}
        headers["Accept"] = "application/json"
        return HttpRequest(
            "GET", token_url, params=params, headers=headers, retry_statuses=RETRY_STATUSES
        )

    def absorb(self, body: Mapping[str, Any]) -> None:
        return None

    async def source_version(self) -> str:
        """Nothing local to replace: a fix (assigning the identity) shows only by asking."""
        return self._source

    def __repr__(self) -> str:
        return f"ManagedIdentityGrant(source={self._source!r}, client_id={self.client_id!r})"


def _resource(target: Target) -> str:
    """What the endpoints call `resource`: as given, or the one scope without `/.default`
    (as azure-identity forms it)."""
    if target.resource:
        return target.resource
    return target.scopes[0].removesuffix("/.default")


def _identity_header() -> Secret:
    value = os.environ.get(HEADER_VARIABLE)
    if not value:
        raise SecretError(f"environment variable {HEADER_VARIABLE} is not set")
    return Secret(value)


CREDENTIALS.register(
    "managed_identity", CredentialType(ManagedIdentityOptions, ManagedIdentityGrant)
)
