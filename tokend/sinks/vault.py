"""The Vault sink: the token in a KV secret, for consumers that already read HashiCorp Vault or
OpenBao, with the policies and audit trail they already have.

KV version 2 (default): every write is a check-and-set against the version just read, so two
writers (two tokend instances, an operator) never lose an update; a value whose `expires_on` is
later than ours is never replaced (monotonic publish, across writers); `max_versions` keeps
hourly writes from piling up; `custom_metadata` says the secret is tokend's and for which token.
KV version 1 has no versions: read, compare, write.

All Vault calls go through the process's `VaultSession` (login, renewal, worker threads, one-line
errors). The sink turns its `VaultError`s into `SinkError`s and raises nothing else.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import socket
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, field_validator, model_validator
from pydantic import dataclasses as pydantic_dataclasses

from tokend.oauth.token import Token
from tokend.sinks.base import OPTIONS_CONFIG, SinkContext, SinkError, SinkOptionsBase
from tokend.sinks.file import rfc3339
from tokend.vault import MountPath, Problem, VaultError, VaultSession, strip_slashes

log = logging.getLogger("tokend.sinks.vault")

FieldName = Literal[
    "access_token", "token_type", "expires_on", "expires_at", "resource", "scopes", "refreshed_at"
]
FIELD_NAMES: tuple[FieldName, ...] = get_args(FieldName)
_REQUIRED_FIELDS = ("access_token", "expires_on")
_CONFLICT_ATTEMPTS = 3
DEFAULT_MAX_VERSIONS = 5
SecretPath = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.@=+-]+(/[A-Za-z0-9_.@=+-]+)*$")]


@pydantic_dataclasses.dataclass(config=OPTIONS_CONFIG, frozen=True, slots=True, kw_only=True)
class VaultSinkOptions(SinkOptionsBase):
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

    @field_validator("mount", "path", mode="before")
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
        if context.vault is None:
            return []
        try:
            problem = context.vault.call(
                functools.partial(mount_problem, self),
                path=f"sys/internal/ui/mounts/{self.mount}/{self.path}",
                action="look up the mount of this path",
            )
            if problem is None:
                problem = context.vault.call(
                    functools.partial(capability_problem, self),
                    path="sys/capabilities-self",
                    action="look up its own capabilities",
                )
        except VaultError as exc:
            problem = str(exc)
        return [f"{self.target()}: {problem}"] if problem else []


@dataclass(frozen=True)
class Current:
    """What the secret holds now: its version (0: none yet) and its token's `expires_on`."""

    version: int
    expires_on: int | None


class VaultSink:
    def __init__(self, options: VaultSinkOptions, context: SinkContext) -> None:
        if context.vault is None:
            raise ValueError("a vault sink needs the vault: block")  # config validation ensures
        self.name = context.sink_name
        self._options = options
        self._session: VaultSession = context.vault
        self._metadata = {
            "managed-by": "tokend",
            "tokend-token": context.token_name,
            "tokend-host": socket.gethostname(),
        }
        self._mount_checked = False
        self._metadata_written = False
        self._held: int | None = None  # expires_on of the token the publisher believes is here

    async def publish(self, token: Token) -> None:
        try:
            await self._check_mount()
            await self._publish(token)
        except VaultError as exc:
            if exc.problem is Problem.NO_MOUNT:
                self._mount_checked = False
            raise SinkError(str(exc)) from None

    async def withdraw(self) -> None:
        try:
            current = await self._current()
            if current.expires_on is None or self._held is None or current.expires_on > self._held:
                return  # nothing there, or a newer token from another writer: keep it
            await self._run(functools.partial(_delete, self._options), "delete this secret")
        except VaultError as exc:
            raise SinkError(str(exc)) from None

    async def close(self) -> None:
        return None  # the session is the engine's to close

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
        secret = render(token, self._options.fields)
        for _ in range(_CONFLICT_ATTEMPTS):
            current = await self._current()
            if current.expires_on is not None and current.expires_on >= ours:
                log.log(
                    logging.INFO if current.expires_on > ours else logging.DEBUG,
                    "sink %s: %s already holds a token expiring no sooner; left as is",
                    self.name,
                    self._options.target(),
                    extra={"token": self._metadata["tokend-token"]},
                )
                self._held = ours
                return
            await self._write_metadata(current)
            try:
                await self._write(secret, current)
            except VaultError as exc:
                if exc.problem is Problem.CONFLICT:
                    continue  # another writer came first: look again
                raise
            self._held = ours
            return
        raise VaultError(
            self._session.where(self._options.data_path),
            f"changed by other writers {_CONFLICT_ATTEMPTS} times in a row; will try again",
            Problem.CONFLICT,
        )

    async def _current(self) -> Current:
        read = _read_v2 if self._options.kv_version == 2 else _read_v1
        current: Current = await self._run(
            functools.partial(read, self._options), "read this secret"
        )
        return current

    async def _write_metadata(self, current: Current) -> None:
        """KV v2: `max_versions` and `custom_metadata`, at the first write and whenever the
        secret is new (e.g. deleted with its metadata)."""
        options = self._options
        if options.kv_version != 2 or (self._metadata_written and current.version):
            return
        body = {"max_versions": options.versions_kept, "custom_metadata": self._metadata}
        await self._session.run(
            lambda client: client.adapter.post(f"/v1/{options.metadata_path}", json=body),
            path=options.metadata_path,
            action="update this secret's metadata",
        )
        self._metadata_written = True

    async def _write(self, secret: dict[str, Any], current: Current) -> None:
        options = self._options
        if options.kv_version == 2:
            operation = functools.partial(_write_v2, options, secret, current.version)
        else:
            operation = functools.partial(_write_v1, options, secret)
        await self._run(operation, "write this secret")

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


# --- operations, run on a Vault worker thread with a logged-in hvac client ---------------------


def _read_v2(options: VaultSinkOptions, client: Any) -> Current:
    import hvac.exceptions

    try:
        body = client.secrets.kv.v2.read_secret_version(
            path=options.path, mount_point=options.mount, raise_on_deleted_version=False
        )
    except hvac.exceptions.InvalidPath as exc:
        if _nothing_there(exc):
            return Current(0, None)
        raise
    data = body.get("data") or {}
    version = (data.get("metadata") or {}).get("version")
    return Current(version if isinstance(version, int) else 0, _expires_on(data.get("data")))


def _read_v1(options: VaultSinkOptions, client: Any) -> Current:
    import hvac.exceptions

    try:
        body = client.secrets.kv.v1.read_secret(path=options.path, mount_point=options.mount)
    except hvac.exceptions.InvalidPath as exc:
        if _nothing_there(exc):
            return Current(0, None)
        raise
    return Current(0, _expires_on(body.get("data")))


def _write_v2(options: VaultSinkOptions, secret: dict[str, Any], cas: int, client: Any) -> None:
    client.secrets.kv.v2.create_or_update_secret(
        path=options.path, secret=secret, cas=cas, mount_point=options.mount
    )


def _write_v1(options: VaultSinkOptions, secret: dict[str, Any], client: Any) -> None:
    client.secrets.kv.v1.create_or_update_secret(
        path=options.path, secret=secret, mount_point=options.mount
    )


def _delete(options: VaultSinkOptions, client: Any) -> None:
    if options.kv_version == 2:
        client.secrets.kv.v2.delete_latest_version_of_secret(
            path=options.path, mount_point=options.mount
        )
    else:
        client.secrets.kv.v1.delete_secret(path=options.path, mount_point=options.mount)


def mount_problem(options: VaultSinkOptions, client: Any) -> str | None:
    """Why the mount cannot hold this sink's secret, or None when it can."""
    import hvac.exceptions

    no_mount = f"no secrets engine is mounted at '{options.mount}' (check the mount)"
    try:
        body = client.adapter.get(f"/v1/sys/internal/ui/mounts/{options.mount}/{options.path}")
    except hvac.exceptions.Forbidden:
        # Vault says the same for a path under no mount and for a path the policy hides.
        if _capabilities(client, [options.data_path]).get(options.data_path, {"deny"}) <= {"deny"}:
            raise
        return no_mount
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict) or str(data.get("path", "")).strip("/") != options.mount:
        return no_mount
    kind = data.get("type")
    if kind not in ("kv", "generic"):
        return f"mount '{options.mount}' is a {kind} secrets engine, not KV"
    version = str((data.get("options") or {}).get("version") or "1")
    if version != str(options.kv_version):
        return f"mount '{options.mount}' is KV version {version}: set kv_version: {version}"
    return None


def capability_problem(options: VaultSinkOptions, client: Any) -> str | None:
    """What the token's policy lacks for this sink, or None when it allows everything needed."""
    needed = {options.data_path: {"read", "create", "update"}}
    if options.on_expiry == "withdraw":
        needed[options.data_path].add("delete")
    if options.kv_version == 2:
        needed[options.metadata_path] = {"create", "update"}
    granted = _capabilities(client, list(needed))
    lacking = []
    for path, capabilities in needed.items():
        have = granted.get(path, set())
        if "root" not in have and (missing := sorted(capabilities - have)):
            lacking.append(f"{', '.join(missing)} on {path}")
    if not lacking:
        return None
    return f"tokend's Vault policy lacks {'; '.join(lacking)} (see the README for the policy)"


def _capabilities(client: Any, paths: list[str]) -> dict[str, set[str]]:
    body = client.sys.get_capabilities(paths=paths)
    granted = body.get("data", body) if isinstance(body, dict) else {}
    return {path: set(granted.get(path) or ()) for path in paths}


def _nothing_there(exc: Any) -> bool:
    """A 404 for a secret that does not exist (rather than for a missing mount)."""
    body = exc.json if isinstance(exc.json, dict) else {}
    return not exc.errors and not body.get("warnings")


def _expires_on(values: Any) -> int | None:
    raw = values.get("expires_on") if isinstance(values, dict) else None
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and raw.isdigit():
        return int(raw)
    return None
