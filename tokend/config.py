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
from collections.abc import Iterator
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
from pydantic.dataclasses import rebuild_dataclass

from tokend import backoff, registry, transport
from tokend.durations import Duration, PositiveDuration
from tokend.endpoint.options import EndpointOptions
from tokend.engine.policy import DEFAULT_JITTER, DEFAULT_THRESHOLD
from tokend.errors import ConfigError
from tokend.oauth.grants import CREDENTIALS, CredentialOptions
from tokend.oauth.verify import VerifySetting, verify_problem
from tokend.resources import RESOURCES
from tokend.secrets import SecretRef, SecretReference, secret_references
from tokend.sinks import SINKS, SinkOptionsBase, sink_labels
from tokend.transport import DEFAULT_LISTEN, split_listen, url_problem
from tokend.validation import SECTIONS, did_you_mean, validation_lines

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
    startup_spread: Duration = timedelta(seconds=10)


class HttpOptions(_Model):
    connect_timeout: PositiveDuration = timedelta(seconds=transport.DEFAULT_CONNECT_TIMEOUT)
    timeout: PositiveDuration = timedelta(seconds=transport.DEFAULT_READ_TIMEOUT)
    max_concurrent_requests: int = Field(
        default=transport.DEFAULT_MAX_CONCURRENT_REQUESTS, ge=1, le=1024
    )
    ca_bundle: Path | None = None


class LogOptions(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


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
    ca_bundle: Path | None = None

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
    state_dir: Path | None = Field(default_factory=_systemd_state_directory)
    state_key: SecretRef | None = None
    """Seals stored state (AES-256-GCM); without it, state is stored unencrypted (warned)."""
    systemd_ready: Literal["published", "started"] = "published"
    """When to tell systemd tokend is ready: once every token is published to all its sinks,
    or as soon as it has started."""
    endpoint: EndpointOptions | None = None
    """The local token endpoint (off unless given)."""
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
    _ensure_schema()
    try:
        config = Config.model_validate(document)
    except ValidationError as exc:
        raise ConfigError([f"{label}: {line}" for line in validation_lines(exc, Config)]) from None
    problems = list(_cross_reference_problems(config))
    if problems:
        raise ConfigError([f"{label}: {path}: {message}" for path, message in problems])
    return config


class _Schema:
    built_at = registry.generation()


def _ensure_schema() -> None:
    """Rebuild the schema when kinds were registered since it was built (tests add their own)."""
    if _Schema.built_at != registry.generation():
        _Schema.built_at = registry.generation()
        rebuild_dataclass(TokenSpec, force=True)  # type: ignore[arg-type]
        Identity.model_rebuild(force=True)
        Config.model_rebuild(force=True)


# --- checks across keys -----------------------------------------------------------------------


def _cross_reference_problems(config: Config) -> Iterator[tuple[str, str]]:
    yield from _missing_sections(config)
    yield from _kept_state_problems(config)
    yield from _endpoint_problems(config)
    known = ", ".join(config.identities)
    targets: dict[str, str] = {}
    for name, token in config.tokens.items():
        where = f"tokens.{name}"
        identity = config.identities.get(token.identity)
        if identity is None:
            hint = did_you_mean(token.identity, config.identities)
            yield f"{where}.identity", f"unknown identity '{token.identity}' (known: {known}){hint}"
        else:
            yield from _target_problems(where, token, identity)
        labels = sink_labels(token.sinks)
        for index, sink in enumerate(token.sinks):
            if labels[index] in labels[:index]:
                yield f"{where}.sinks.{index}.name", f"sink name '{labels[index]}' is used twice"
            target = sink.target()
            if target in targets:
                yield f"{where}.sinks.{index}", f"{target} is also written by {targets[target]}"
            targets.setdefault(target, f"{where}.sinks.{index}")


def _endpoint_problems(config: Config) -> Iterator[tuple[str, str]]:
    endpoint = config.endpoint
    if endpoint is None:
        for name, token in config.tokens.items():
            if token.on_demand:
                yield f"tokens.{name}.on_demand", "needs an endpoint: block (it asks for the token)"
        return
    for served in endpoint.tokens or ():
        if served not in config.tokens:
            yield "endpoint.tokens", f"unknown token '{served}' (known: {', '.join(config.tokens)})"
    named = [*endpoint.identities, *filter(None, [endpoint.default_identity])]
    for identity in named:
        if identity not in config.identities:
            known = ", ".join(config.identities)
            yield "endpoint", f"unknown identity '{identity}' (known: {known})"


def _missing_sections(config: Config) -> Iterator[tuple[str, str]]:
    """Everything that uses a shared resource needs that resource's section (unless the
    resource has defaults of its own)."""
    for path, part, needs in _needing_parts(config):
        for section in needs:
            kind = RESOURCES[section]
            if section not in config.sections and kind.default is None:
                yield path, f"{_subject(part)} needs a top-level {section}: block ({kind.summary})"


def _needing_parts(config: Config) -> Iterator[tuple[str, Any, tuple[str, ...]]]:
    for path, ref in secret_references(config):
        if ref.needs:
            yield path, ref, ref.needs
    for name, identity in config.identities.items():
        if identity.credential.needs:
            yield f"identities.{name}.credential", identity.credential, identity.credential.needs
    for name, token in config.tokens.items():
        for index, sink in enumerate(token.sinks):
            if sink.needs:
                yield f"tokens.{name}.sinks.{index}", sink, sink.needs


def _subject(part: Any) -> str:
    if isinstance(part, SecretReference):
        form = next(key for key in type(part).model_fields if key != "needs")
        return f"{{{form}: ...}}"
    return f"a {part.type} {'sink' if isinstance(part, SinkOptionsBase) else 'credential'}"


def _target_problems(where: str, token: TokenSpec, identity: Identity) -> Iterator[tuple[str, str]]:
    scopes = tuple(token.scopes or ())
    if token.verify is not None and (
        problem := verify_problem(
            token.verify,
            resource=token.resource,
            scopes=scopes,
            entra=identity.is_entra,
            issuer=identity.issuer,
        )
    ):
        yield f"{where}.verify", problem
    if not identity.is_entra:
        if problem := identity.credential.target_problem(token.resource, scopes):
            yield where, problem
        return
    if (token.resource is None) == (token.scopes is None):
        yield where, ("give exactly one of resource (Entra ID v1 endpoint) or scopes (v2 endpoint)")
    elif token.scopes is not None and (problem := identity.credential.entra_scopes_problem(scopes)):
        yield f"{where}.scopes", problem


def _kept_state_problems(config: Config) -> Iterator[tuple[str, str]]:
    """Refresh tokens are stored only sealed: a credential that keeps them needs both."""
    if config.state_dir is not None and config.state_key is not None:
        return
    for name, identity in config.identities.items():
        credential = identity.credential
        if credential.keeps_refresh_tokens():
            yield (
                f"identities.{name}.credential",
                f"a {credential.type} credential keeps the refresh tokens it is given, stored "
                "only sealed: set state_dir and state_key (a secret reference)",
            )
