"""The `Grant` contract: how one identity asks for tokens, and the registry of credential types.

A grant builds a whole token request (method, URL, form, client authentication) afresh for each
attempt, so secrets are re-read (a replaced secret file takes effect at the next attempt) and an
assertion-based credential signs a new assertion (new `jti`) every time. After a success it may
`absorb` the response (a grant that rotates refresh tokens keeps the newest).

A grant that spends a one-time credential (a rotating refresh token) also has `exchange()`: the
client holds it around the whole exchange (request built, sent, answer absorbed or refused), so
the grant can send one request at a time per identity, persist what it absorbed before the token
is handed on, and decide what a refusal means (`Exchange.failed`).

Adding a credential type: one module with an options model (a subclass of `CredentialOptions`
with a `type` literal) and a grant, registered with `CREDENTIALS.register(...)`, plus its tag and
module name in `CREDENTIALS`'s built-ins. Nothing else names it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from tokend.clock import SYSTEM_CLOCK, Clock
from tokend.oauth.dialects import Endpoint, Target
from tokend.oauth.errors import TokenError
from tokend.registry import Registry

if TYPE_CHECKING:
    from tokend.resources import Resources
    from tokend.sealed import SealedFiles


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


class Exchange(Protocol):
    """One token exchange of a grant, held by the client from before the request is built until
    the answer is absorbed or refused; leaving it persists what the grant absorbed."""

    async def __aenter__(self) -> Exchange: ...

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None: ...

    def failed(self, error: TokenError) -> TokenError | None:
        """The error to report for a failed attempt (the same, or one saying what to do), or
        None: the grant dropped what was refused (a dead refresh token) and asking once more at
        once may succeed (with the password)."""
        ...


class _PlainExchange:
    """The exchange of a grant that keeps nothing between requests."""

    async def __aenter__(self) -> _PlainExchange:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    def failed(self, error: TokenError) -> TokenError | None:
        return error


_PLAIN = _PlainExchange()


def exchange_of(grant: Grant) -> Exchange:
    """The grant's `exchange()` if it has one (it opts in by defining it), else a plain one."""
    exchange = getattr(grant, "exchange", None)
    return exchange() if callable(exchange) else _PLAIN


class CredentialOptions(BaseModel):
    """Options every credential type has; each type's model adds its `type` literal."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    needs: ClassVar[tuple[str, ...]] = ()
    """Shared resources (config sections) this credential type uses."""
    own_endpoint: ClassVar[bool] = False
    """The credential type knows where to ask by itself (a managed identity's local endpoint):
    its identity then names no tenant, token endpoint, issuer or client_id."""

    type: str

    def entra_scopes_problem(self, scopes: tuple[str, ...]) -> str | None:
        """Why an Entra ID v2 token of this credential cannot ask for `scopes`, if it cannot.
        App-only tokens take exactly one `/.default` scope; a credential that signs in a user
        asks for the API's delegated permissions instead."""
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            return (
                "app-only tokens from Entra ID v2 take exactly one scope ending in /.default, "
                "e.g. https://graph.microsoft.com/.default"
            )
        return None

    def keeps_refresh_tokens(self) -> bool:
        """Whether this credential keeps the refresh tokens it is given between requests (they
        are stored only sealed: the config then needs `state_dir` and `state_key`)."""
        return False

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
    kept: SealedFiles | None = field(default=None, compare=False)
    """Where a grant keeps what must survive a restart (rotated refresh tokens), sealed with
    `state_key` in `state_dir`; None when the config has no state_dir or state_key."""


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
    builtins={
        "client_secret": "tokend.oauth.grants.client_secret",
        "certificate": "tokend.oauth.grants.certificate",
        "federated": "tokend.oauth.grants.federated",
        "managed_identity": "tokend.oauth.grants.managed_identity",
        "password": "tokend.oauth.grants.password",
        "device_login": "tokend.oauth.grants.device_login",
    },
)


def build_grant(options: CredentialOptions, context: GrantContext) -> Grant:
    return CREDENTIALS[options.type].build(options, context)
