"""What `verify:` on a token may say, and what it lacks for a token, checked when the config
loads. Apart from `tokend.oauth.verify` (which checks minted tokens against the issuer's keys) so
that loading a config does not load the key cache and its HTTP client."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from tokend.durations import Duration


def _strings(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


Audiences = Annotated[tuple[str, ...], BeforeValidator(_strings), Field(min_length=1)]


class VerifyOptions(BaseModel):
    """`verify:` on a token (or `verify: true` for every default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    audience: Audiences | None = None
    """Accepted `aud` values (default: the resource, or the one scope without `/.default`)."""
    issuer: str | None = None
    """The expected `iss`, and where its discovery document is (default: from the identity)."""
    jwks_uri: str | None = None
    """Where the keys are (default: the discovery document's `jwks_uri`)."""
    tenant: str | None = None
    """The expected `tid` (default for Entra ID: the tenant the issuer names)."""
    leeway: Duration = timedelta(seconds=60)
    """Clock skew allowed for `exp` and `nbf`."""


def parse_verify(value: Any) -> Any:
    """`verify: true` is every default; `verify: false` is no check."""
    if value is True:
        return VerifyOptions()
    return None if value is False else value


VerifySetting = Annotated[VerifyOptions | None, BeforeValidator(parse_verify)]


def verify_problem(
    options: VerifyOptions,
    *,
    resource: str | None,
    scopes: tuple[str, ...],
    entra: bool,
    issuer: str | None,
) -> str | None:
    """What a `verify:` block lacks for this token, if anything (checked at config load)."""
    if options.audience is None and not default_audiences(resource, scopes):
        return "audience: required when the token names no resource and not one .default scope"
    if not (options.issuer or entra or issuer):
        return "issuer: required: the identity names no tenant or issuer to find it from"
    return None


def default_audiences(resource: str | None, scopes: tuple[str, ...]) -> tuple[str, ...]:
    if resource:
        return (resource,)
    if len(scopes) == 1 and scopes[0].endswith("/.default"):
        return (scopes[0].removesuffix("/.default"),)
    return ()
