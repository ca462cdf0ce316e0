"""The config file: YAML in, a validated `Config` out, or one clear line per problem.

Error lines name the file and the key path, e.g.
`config.yaml: tokens.crm.identity: unknown identity 'crm-ap' (known: crm-app)`. Unknown keys are
errors (a typo must not silently fall back to a default). Durations read as `600`, `600s`, `10m`
or `1h`. Secrets are references (`{env: ...}`, `{file: ...}`, `{credential: ...}`,
`{vault: ...}`); an inline secret is accepted with a warning. Relative paths are relative to the
working directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
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

from tokend.durations import Duration, PositiveDuration
from tokend.logs import one_line
from tokend.oauth.credentials import CredentialOptions
from tokend.secrets import InlineSecret, SecretError, SecretReference, VaultSecret
from tokend.sinks import SINK_TYPES, SinkContext, SinkOptions
from tokend.sinks.base import OPTIONS_CONFIG
from tokend.sinks.vault import VaultSinkOptions
from tokend.transport import url_problem
from tokend.vault import AUTH_METHODS, VaultOptions, VaultSession, bind_secrets
from tokend.yamlfile import read_yaml

DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"
DEFAULT_LISTEN = "127.0.0.1:9464"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_MULTI_TENANT = frozenset({"common", "organizations", "consumers"})


class ConfigError(Exception):
    """The config cannot be used. `lines` holds one self-contained message per problem."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = [one_line(line) for line in lines]
        super().__init__("\n".join(self.lines))


# --- value types ------------------------------------------------------------------------------

Name = Annotated[str, Field(pattern=_NAME)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- sections ---------------------------------------------------------------------------------


class BackoffOptions(_Model):
    min: PositiveDuration = timedelta(seconds=1)
    max: PositiveDuration = timedelta(minutes=5)

    @model_validator(mode="after")
    def _ordered(self) -> BackoffOptions:
        if self.max < self.min:
            raise ValueError("max must not be shorter than min")
        return self


class Defaults(_Model):
    refresh_threshold: PositiveDuration = timedelta(minutes=10)
    jitter: float = Field(default=0.1, ge=0, le=0.5)
    backoff: BackoffOptions = BackoffOptions()
    startup_spread: Duration = timedelta(seconds=10)


class HttpOptions(_Model):
    connect_timeout: PositiveDuration = timedelta(seconds=5)
    timeout: PositiveDuration = timedelta(seconds=15)
    max_concurrent_requests: int = Field(default=16, ge=1, le=1024)
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
    client_id: str = Field(min_length=1)
    credential: CredentialOptions
    allow_insecure_http: bool = False
    ca_bundle: Path | None = None

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


@pydantic_dataclasses.dataclass(config=OPTIONS_CONFIG, frozen=True, slots=True, kw_only=True)
class TokenSpec:
    """One configured token (a slotted dataclass, not a model: there may be 10,000)."""

    identity: str
    sinks: Annotated[list[SinkOptions], Field(min_length=1)]
    resource: Annotated[str, Field(min_length=1)] | None = None
    scopes: Annotated[list[str] | None, BeforeValidator(_scope_list)] = None
    refresh_threshold: PositiveDuration | None = None
    jitter: Annotated[float, Field(ge=0, le=0.5)] | None = None
    backoff: BackoffOptions | None = None


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
    vault: VaultOptions | None = None

    @field_validator("listen")
    @classmethod
    def _host_port(cls, listen: str | None) -> str | None:
        if listen is not None:
            split_listen(listen)
        return listen

    def identity_for(self, token: TokenSpec) -> Identity:
        return self.identities[token.identity]


_LISTEN = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]+)):(?P<port>\d{1,5})")


def split_listen(listen: str) -> tuple[str, int]:
    """`127.0.0.1:9464` or `[::1]:9464` -> (host, port)."""
    match = _LISTEN.fullmatch(listen)
    if not match or not 0 < int(match["port"]) < 65536:
        raise ValueError(f"'{listen}' is not host:port, e.g. 127.0.0.1:9464")
    return match["v6"] or match["host"], int(match["port"])


# --- loading ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    source: Path
    warnings: list[str]


def config_path(explicit: str | None) -> Path:
    """The config to use: the command line, else `$TOKEND_CONFIG`, else ./config.yaml."""
    return Path(explicit or os.environ.get("TOKEND_CONFIG") or "config.yaml")


def load_config(path: Path) -> LoadedConfig:
    """Read and validate `path`. Raises `ConfigError` listing every problem found."""
    label = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read config: {type(exc).__name__}"]) from None
    return parse_config(text, label=label, source=path)


def parse_config(text: str, *, label: str, source: Path | None = None) -> LoadedConfig:
    document = _read_yaml(text, label)
    if not isinstance(document, dict):
        raise ConfigError([f"{label}: the config must be a mapping with identities and tokens"])
    try:
        config = Config.model_validate(document)
    except ValidationError as exc:
        raise ConfigError([f"{label}: {line}" for line in _validation_lines(exc)]) from None
    problems = list(_cross_reference_problems(config))
    if problems:
        raise ConfigError([f"{label}: {path}: {message}" for path, message in problems])
    warnings = [
        f"{label}: {path}: secret written inline; prefer {{env: ...}}, {{file: ...}} "
        "or {credential: ...}"
        for path, ref in secret_references(config)
        if isinstance(ref, InlineSecret)
    ]
    return LoadedConfig(config=config, source=source or Path(label), warnings=warnings)


def preflight(loaded: LoadedConfig) -> list[str]:
    """What this machine would make fail, found without writing anything: secret references
    that do not resolve (values are discarded at once), sink problems such as a missing directory
    or an unknown file owner. With a `vault:` block, tokend also logs in to Vault (and revokes
    that login after), reads `{vault: ...}` secrets and asks Vault whether each Vault sink's mount
    exists and its policy allows the writes. One line per problem."""
    vault = VaultSession(loaded.config.vault) if loaded.config.vault else None
    try:
        return _preflight(loaded, vault)
    finally:
        if vault is not None:
            vault.close_sync()


def _preflight(loaded: LoadedConfig, vault: VaultSession | None) -> list[str]:
    problems = []
    login_problem = vault.check_login() if vault else None
    if login_problem:
        problems.append(f"{loaded.source}: vault.auth: {login_problem}")
    config = bind_secrets(loaded.config, vault)
    for path, ref in secret_references(config):
        if isinstance(ref, VaultSecret) and login_problem:
            continue  # said once above
        try:
            ref.resolve()
        except SecretError as exc:
            problems.append(f"{loaded.source}: {path}: {exc}")
    for name, token in config.tokens.items():
        for index, sink in enumerate(token.sinks):
            found = sink.preflight()
            if not found and not login_problem:
                found = sink.preflight_remote(SinkContext(name, sink_label(token, index), vault))
            problems += [f"{loaded.source}: tokens.{name}.sinks.{index}: {p}" for p in found]
    return problems


def secret_references(model: Any, prefix: str = "") -> Iterator[tuple[str, SecretReference]]:
    """Every secret reference in the config (models and options dataclasses), with its path."""
    for key in _field_names_of(model):
        yield from _walk(getattr(model, key), f"{prefix}{key}")


def _walk(value: Any, path: str) -> Iterator[tuple[str, SecretReference]]:
    if isinstance(value, SecretReference):
        yield path, value
    elif isinstance(value, BaseModel) or dataclasses.is_dataclass(value):
        yield from secret_references(value, f"{path}.")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, f"{path}.{index}")


def _field_names_of(model: Any) -> list[str]:
    """Field names of a pydantic model or pydantic dataclass (class or instance)."""
    cls = model if isinstance(model, type) else type(model)
    return list(getattr(cls, "__pydantic_fields__", ()))


def _vault_problems(config: Config) -> Iterator[tuple[str, str]]:
    """Vault sinks and `{vault: ...}` secrets need the top-level `vault:` block."""
    if config.vault is not None:
        return
    for path, ref in secret_references(config):
        if isinstance(ref, VaultSecret):
            yield path, "{vault: ...} needs a top-level vault: block (address, auth)"
    for name, token in config.tokens.items():
        for index, sink in enumerate(token.sinks):
            if isinstance(sink, VaultSinkOptions):
                yield (
                    f"tokens.{name}.sinks.{index}",
                    "a vault sink needs a top-level vault: block (address, auth)",
                )


def _cross_reference_problems(config: Config) -> Iterator[tuple[str, str]]:
    yield from _vault_problems(config)
    known = ", ".join(config.identities)
    targets: dict[str, str] = {}
    for name, token in config.tokens.items():
        where = f"tokens.{name}"
        identity = config.identities.get(token.identity)
        if identity is None:
            hint = _did_you_mean(token.identity, config.identities)
            yield f"{where}.identity", f"unknown identity '{token.identity}' (known: {known}){hint}"
        else:
            yield from _target_problems(where, token, identity)
        sink_names: set[str] = set()
        for index, sink in enumerate(token.sinks):
            sink_name = sink_label(token, index)
            if sink_name in sink_names:
                yield f"{where}.sinks.{index}.name", f"sink name '{sink_name}' is used twice"
            sink_names.add(sink_name)
            target = sink.target()
            if target in targets:
                yield f"{where}.sinks.{index}", f"{target} is also written by {targets[target]}"
            targets.setdefault(target, f"{where}.sinks.{index}")


def _target_problems(where: str, token: TokenSpec, identity: Identity) -> Iterator[tuple[str, str]]:
    if not identity.is_entra:
        return
    if (token.resource is None) == (token.scopes is None):
        yield where, ("give exactly one of resource (Entra ID v1 endpoint) or scopes (v2 endpoint)")
    elif token.scopes is not None and (
        len(token.scopes) != 1 or not token.scopes[0].endswith("/.default")
    ):
        yield (
            f"{where}.scopes",
            (
                "app-only tokens from Entra ID v2 take exactly one scope ending in /.default, "
                "e.g. https://graph.microsoft.com/.default"
            ),
        )


def sink_label(token: TokenSpec, index: int) -> str:
    """The sink's name in metrics and status: its `name`, else its type (numbered if repeated)."""
    sink = token.sinks[index]
    if sink.name:
        return sink.name
    same_type = [i for i, other in enumerate(token.sinks) if other.type == sink.type]
    return sink.type if len(same_type) == 1 else f"{sink.type}-{same_type.index(index) + 1}"


# --- YAML -------------------------------------------------------------------------------------


def _read_yaml(text: str, label: str) -> Any:
    try:
        return read_yaml(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{label}:{mark.line + 1}:{mark.column + 1}" if mark else label
        raise ConfigError([f"{where}: {exc.problem or exc.context}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{label}: not valid YAML ({type(exc).__name__})"]) from None


# --- pydantic errors as one line each ---------------------------------------------------------

_UNION_TAGS = frozenset(SINK_TYPES)
_AUTH_TAGS = frozenset(AUTH_METHODS)


def _validation_lines(exc: ValidationError) -> list[str]:
    lines = []
    for error in exc.errors(include_url=False, include_input=True):
        path = _key_path(error["loc"])
        lines.append(f"{path}: {_message(error)}" if path else _message(error))
    return lines


def _key_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for index, part in enumerate(loc):
        previous = loc[index - 1] if index else None
        if isinstance(part, str) and part in _UNION_TAGS and isinstance(previous, int):
            continue  # pydantic inserts the union member's tag; the user never wrote it
        if part in _AUTH_TAGS and previous == "auth":
            continue  # likewise for the vault auth method
        if part == "[key]":
            continue  # the problem is the key itself, already the last part of the path
        parts.append(str(part))
    return ".".join(parts)


def _message(error: Any) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return "required key is missing"
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        key = str(error["loc"][-1])
        return "unknown key" + _did_you_mean(key, _ALL_KEYS)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tag = str(ctx.get("discriminator", "type")).strip("'")
        known = ", ".join(AUTH_METHODS if tag == "method" else SINK_TYPES)
        if kind == "union_tag_not_found":
            return f"{tag} is missing (known: {known})"
        return f"unknown {tag} '{ctx.get('tag')}' (known: {known})"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    if kind == "string_pattern_mismatch" and error["loc"][:1] in (("identities",), ("tokens",)):
        return "names may use letters, digits, '.', '_' and '-' (at most 64, not starting with '.')"
    message = str(error["msg"])
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return message[:1].lower() + message[1:]


def _did_you_mean(word: str, candidates: Any) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.7)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _field_names(model: type, seen: set[type]) -> set[str]:
    if model in seen:
        return set()
    seen.add(model)
    fields = model.__pydantic_fields__  # type: ignore[attr-defined]
    names = set(fields)
    for field in fields.values():
        for arg in _model_types(field.annotation):
            names |= _field_names(arg, seen)
    return names


def _model_types(annotation: Any) -> Iterator[type]:
    """Config classes (pydantic models and dataclasses) named anywhere in `annotation`."""
    if isinstance(annotation, type) and hasattr(annotation, "__pydantic_fields__"):
        yield annotation
    for arg in getattr(annotation, "__args__", ()):
        yield from _model_types(arg)
    for arg in getattr(annotation, "__metadata__", ()):
        yield from _model_types(arg)
    origin = getattr(annotation, "__origin__", None)
    if origin is not None and origin is not annotation:
        yield from _model_types(origin)


_ALL_KEYS = _field_names(Config, set())
