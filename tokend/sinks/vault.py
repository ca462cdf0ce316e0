"""The Vault sink: the token in a KV secret, for consumers that already read HashiCorp Vault or
OpenBao, with the policies and audit trail they already have.

KV version 2 (default): every write is a check-and-set against the version just read, so two
writers (two tokend instances, an operator) never lose an update; a later token that tokend could
have written (`tokend.vault.kv.foreign`) is never replaced (monotonic publish, across writers),
anything else is; `max_versions` keeps hourly writes from piling up; `custom_metadata` says the
secret is tokend's and for which token. KV version 1 has no versions: read, compare, write.
`verify()` reads the secret back (the publisher asks every `verify_interval`), so a secret
someone else deleted or changed is written again within about a minute.

All Vault calls go through the process's `VaultSession` (the `vault` shared resource: login,
renewal, worker threads, one-line errors); the KV operations themselves are in `tokend.vault.kv`.
The sink raises `VaultError`s (a `TokendError` saying whether the problem is transient).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import socket
from datetime import timedelta
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import Field, field_validator, model_validator
from pydantic import dataclasses as pydantic_dataclasses

from tokend.durations import Duration
from tokend.sinks.base import OPTIONS_CONFIG, SINKS, SinkContext, SinkOptionsBase, SinkType
from tokend.sinks.file import rfc3339
from tokend.token import Token
from tokend.vault import VAULT, MountPath, Problem, VaultError, VaultSession, strip_slashes
from tokend.vault.kv import (
    Current,
    Stored,
    capability_problem,
    delete,
    digest,
    foreign,
    mount_problem,
    read_current,
    write,
)

log = logging.getLogger("tokend.sinks.vault")

FieldName = Literal[
    "access_token", "token_type", "expires_on", "expires_at", "resource", "scopes", "refreshed_at"
]
FIELD_NAMES: tuple[FieldName, ...] = get_args(FieldName)
_REQUIRED_FIELDS = ("access_token", "expires_on")
_CONFLICT_ATTEMPTS = 3
DEFAULT_MAX_VERSIONS = 5
DEFAULT_VERIFY_INTERVAL = timedelta(seconds=60)
SecretPath = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.@=+-]+(/[A-Za-z0-9_.@=+-]+)*$")]


@pydantic_dataclasses.dataclass(config=OPTIONS_CONFIG, frozen=True, slots=True, kw_only=True)
class VaultSinkOptions(SinkOptionsBase):
    needs: ClassVar[tuple[str, ...]] = ("vault",)
    type: Literal["vault"]
    mount: MountPath = "secret"
    path: SecretPath
    """Inside the mount, as `vault kv put -mount=MOUNT PATH` takes it (no `data/`)."""
    kv_version: Literal[1, 2] = 2
    fields: Annotated[list[FieldName], Field(min_length=1)] = dataclasses.field(
        default_factory=lambda: list(FIELD_NAMES)
    )
    max_versions: Annotated[int, Field(ge=0, le=1000)] | None = None
    """KV v2: versions Vault keeps of this secret (0: the mount's setting; default 5)."""
    verify_interval: Duration = DEFAULT_VERIFY_INTERVAL
    """How often tokend checks (one read) that the secret still holds its token, so one
    deleted or overwritten by someone else is written again (0: only after Vault recovers)."""

    @field_validator("path", mode="before")
    @classmethod
    def _slashes(cls, value: Any) -> Any:
        return strip_slashes(value)

    @field_validator("fields")
    @classmethod
    def _fields(cls, fields: list[FieldName]) -> list[FieldName]:
        if len(set(fields)) != len(fields):
            raise ValueError("a field is listed twice")
        missing = [name for name in _REQUIRED_FIELDS if name not in fields]
        if missing:
            raise ValueError(
                f"must include {' and '.join(missing)} (consumers need the token; tokend compares "
                "expires_on so it never replaces a newer token)"
            )
        return fields

    @model_validator(mode="after")
    def _version_options(self) -> VaultSinkOptions:
        if self.kv_version == 1 and self.max_versions is not None:
            raise ValueError("max_versions applies only to kv_version: 2")
        if self.kv_version == 2 and self.path.split("/")[0] in ("data", "metadata"):
            raise ValueError(
                f"path is inside the mount, without data/ or metadata/ (e.g. "
                f"{self.path.split('/', 1)[-1]})"
            )
        return self

    @property
    def versions_kept(self) -> int:
        return DEFAULT_MAX_VERSIONS if self.max_versions is None else self.max_versions

    @property
    def data_path(self) -> str:
        """The secret's API path (what Vault policies name)."""
        middle = "data/" if self.kv_version == 2 else ""
        return f"{self.mount}/{middle}{self.path}"

    @property
    def metadata_path(self) -> str:
        return f"{self.mount}/metadata/{self.path}"

    def target(self) -> str:
        return f"vault {self.mount}/{self.path}"

    def preflight_remote(self, context: SinkContext) -> list[str]:
        if context.resources is None:
            return []
        session = context.resources.get(VAULT)
        try:
            problem = session.call(
                functools.partial(mount_problem, self),
                path=f"sys/internal/ui/mounts/{self.mount}/{self.path}",
                action="look up the mount of this path",
            )
            if problem is None:
                problem = session.call(
                    functools.partial(
                        capability_problem, self, delete=self.on_expiry == "withdraw"
                    ),
                    path="sys/capabilities-self",
                    action="look up its own capabilities",
                )
        except VaultError as exc:
            problem = str(exc)
        return [f"{self.target()}: {problem}"] if problem else []


class VaultSink:
    def __init__(self, options: VaultSinkOptions, context: SinkContext) -> None:
        if context.resources is None:
            raise ValueError("a vault sink needs the vault: block")  # config validation ensures
        self.name = context.sink_name
        self.verify_interval = options.verify_interval
        self._options = options
        self._session: VaultSession = context.resources.get(VAULT)
        self._metadata = {
            "managed-by": "tokend",
            "tokend-token": context.token_name,
            "tokend-host": socket.gethostname(),
        }
        self._mount_checked = False
        self._metadata_written = False
        self._held: int | None = None  # expires_on of the token the publisher believes is here
        self._stored: Stored | None = None  # what the secret held after the last publish
        self._foreign_reported: int | None = None

    async def publish(self, token: Token) -> None:
        try:
            await self._check_mount()
            await self._publish(token)
        except VaultError as exc:
            if exc.problem is Problem.NO_MOUNT:
                self._mount_checked = False
            raise

    async def verify(self, token: Token) -> bool:
        """Does the secret still hold what this sink left there when it was given `token`? One
        read: KV v2 compares the version (any write or delete by anyone changes it), KV v1 the
        `expires_on` and the token's digest. Raises `VaultError` when Vault cannot say."""
        stored = self._stored
        if stored is None or self._held != int(token.expires_at.timestamp()):
            return False
        return Stored.of(await self._current()) == stored

    async def withdraw(self) -> None:
        current = await self._current()
        if current.expires_on is None or self._held is None or current.expires_on > self._held:
            return  # nothing there, or a newer token from another writer: keep it
        await self._run(functools.partial(delete, self._options), "delete this secret")
        self._stored = None

    async def close(self) -> None:
        return None  # the session is shared: the process's Resources close it

    async def _check_mount(self) -> None:
        """Once: the mount exists and is KV of the configured version. (A KV v2 write to a v1
        mount would quietly create a secret literally named `data/PATH`.)"""
        if self._mount_checked:
            return
        options = self._options
        problem = await self._session.run(
            functools.partial(mount_problem, options),
            path=f"sys/internal/ui/mounts/{options.mount}/{options.path}",
            action="look up the mount of this path",
        )
        if problem:
            raise VaultError(self._session.where(options.data_path), problem, Problem.NO_MOUNT)
        self._mount_checked = True

    async def _publish(self, token: Token) -> None:
        ours = int(token.expires_at.timestamp())
        lifetime = int((token.expires_at - token.obtained_at).total_seconds())
        secret = render(token, self._options.fields)
        for _ in range(_CONFLICT_ATTEMPTS):
            current = await self._current()
            if current.expires_on is not None and current.expires_on >= ours:
                why = foreign(current, ours, lifetime)
                if why is None:
                    self._defer(current, ours)
                    return
                self._report_foreign(current, why)
            await self._write_metadata(current)
            try:
                version = await self._write(secret, current)
            except VaultError as exc:
                if exc.problem is Problem.CONFLICT:
                    continue  # another writer came first: look again
                raise
            self._held = ours
            self._stored = Stored(version, ours, digest(token.value))
            return
        raise VaultError(
            self._session.where(self._options.data_path),
            f"changed by other writers {_CONFLICT_ATTEMPTS} times in a row; will try again",
            Problem.CONFLICT,
        )

    def _defer(self, current: Current, ours: int) -> None:
        """Monotonic publish: the secret holds a token tokend could have written (another
        instance) that lives at least as long as ours: leave it."""
        log.log(
            logging.INFO if current.expires_on != ours else logging.DEBUG,
            "sink %s: %s already holds a token expiring no sooner; left as is",
            self.name,
            self._options.target(),
            extra=self._extra,
        )
        self._held = ours
        self._stored = Stored.of(current)

    def _report_foreign(self, current: Current, why: str) -> None:
        """Said once per value: a later `expires_on` that tokend cannot have written (an
        operator's typo, a test value) must not block tokend for good."""
        if current.expires_on == self._foreign_reported:
            return
        self._foreign_reported = current.expires_on
        log.warning(
            "sink %s: %s holds a token tokend cannot have written (%s); replacing it",
            self.name,
            self._options.target(),
            why,
            extra=self._extra,
        )

    @property
    def _extra(self) -> dict[str, str]:
        return {"token": self._metadata["tokend-token"]}

    async def _current(self) -> Current:
        current: Current = await self._run(
            functools.partial(read_current, self._options), "read this secret"
        )
        return current

    async def _write_metadata(self, current: Current) -> None:
        """KV v2: `max_versions` and `custom_metadata`, at the first write, whenever the secret
        is new (e.g. deleted with its metadata), and when its metadata does not name tokend."""
        options = self._options
        if options.kv_version != 2:
            return
        if self._metadata_written and current.version and current.tokend_metadata is not False:
            return
        body = {"max_versions": options.versions_kept, "custom_metadata": self._metadata}
        await self._session.run(
            lambda client: client.adapter.post(f"/v1/{options.metadata_path}", json=body),
            path=options.metadata_path,
            action="update this secret's metadata",
        )
        self._metadata_written = True

    async def _write(self, secret: dict[str, Any], current: Current) -> int:
        """Returns the version written (KV v2; 0 for v1)."""
        operation = functools.partial(write, self._options, secret, current.version)
        version: int = await self._run(operation, "write this secret")
        return version

    async def _run(self, operation: Any, action: str) -> Any:
        return await self._session.run(operation, path=self._options.data_path, action=action)


def render(token: Token, fields: list[FieldName]) -> dict[str, Any]:
    """The secret's fields, in the configured selection (`resource`/`scopes` when known)."""
    every: dict[str, Any] = {
        "access_token": token.value,
        "token_type": token.token_type,
        "expires_on": int(token.expires_at.timestamp()),
        "expires_at": rfc3339(token.expires_at),
        "resource": token.resource,
        "scopes": " ".join(token.scopes) or None,
        "refreshed_at": rfc3339(token.obtained_at),
    }
    return {name: every[name] for name in fields if every[name] is not None}


# A shared remote store: by default its outage does not make a pod unready (the pod's own
# consumers read its file sinks; Vault's readers are elsewhere, and watch the metrics).
SINKS.register(
    "vault", SinkType(VaultSinkOptions, VaultSink, required_for_ready=False, shared=True)
)
