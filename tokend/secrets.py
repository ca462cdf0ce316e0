"""Secret references: where a secret lives, and reading it when it is needed.

Config never holds a secret directly if it can help it: it says *where* the secret is
(`{env: NAME}`, `{file: PATH}`, `{credential: NAME}` for systemd credentials, `{vault: PATH#FIELD}`
for a field of a Vault KV secret). References are resolved on every use, so an operator who
replaces a secret file fixes a failing identity without restarting tokend.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Protocol

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    ValidationError,
    field_validator,
)

from tokend.logs import redactor


class SecretError(Exception):
    """A secret reference could not be resolved; the text names the reference, never a value."""


class Secret:
    """A resolved secret value. Its `repr` and `str` never show the value; `reveal()` does."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        redactor.add_secret(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


class SecretReference(BaseModel):
    """Where a secret lives. Resolved at each use; the reference itself holds no secret
    (except the inline form, whose field is hidden from `repr`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def describe(self) -> str:
        """Where the secret comes from, for messages (never the value)."""
        raise NotImplementedError

    def resolve(self) -> Secret:
        """Read the secret now. Raises `SecretError`."""
        raise NotImplementedError

    async def read(self) -> Secret:
        """`resolve()` from the event loop. Local sources are read in place (microseconds);
        a reference that does network I/O overrides this to keep the loop free."""
        return self.resolve()


class InlineSecret(SecretReference):
    """A secret written into the config file itself: accepted, with a warning."""

    inline: str = Field(repr=False)

    def describe(self) -> str:
        return "inline value"

    def resolve(self) -> Secret:
        return Secret(self.inline)


class EnvSecret(SecretReference):
    env: str = Field(min_length=1)

    def describe(self) -> str:
        return f"environment variable {self.env}"

    def resolve(self) -> Secret:
        value = os.environ.get(self.env)
        if value is None:
            raise SecretError(f"environment variable {self.env} is not set")
        if not value:
            raise SecretError(f"environment variable {self.env} is empty")
        return Secret(value)


class FileSecret(SecretReference):
    file: Path

    def describe(self) -> str:
        return f"file {self.file}"

    def resolve(self) -> Secret:
        return Secret(_read_secret_file(self.file, "secret file"))


class CredentialSecret(SecretReference):
    """A systemd credential (`LoadCredential=`/`SetCredentialEncrypted=`), read from
    `$CREDENTIALS_DIRECTORY`: the unit hands it only to this service, never via the environment."""

    credential: str = Field(min_length=1, pattern=r"^[^/]+$")

    def describe(self) -> str:
        return f"systemd credential {self.credential}"

    def resolve(self) -> Secret:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise SecretError(
                f"systemd credential {self.credential}: CREDENTIALS_DIRECTORY is not set "
                "(run under systemd with LoadCredential=)"
            )
        return Secret(_read_secret_file(Path(directory) / self.credential, "systemd credential"))


def _read_secret_file(path: Path, what: str) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SecretError(f"{what} {path} does not exist") from None
    except PermissionError:
        raise SecretError(f"{what} {path} is not readable by this user") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretError(f"{what} {path} cannot be read: {type(exc).__name__}") from None
    value = text.rstrip("\r\n")
    if not value:
        raise SecretError(f"{what} {path} is empty")
    return value


class VaultReader(Protocol):
    """What reads `{vault: ...}` references: the process's Vault session (`tokend.vault`)."""

    def read_secret(self, reference: str) -> Secret: ...

    async def read_secret_async(self, reference: str) -> Secret: ...


class VaultSecret(SecretReference):
    """A field of a Vault KV secret, by its API path as Vault policies spell it:
    `secret/data/apps/crm#client_secret` (KV version 2, note `data/`) or `kv/apps/crm#secret`
    (version 1). Read over the network, so `read()` keeps the event loop free. The reference is
    read through the Vault session the engine binds to it (`bound_to`); a config cannot hold
    a live session, so an unbound reference says so instead of reading."""

    vault: str
    _reader: VaultReader | None = PrivateAttr(default=None)

    @field_validator("vault")
    @classmethod
    def _path_and_field(cls, vault: str) -> str:
        path, _, field = vault.strip().strip("/").removeprefix("v1/").partition("#")
        if not path or not field or "#" in field or any(c.isspace() for c in path + field):
            raise ValueError(
                f"'{vault}' is not PATH#FIELD, e.g. {{vault: secret/data/apps/crm#client_secret}}"
            )
        return f"{path.strip('/')}#{field}"

    def bound_to(self, reader: VaultReader) -> VaultSecret:
        bound = self.model_copy()
        bound._reader = reader
        return bound

    def describe(self) -> str:
        return f"Vault secret {self.vault}"

    def resolve(self) -> Secret:
        return self._bound_reader().read_secret(self.vault)

    async def read(self) -> Secret:
        return await self._bound_reader().read_secret_async(self.vault)

    def _bound_reader(self) -> VaultReader:
        if self._reader is None:
            raise SecretError(f"Vault secret {self.vault}: no vault: block is configured")
        return self._reader


_REFERENCE_KINDS: dict[str, type[SecretReference]] = {
    "env": EnvSecret,
    "file": FileSecret,
    "credential": CredentialSecret,
    "vault": VaultSecret,
}


def parse_secret_ref(value: Any) -> SecretReference:
    """Turn a config value into a secret reference, with one clear message when it is neither a
    string nor a single-key reference."""
    if isinstance(value, SecretReference):
        return value
    if isinstance(value, str):
        if not value:
            raise ValueError("secret is empty")
        return InlineSecret(inline=value)
    forms = ", ".join(f"{{{kind}: ...}}" for kind in _REFERENCE_KINDS)
    if not isinstance(value, dict) or len(value) != 1:
        raise ValueError(f"expected a secret reference: one of {forms}")
    (kind,) = value
    if kind not in _REFERENCE_KINDS:
        raise ValueError(f"unknown secret reference '{kind}' (expected one of {forms})")
    if not isinstance(value[kind], str) or not value[kind]:
        raise ValueError(f"{{{kind}: ...}} needs a non-empty string")
    try:
        return _REFERENCE_KINDS[kind].model_validate(value)
    except ValidationError as exc:  # one line, as every config error
        message = str(exc.errors(include_url=False)[0]["msg"]).removeprefix("Value error, ")
        raise ValueError(f"{{{kind}: ...}}: {message[:1].lower()}{message[1:]}") from None


SecretRef = Annotated[
    InlineSecret | EnvSecret | FileSecret | CredentialSecret | VaultSecret,
    PlainValidator(parse_secret_ref),
]
"""A config value naming a secret: a plain string (inline) or one of the reference forms."""
