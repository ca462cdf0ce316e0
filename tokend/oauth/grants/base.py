"""The `Grant` contract: how one identity asks for tokens, and the registry of credential types.

A grant builds a whole token request (method, URL, form, client authentication) afresh for each
attempt, so secrets are re-read (a replaced secret file takes effect at the next attempt) and an
assertion-based credential signs a new assertion (new `jti`) every time. After a success it may
`absorb` the response (a grant that rotates refresh tokens keeps the newest).

Adding a credential type: one module with an options model (a subclass of `CredentialOptions`
with a `type` literal) and a grant, registered with `CREDENTIALS.register(...)`, plus its module
name in `CREDENTIALS`'s built-ins. Nothing else names it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from tokend.clock import SYSTEM_CLOCK, Clock
from tokend.oauth.dialects import Endpoint, Target
from tokend.registry import Registry

if TYPE_CHECKING:
    from tokend.resources import Resources


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One token request as sent. Never logged: `repr` hides the form and the headers."""

    method: Literal["GET", "POST"]
    url: str
    form: dict[str, str] = field(default_factory=dict, repr=False)
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    retry_statuses: frozenset[int] = frozenset()
    """HTTP statuses that mean "not yet" at this endpoint besides 429, 408 and 5xx (Azure
    IMDS answers 404 and 410 while it starts or updates): transient, not permanent."""


class Grant(Protocol):
    endpoint: Endpoint
    client_id: str
    """The client the grant asks as ('' where there is none, as for a managed identity)."""

    async def request(self, token_url: str, target: Target) -> HttpRequest:
        """The request for a token for `target` at `token_url`. Raises `SecretError` when a
        secret it needs cannot be read."""
        ...

    def absorb(self, body: Mapping[str, Any]) -> None:
        """Keep what this grant needs from a successful response's body, if anything."""
        ...

    async def source_version(self) -> str:
        """A short digest of what the grant is built from (a secret's content): while a token
        fails permanently, a change here means an operator may have fixed the cause."""
        ...


class CredentialOptions(BaseModel):
    """Options every credential type has; each type's model adds its `type` literal."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    needs: ClassVar[tuple[str, ...]] = ()
    """Shared resources (config sections) this credential type uses."""
    own_endpoint: ClassVar[bool] = False
    """The credential type knows where to ask by itself (a managed identity's local endpoint):
    its identity then names no tenant, token endpoint, issuer or client_id."""

    type: str

    @classmethod
    def identity_defaults(
        cls,
        credential: Mapping[str, Any],
        identity: Mapping[str, Any],
        environ: Mapping[str, str] = os.environ,
    ) -> dict[str, Any]:
        """Identity keys this credential supplies where the identity leaves them out, from the
        raw config (before validation): the Azure workload identity webhook's variables for
        `from_environment`. Keys the identity gives always win. Raises `ValueError` when a
        value it must supply is missing."""
        return {}

    def target_problem(self, resource: str | None, scopes: tuple[str, ...]) -> str | None:
        """Why a token of this credential cannot ask for this target, if it cannot (checked
        when the config is loaded, for identities that are not Entra ID tenants)."""
        return None

    def preflight(self, resources: Resources | None = None) -> list[str]:
        """Problems found without asking the identity provider (for `tokend check`): a
        certificate that does not parse or has expired. One short line each. A secret
        reference that cannot be read is reported by `tokend check` on its own: skip it."""
        return []


@dataclass(frozen=True, slots=True)
class GrantContext:
    """What a credential type builds its grant from."""

    client_id: str
    endpoint: Endpoint
    resources: Resources | None = field(default=None, compare=False)
    identity: str = ""
    """The identity's name in the config (for metrics and log lines about the credential)."""
    clock: Clock = field(default=SYSTEM_CLOCK, compare=False)
    """For what a grant stamps with the time: an assertion's `iat`/`nbf`/`exp`."""
    entra_version: Literal[1, 2] | None = None
    """Which Entra ID endpoint the grant's tokens come from (1: by resource, 2: by scope), or
    None for any other OAuth2 server."""


@dataclass(frozen=True, slots=True)
class CredentialState:
    """What readers may know about a grant's own credential (never the credential itself)."""

    identity: str
    expires_at: datetime | None = None
    """When the credential itself stops working (a certificate's notAfter), if known."""


def credential_state(grant: Grant) -> CredentialState | None:
    """The grant's `CredentialState`, for grants whose credential has one (a certificate);
    None for the others. A grant opts in with a `credential_state()` method."""
    report = getattr(grant, "credential_state", None)
    return report() if callable(report) else None


@dataclass(frozen=True)
class CredentialType:
    options: type[CredentialOptions]
    build: Callable[[Any, GrantContext], Grant]
    """(options, context) -> the grant."""


CREDENTIALS: Registry[CredentialType] = Registry(
    "credential type",
    builtins=(
        "tokend.oauth.grants.client_secret",
        "tokend.oauth.grants.certificate",
        "tokend.oauth.grants.federated",
        "tokend.oauth.grants.managed_identity",
    ),
)


def build_grant(options: CredentialOptions, context: GrantContext) -> Grant:
    return CREDENTIALS[options.type].build(options, context)
