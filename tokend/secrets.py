"""Secret references: where a secret lives, and reading it when it is needed.

Config never holds a secret directly if it can help it: it says *where* the secret is
(`{env: NAME}`, `{file: PATH}`, `{credential: NAME}` for systemd credentials, and forms that
other modules register, such as `{vault: PATH#FIELD}`). References are resolved on every use, so
an operator who replaces a secret file fixes a failing identity without restarting tokend. A form
that reads over the network gets its client from the `Resources` it is given.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, PrivateAttr, ValidationError

from tokend.errors import TokendError
from tokend.files import MiB, RefusedFile, read_regular_file
from tokend.redaction import redactor
from tokend.registry import Registry

if TYPE_CHECKING:
    from tokend.resources import Resources

MAX_SECRET_FILE_SIZE = MiB
"""No secret file is larger (a PEM chain or a PKCS#12 bundle is a few KiB): a path that names
something bigger, such as a log or a disk image, is a mistake, and is not read whole."""


class SecretError(TokendError):
    """A secret reference could not be resolved; the text names the reference, never a value."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message, code="secret_unavailable", transient=transient)


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

    needs: ClassVar[tuple[str, ...]] = ()
    """Shared resources (config sections) this form reads through, e.g. `("vault",)`."""
    _binary: bool = PrivateAttr(default=False)
    """Read as bytes (a `BinarySecretRef`, such as a PKCS#12 bundle), not as text."""

    def probe(self, resources: Resources | None = None) -> None:
        """Read the secret the way its user will (as bytes when binary) and drop it: for
        `tokend check`. Raises `SecretError`."""
        if self._binary:
            self.resolve_bytes(resources)
        else:
            self.resolve(resources)

    def describe(self) -> str:
        """Where the secret comes from, for messages (never the value)."""
        raise NotImplementedError

    def resolve(self, resources: Resources | None = None) -> Secret:
        """Read the secret now, blocking. Raises `SecretError`."""
        raise NotImplementedError

    async def read(self, resources: Resources | None = None) -> Secret:
        """`resolve()` from the event loop. Local sources are read in place (microseconds);
        a form that does network I/O overrides this to keep the loop free."""
        return self.resolve(resources)

    def resolve_bytes(self, resources: Resources | None = None) -> bytes:
        """The secret as bytes, for binary secrets (a PKCS#12 bundle): files as they are on
        disk, other forms as their text's UTF-8 (where a binary secret is kept as base64)."""
        return self.resolve(resources).reveal().encode("utf-8")

    async def read_bytes(self, resources: Resources | None = None) -> bytes:
        """`resolve_bytes()` from the event loop."""
        return (await self.read(resources)).reveal().encode("utf-8")


class InlineSecret(SecretReference):
    """A secret written into the config file itself: accepted, with a warning."""

    inline: str = Field(repr=False)

    def describe(self) -> str:
        return "inline value"

    def resolve(self, resources: Resources | None = None) -> Secret:
        return Secret(self.inline)


class EnvSecret(SecretReference):
    env: str = Field(min_length=1)

    def describe(self) -> str:
        return f"environment variable {self.env}"

    def resolve(self, resources: Resources | None = None) -> Secret:
        value = os.environ.get(self.env)
        if value is None:
            raise SecretError(f"environment variable {self.env} is not set")
        if not value:
            raise SecretError(f"environment variable {self.env} is empty")
        if not _is_utf8(value):
            raise SecretError(f"environment variable {self.env} is not valid UTF-8")
        return Secret(value)


class FileSecret(SecretReference):
    file: Path

    def describe(self) -> str:
        return f"file {self.file}"

    def resolve(self, resources: Resources | None = None) -> Secret:
        return Secret(_read_secret_file(self.file, "secret file"))

    def resolve_bytes(self, resources: Resources | None = None) -> bytes:
        return _read_secret_bytes(self.file, "secret file")

    async def read_bytes(self, resources: Resources | None = None) -> bytes:
        return self.resolve_bytes(resources)


class CredentialSecret(SecretReference):
    """A systemd credential (`LoadCredential=`/`SetCredentialEncrypted=`), read from
    `$CREDENTIALS_DIRECTORY`: the unit hands it only to this service, never via the environment."""

    credential: str = Field(min_length=1, pattern=r"^[^/]+$")

    def describe(self) -> str:
        return f"systemd credential {self.credential}"

    def resolve(self, resources: Resources | None = None) -> Secret:
        return Secret(_read_secret_file(self._path(), "systemd credential"))

    def resolve_bytes(self, resources: Resources | None = None) -> bytes:
        return _read_secret_bytes(self._path(), "systemd credential")

    async def read_bytes(self, resources: Resources | None = None) -> bytes:
        return self.resolve_bytes(resources)

    def _path(self) -> Path:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise SecretError(
                f"systemd credential {self.credential}: CREDENTIALS_DIRECTORY is not set "
                "(run under systemd with LoadCredential=)"
            )
        return Path(directory) / self.credential


def _is_utf8(value: str) -> bool:
    """False for the bytes that were not UTF-8 in the environment: Python keeps them as lone
    surrogates (PEP 383), which no encoder, HTTP client or redactor can send on."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _read_secret_file(path: Path, what: str) -> str:
    try:
        text = _read_secret_bytes(path, what).decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError(f"{what} {path} is not valid UTF-8") from None
    value = text.rstrip("\r\n")
    if not value:
        raise SecretError(f"{what} {path} is empty")
    return value


def _read_secret_bytes(path: Path, what: str) -> bytes:
    """The file's bytes: only a regular file of at most `MAX_SECRET_FILE_SIZE` (a FIFO would
    block every read, /dev/zero would fill memory)."""
    try:
        data = read_regular_file(path, MAX_SECRET_FILE_SIZE)
    except RefusedFile as exc:
        raise SecretError(f"{what} {path} is {exc}") from None
    except FileNotFoundError:
        raise SecretError(f"{what} {path} does not exist") from None
    except PermissionError:
        raise SecretError(f"{what} {path} is not readable by this user") from None
    except OSError as exc:
        raise SecretError(f"{what} {path} cannot be read: {type(exc).__name__}") from None
    if not data.rstrip(b"\r\n"):
        raise SecretError(f"{what} {path} is empty")
    return data


@dataclass(frozen=True)
class SecretForm:
    """A registered form of reference: `{KEY: ...}` validates into `options`."""

    options: type[SecretReference]


SECRET_FORMS: Registry[SecretForm] = Registry(
    "secret reference",
    builtins={
        "env": __name__,
        "file": __name__,
        "credential": __name__,
        "vault": "tokend.vault.secret",
    },
)
for _key, _form in (
    ("env", EnvSecret),
    ("file", FileSecret),
    ("credential", CredentialSecret),
):
    SECRET_FORMS.register(_key, SecretForm(_form))


_KIND_LIKE = re.compile(r"[a-z][a-z_]{0,19}")


def parse_secret_ref(value: Any) -> SecretReference:
    """Turn a config value into a secret reference, with one clear message when it is neither a
    string nor a single-key reference."""
    if isinstance(value, SecretReference):
        return value
    if isinstance(value, str):
        if not value:
            raise ValueError("secret is empty")
        return InlineSecret(inline=value)
    forms = ", ".join(f"{{{kind}: ...}}" for kind in SECRET_FORMS)
    if not isinstance(value, dict) or len(value) != 1:
        raise ValueError(f"expected a secret reference: one of {forms}")
    (kind,) = value
    if kind not in SECRET_FORMS:
        # `secret: {s3cr3t}` is YAML for a mapping whose key is the secret: only a key that
        # reads as a misspelt kind (a lowercase word) is quoted back.
        shown = f" '{kind}'" if isinstance(kind, str) and _KIND_LIKE.fullmatch(kind) else ""
        raise ValueError(
            f"unknown secret reference{shown} (expected one of {forms}; quote an inline secret "
            "written in braces)"
        )
    if not isinstance(value[kind], str) or not value[kind]:
        raise ValueError(f"{{{kind}: ...}} needs a non-empty string")
    try:
        return SECRET_FORMS[kind].options.model_validate(value)
    except ValidationError as exc:  # one line, as every config error
        message = str(exc.errors(include_url=False)[0]["msg"]).removeprefix("Value error, ")
        raise ValueError(f"{{{kind}: ...}}: {message[:1].lower()}{message[1:]}") from None


SecretRef = Annotated[SecretReference, PlainValidator(parse_secret_ref)]
"""A config value naming a secret: a plain string (inline) or one of the reference forms."""


async def secret_version(ref: SecretReference, resources: Resources | None = None) -> str:
    """A short digest of what `ref` reads as now (never the value itself), or why it cannot be
    read: what changes when an operator replaces the secret."""
    try:
        value = (await ref.read(resources)).reveal()
    except SecretError as exc:
        return f"unreadable:{exc.code}"
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def parse_binary_secret_ref(value: Any) -> SecretReference:
    reference = parse_secret_ref(value).model_copy()
    reference._binary = True
    return reference


BinarySecretRef = Annotated[SecretReference, PlainValidator(parse_binary_secret_ref)]
"""A secret whose value is bytes: a file as it is on disk, any other form as base64 text."""
