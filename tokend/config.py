"""The config file: YAML in, a validated `Config` out, or one clear line per problem.

Error lines name the file and the key path, e.g.
`config.yaml: tokens.crm.identity: unknown identity 'crm-ap' (known: crm-app)`. Unknown keys are
errors (a typo must not silently fall back to a default). Durations read as `600`, `600s`, `10m`
or `1h`. Secrets are references (`{env: ...}`, `{file: ...}`, `{credential: ...}`, and forms
other modules register); an inline secret is accepted with a warning. Relative paths are relative
to the working directory.

Sink types, credential types and the top-level sections of shared resources come from their
registries: this module names none of them. `tokend.configfile` reads files into it,
`tokend.check` finds what this machine would make fail, `tokend.assemble` builds the running
parts.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic import dataclasses as pydantic_dataclasses

from tokend import backoff, transport
from tokend.config_checks import cross_reference_problems
from tokend.durations import Duration, PositiveDuration
from tokend.endpoint.options import EndpointOptions
from tokend.engine.policy import DEFAULT_JITTER, DEFAULT_STARTUP_SPREAD, DEFAULT_THRESHOLD
from tokend.errors import ConfigError
from tokend.oauth.dialects import Endpoint, Target, endpoint_for
from tokend.oauth.grants import CREDENTIALS, CredentialOptions
from tokend.oauth.verify_options import VerifySetting
from tokend.paths import ConfigPath
from tokend.resources import RESOURCES
from tokend.secrets import SecretRef
from tokend.sinks import SINKS, SinkOptionsBase
from tokend.transport import DEFAULT_LISTEN, split_listen, url_problem
from tokend.validation import SECTIONS, validation_lines

if TYPE_CHECKING:
    SinkOptions = SinkOptionsBase
    Credential = CredentialOptions
    Sections = dict[str, Any]
else:
    SinkOptions = SINKS.union(SinkOptionsBase)
    Credential = CREDENTIALS.union(CredentialOptions)
    Sections = RESOURCES.sections()

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_MULTI_TENANT = frozenset({"common", "organizations", "consumers"})
_ENDPOINT_KEYS = ("tenant", "authority_host", "token_endpoint", "issuer", "client_id")


Name = Annotated[str, Field(pattern=_NAME)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackoffOptions(_Model):
    min: PositiveDuration = backoff.DEFAULT_MIN
    max: PositiveDuration = backoff.DEFAULT_MAX

    @model_validator(mode="after")
    def _ordered(self) -> BackoffOptions:
        if self.max < self.min:
            raise ValueError("max must not be shorter than min")
        return self


class Defaults(_Model):
    refresh_threshold: PositiveDuration = DEFAULT_THRESHOLD
    jitter: float = Field(default=DEFAULT_JITTER, ge=0, le=0.5)
    backoff: BackoffOptions = BackoffOptions()
    startup_spread: Duration = DEFAULT_STARTUP_SPREAD


class HttpOptions(_Model):
    connect_timeout: PositiveDuration = timedelta(seconds=transport.DEFAULT_CONNECT_TIMEOUT)
    timeout: PositiveDuration = timedelta(seconds=transport.DEFAULT_READ_TIMEOUT)
    max_concurrent_requests: int = Field(
        default=transport.DEFAULT_MAX_CONCURRENT_REQUESTS, ge=1, le=1024
    )
    ca_bundle: ConfigPath | None = None


class LogOptions(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class MetricsOptions(_Model):
    """What `/metrics` exports per token. Instance-wide aggregates are always exported."""

    per_token: Literal["all", "problems"] = "all"  # noqa: S105 - not a secret
    """`all`: every token's series (about 8, plus 3 per sink). `problems`: only those of tokens
    that need attention (not valid, failing, a sink failing, or over a minute late), so 100,000
    healthy tokens make a scrape of a few lines; the aggregates carry the rates."""


class Identity(_Model):
    """An app registration (or any OAuth2 client) and where it gets tokens.

    Entra ID: `tenant` (+ optional `authority_host` for sovereign clouds); the endpoint version
    follows from each token (`resource` -> v1, `scopes` -> v2). Any OAuth2 server:
    `token_endpoint`, or `issuer` for OIDC discovery.
    """

    tenant: str | None = Field(default=None, pattern=r"^[A-Za-z0-9.-]{1,256}$")
    authority_host: str | None = None
    token_endpoint: str | None = None
    issuer: str | None = None
    client_id: str | None = Field(min_length=1)
    """Required (no default) except where the credential type knows its endpoint itself."""
    credential: Credential
    allow_insecure_http: bool = False
    ca_bundle: ConfigPath | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_credential(cls, data: Any) -> Any:
        """What the credential type supplies: no endpoint or client_id where it knows its own
        (a managed identity), defaults from the environment where it reads them."""
        if not isinstance(data, dict) or not isinstance(credential := data.get("credential"), dict):
            return data
        tag = credential.get("type")
        if not isinstance(tag, str) or tag not in CREDENTIALS:
            return data
        options = CREDENTIALS[tag].options
        if options.own_endpoint:
            given = [key for key in _ENDPOINT_KEYS if data.get(key) is not None]
            if given:
                raise ValueError(
                    f"a {tag} credential knows its endpoint: give no {', '.join(given)} "
                    "(choose a user-assigned identity in the credential)"
                )
            return {**data, "client_id": None}
        defaults = options.identity_defaults(credential, data)
        return {**data, **{k: v for k, v in defaults.items() if data.get(k) is None}}

    @field_validator("tenant")
    @classmethod
    def _single_tenant(cls, tenant: str | None) -> str | None:
        if tenant is not None and tenant.lower() in _MULTI_TENANT:
            raise ValueError(
                f"'{tenant}' is not a tenant: app-only tokens need a tenant ID or domain"
            )
        return tenant

    @model_validator(mode="after")
    def _one_endpoint(self) -> Identity:
        if self.credential.own_endpoint:
            return self
        if self.client_id is None:
            raise ValueError("client_id: required for this credential type")
        given = [key for key in ("tenant", "token_endpoint", "issuer") if getattr(self, key)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of tenant (Entra ID), token_endpoint or issuer"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.authority_host and not self.tenant:
            raise ValueError("authority_host applies only with tenant")
        for key in ("authority_host", "token_endpoint", "issuer"):
            url = getattr(self, key)
            if url and (problem := url_problem(url, allow_insecure_http=self.allow_insecure_http)):
                raise ValueError(f"{key}: {problem}")
        return self

    @property
    def is_entra(self) -> bool:
        return self.tenant is not None

    def endpoint(self, target: Target, default_ca_bundle: Path | None) -> Endpoint:
        """Where this identity asks for `target` (`default_ca_bundle`: `http.ca_bundle`)."""
        return endpoint_for(
            target,
            tenant=self.tenant,
            authority_host=self.authority_host,
            token_endpoint=self.token_endpoint,
            issuer=self.issuer,
            allow_insecure_http=self.allow_insecure_http,
            ca_bundle=self.ca_bundle or default_ca_bundle,
        )


def _scope_list(value: Any) -> Any:
    return value.split() if isinstance(value, str) else value


@pydantic_dataclasses.dataclass(
    config=ConfigDict(extra="forbid"), frozen=True, slots=True, kw_only=True
)
class TokenSpec:
    """One configured token (a slotted dataclass, not a model: there may be 10,000)."""

    identity: str
    sinks: Annotated[list[SinkOptions], Field(min_length=1)]
    resource: Annotated[str, Field(min_length=1)] | None = None
    scopes: Annotated[list[str] | None, BeforeValidator(_scope_list)] = None
    refresh_threshold: PositiveDuration | None = None
    jitter: Annotated[float, Field(ge=0, le=0.5)] | None = None
    backoff: BackoffOptions | None = None
    verify: VerifySetting = None
    """Check each new token's signature and claims before publishing it (`tokend.oauth.verify`)."""
    on_demand: bool = False
    """Acquired at the local endpoint's first request for it, not at start; kept fresh after."""


def _systemd_state_directory() -> Path | None:
    """systemd's `StateDirectory=` sets $STATE_DIRECTORY: the default unless the config says."""
    directory = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(directory) if directory else None


class Config(_Model):
    identities: dict[Name, Identity] = Field(min_length=1)
    tokens: dict[Name, TokenSpec] = Field(min_length=1)
    defaults: Defaults = Defaults()
    http: HttpOptions = HttpOptions()
    log: LogOptions = LogOptions()
    listen: str | None = DEFAULT_LISTEN
    state_dir: ConfigPath | None = Field(default_factory=_systemd_state_directory)
    state_key: SecretRef | None = None
    """Seals stored state (AES-256-GCM); without it, state is stored unencrypted (warned)."""
    systemd_ready: Literal["published", "started"] = "published"
    """When to tell systemd tokend is ready: once every token is published to all its sinks,
    or as soon as it has started."""
    endpoint: EndpointOptions | None = None
    """The local token endpoint (off unless given)."""
    metrics: MetricsOptions = MetricsOptions()
    sections: Sections = Field(default_factory=dict)
    """The top-level blocks of shared resources, by name (written at the top level)."""

    @model_validator(mode="before")
    @classmethod
    def _gather_sections(cls, data: Any) -> Any:
        if not isinstance(data, dict) or SECTIONS in data:
            return data
        sections = {key: value for key, value in data.items() if key in RESOURCES}
        rest = {key: value for key, value in data.items() if key not in sections}
        given = {key: value for key, value in sections.items() if value is not None}
        return {**rest, SECTIONS: given}  # `NAME: null` reads as no NAME: block

    @field_validator("listen")
    @classmethod
    def _host_port(cls, listen: str | None) -> str | None:
        if listen is not None:
            split_listen(listen)
        return listen

    def identity_for(self, token: TokenSpec) -> Identity:
        return self.identities[token.identity]


# --- validation -----------------------------------------------------------------------------


def validate_config(document: dict[str, Any], *, label: str = "config") -> Config:
    """`document` (parsed YAML) as a `Config`, or `ConfigError` with every problem found."""
    try:
        config = Config.model_validate(document)
    except ValidationError as exc:
        raise ConfigError([f"{label}: {line}" for line in validation_lines(exc, Config)]) from None
    problems = list(cross_reference_problems(config))
    if problems:
        raise ConfigError([f"{label}: {path}: {message}" for path, message in problems])
    return config
