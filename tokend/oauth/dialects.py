"""Where token requests go, and how they name what they are for, by kind of server.

- Entra ID v1: `{authority}/{tenant}/oauth2/token`, the target named by `resource=`.
- Entra ID v2: `{authority}/{tenant}/oauth2/v2.0/token`, the target named by `scope=`.
- Any OAuth2 server: its `token_endpoint`, or the one its issuer's discovery document names;
  `scope=` and (RFC 8707) `resource=` as configured.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"


@dataclass(frozen=True, slots=True)
class Target:
    """What a token is for: a resource (Entra ID v1, RFC 8707) and/or scopes."""

    resource: str | None = None
    scopes: tuple[str, ...] = ()

    def fields(self) -> dict[str, str]:
        """The form fields that name the target."""
        fields = {}
        if self.resource:
            fields["resource"] = self.resource
        if self.scopes:
            fields["scope"] = " ".join(self.scopes)
        return fields


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where to send token requests: a fixed URL, or an issuer whose discovery names it; and
    how to connect (plain http allowed on loopback, CA bundle)."""

    token_url: str | None = None
    issuer: str | None = None
    allow_insecure_http: bool = False
    ca_bundle: Path | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.token_url or self.issuer or "").hostname or "?"


def entra_token_url(tenant: str, target: Target, authority_host: str | None = None) -> str:
    """The Entra ID token endpoint for `target`: v1 when it names a resource, else v2."""
    authority = (authority_host or DEFAULT_AUTHORITY_HOST).rstrip("/")
    version = "oauth2/token" if target.resource else "oauth2/v2.0/token"
    return f"{authority}/{tenant}/{version}"


def endpoint_for(
    target: Target,
    *,
    tenant: str | None = None,
    authority_host: str | None = None,
    token_endpoint: str | None = None,
    issuer: str | None = None,
    allow_insecure_http: bool = False,
    ca_bundle: Path | None = None,
) -> Endpoint:
    """The endpoint an identity uses for `target`: Entra ID's (v1 or v2, by the target) when a
    tenant is given, else the configured token endpoint or issuer."""
    token_url = entra_token_url(tenant, target, authority_host) if tenant else token_endpoint
    return Endpoint(
        token_url=token_url,
        issuer=issuer,
        allow_insecure_http=allow_insecure_http,
        ca_bundle=ca_bundle,
    )
