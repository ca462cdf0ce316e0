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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict

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

    type: str

    def preflight(self) -> list[str]:
        """Problems found without asking the identity provider (for `tokend check`): a
        certificate that does not parse or has expired. One short line each."""
        return []


@dataclass(frozen=True, slots=True)
class GrantContext:
    """What a credential type builds its grant from."""

    client_id: str
    endpoint: Endpoint
    resources: Resources | None = field(default=None, compare=False)


@dataclass(frozen=True)
class CredentialType:
    options: type[CredentialOptions]
    build: Callable[[Any, GrantContext], Grant]
    """(options, context) -> the grant."""


CREDENTIALS: Registry[CredentialType] = Registry(
    "credential type", builtins=("tokend.oauth.grants.client_secret",)
)


def build_grant(options: CredentialOptions, context: GrantContext) -> Grant:
    return CREDENTIALS[options.type].build(options, context)
