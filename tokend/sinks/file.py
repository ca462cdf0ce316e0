"""The file sink: the token in a file on a local or shared volume (a pod's `emptyDir`, `/run`).

Writes are atomic and private (see `tokend.files`), so a consumer that reads the file at any
instant gets a complete, current token. Formats: `raw` (the token alone, no newline), `json`
(token and expiry for consumers that plan ahead), `env` (`NAME=value` lines for systemd
`EnvironmentFile=` or `source`).
"""

from __future__ import annotations

import errno
import grp
import json
import os
import pwd
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator
from pydantic import dataclasses as pydantic_dataclasses

from tokend import files
from tokend.paths import EMPTY_PATH
from tokend.sinks.base import (
    OPTIONS_CONFIG,
    SINKS,
    SinkContext,
    SinkError,
    SinkOptionsBase,
    SinkType,
)
from tokend.token import Token

_SAFE = re.compile(r"[\x21\x23-\x26\x28-\x5b\x5d-\x7e]+")
"""Visible ASCII but the quotes and the backslash: nothing can end a line, a header value or
a single-quoted shell word (env values are written in single quotes)."""


def _parse_mode(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML reads an unquoted 0600 as octal but 600 as decimal: too easy to get wrong.
        raise ValueError('write the mode as a quoted octal string, e.g. mode: "0600"')
    if not isinstance(value, str) or not re.fullmatch(r"(0o?)?[0-7]{3,4}", value):
        raise ValueError(f"'{value}' is not an octal file mode like \"0600\"")
    mode = int(value.removeprefix("0o"), 8)
    if mode & 0o7000:
        raise ValueError("setuid, setgid and sticky bits are not allowed on a token file")
    return mode


FileMode = Annotated[int, BeforeValidator(_parse_mode)]


def _yaml_kind(value: Any) -> str:
    return "a mapping" if isinstance(value, dict) else f"a {type(value).__name__}"


MAX_ID = 2**32 - 2
"""User and group IDs are 32 bits, and 2**32 - 1 is the -1 that tells chown "leave it": a
larger or negative number failed every write with an OverflowError."""


def _account(kind: str) -> Callable[[Any], Any]:
    """A validator for `owner`/`group`: a name (looked up at check and at each write), or a
    numeric ID in range. Not a bool: YAML's `true` would be ID 1."""

    def check(value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID:
            return value
        shown = json.dumps(value) if isinstance(value, int | float) else _yaml_kind(value)
        raise ValueError(f"expected a {kind} name or a {kind} ID from 0 to {MAX_ID}, not {shown}")

    return check


@pydantic_dataclasses.dataclass(config=OPTIONS_CONFIG, frozen=True, slots=True, kw_only=True)
class FileSinkOptions(SinkOptionsBase):
    type: Literal["file"]
    path: str
    format: Literal["raw", "json", "env"] = "raw"
    mode: FileMode = 0o600
    owner: Annotated[str | int | None, BeforeValidator(_account("user"))] = None
    group: Annotated[str | int | None, BeforeValidator(_account("group"))] = None
    create_dirs: bool = False
    env_prefix: Annotated[str, Field(pattern=r"^([A-Z_][A-Z0-9_]*)?$")] = ""

    @field_validator("path", mode="before")
    @classmethod
    def _file_path(cls, path: Any) -> Any:
        """An absolute file path, kept as a string (a Path object per sink costs ~400 bytes,
        which at 10,000 tokens is 4 MB)."""
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
        if path == "":
            raise ValueError(EMPTY_PATH)
        if isinstance(path, str) and (
            path.endswith("/") or os.path.basename(path) in ("", ".", "..")
        ):
            raise ValueError(f"'{path}' is a directory, not a file path")
        return os.path.abspath(path) if isinstance(path, str) else path

    def target(self) -> str:
        return f"file {self.path}"

    def resolved_target(self) -> str:
        directory, name = os.path.split(self.path)
        return f"file {os.path.join(files.real_directory(directory), name)}"

    def preflight(self) -> list[str]:
        problems = []
        try:
            _user_id(self.owner)
            _group_id(self.group)
        except SinkError as exc:
            problems.append(str(exc))
        directory = os.path.dirname(self.path)
        if problem := files.directory_problem(directory, create=self.create_dirs):
            problems.append(problem)
        if os.path.isdir(self.path):
            problems.append(f"{self.path} is a directory, not a file")
        return problems

    def warnings(self) -> list[str]:
        if self.mode & 0o007:
            return [f"mode {self.mode:04o} lets every user on this machine read {self.path}"]
        return []


class FileSink:
    __slots__ = ("_directory", "_options", "_path", "name")

    def __init__(self, options: FileSinkOptions, context: SinkContext) -> None:
        self.name = context.sink_name
        self._options = options
        self._path = options.path
        self._directory = sys.intern(os.path.dirname(options.path))  # one per directory

    async def publish(self, token: Token) -> None:
        await self._in_lane(self._write, render(token, self._options))

    async def withdraw(self) -> None:
        await self._in_lane(self._remove)

    async def _in_lane(self, function: Callable[..., None], *args: object) -> None:
        """On the writer thread of this sink's directory (`tokend.writers`)."""
        from tokend.writers import in_writer_thread  # noqa: PLC0415 - check runs no event loop

        await in_writer_thread(function, *args, lane=self._directory)

    async def close(self) -> None:
        return None

    def _write(self, data: bytes) -> None:
        directory = self._directory
        try:
            if not os.path.isdir(directory):
                if not self._options.create_dirs:
                    raise SinkError(
                        f"{self._path}: directory {directory} does not exist "
                        "(create it, or set create_dirs: true)",
                        code="file_no_directory",
                    )
                os.makedirs(directory, mode=0o750, exist_ok=True)
            files.sweep_stale_temp_files(directory)
            files.write_atomic(
                self._path,
                data,
                mode=self._options.mode,
                uid=_user_id(self._options.owner),
                gid=_group_id(self._options.group),
            )
        except OSError as exc:
            raise _os_error(exc, f"{self._path}: {_os_reason(exc)}") from None

    def _remove(self) -> None:
        try:
            files.remove(self._path)
        except OSError as exc:
            raise _os_error(exc, f"{self._path}: cannot remove: {_os_reason(exc)}") from None


def render(token: Token, options: FileSinkOptions) -> bytes:
    """The file's content in the configured format. Token fields were validated when the
    response was read; the checks here are a second lock on the door of the formats a shell or
    an HTTP header reads."""
    if not _SAFE.fullmatch(token.value) or not _SAFE.fullmatch(token.token_type):
        raise SinkError(f"{options.path}: token has characters a file sink never writes")
    if options.format == "raw":
        return token.value.encode()
    if options.format == "json":
        document: dict[str, object] = {
            "access_token": token.value,
            "token_type": token.token_type,
            "expires_on": int(token.expires_at.timestamp()),
            "expires_at": rfc3339(token.expires_at),
        }
        if token.resource:
            document["resource"] = token.resource
        if token.scopes:
            document["scopes"] = list(token.scopes)
        return (json.dumps(document, indent=2) + "\n").encode()
    prefix = options.env_prefix
    lines = [
        f"{prefix}ACCESS_TOKEN='{token.value}'",
        f"{prefix}TOKEN_TYPE='{token.token_type}'",
        f"{prefix}EXPIRES_ON={int(token.expires_at.timestamp())}",
    ]
    return ("\n".join(lines) + "\n").encode()


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _user_id(owner: str | int | None) -> int:
    if owner is None or isinstance(owner, int):
        return -1 if owner is None else owner
    try:
        return pwd.getpwnam(owner).pw_uid
    except KeyError:
        raise SinkError(f"owner: no user '{owner}' on this machine") from None


def _group_id(group: str | int | None) -> int:
    if group is None or isinstance(group, int):
        return -1 if group is None else group
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise SinkError(f"group: no group '{group}' on this machine") from None


_PASSING = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.EINTR, errno.EBUSY, errno.ESTALE}
)
"""Failures a later attempt may not meet (a full disk, a busy or flaky network filesystem)."""


def _os_error(exc: OSError, message: str) -> SinkError:
    name = errno.errorcode.get(exc.errno or 0, "os_error").lower()
    return SinkError(message, code=f"file_{name}", transient=exc.errno in _PASSING)


def _os_reason(exc: OSError) -> str:
    reason = exc.strerror or type(exc).__name__
    if isinstance(exc, PermissionError):
        return f"{reason} (check the directory's owner and mode, and the owner/group options)"
    return reason


SINKS.register("file", SinkType(FileSinkOptions, FileSink))
