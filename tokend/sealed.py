"""Private, sealed files in the state directory: what tokend keeps on disk that is worth stealing.

The rules are ssh's: a directory or file that another user owns or can write to (a file: read)
is refused, so a forged file is never used and a stolen copy is never readable. `SealedFiles` keeps
small secrets (an identity's rotated refresh token) one JSON file per name, each sealed with the
`state_key` (AES-256-GCM) and bound by its associated data to what it is for, in a private
subdirectory of `state_dir`. The last good access tokens are kept by `tokend.engine.state` with the
same rules.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

from tokend import files
from tokend.seal import Sealer

_FORMAT = 1


class UnusableFile(ValueError):
    """A stored file that must not be used: not private, unreadable, or not tokend's format.
    The text says why, never what the file holds."""


class SealedFiles:
    """Sealed blobs by name in `directory` (mode 0700, inside a private state directory)."""

    __slots__ = ("_sealer", "directory")

    def __init__(self, directory: Path, sealer: Sealer) -> None:
        self.directory = directory
        self._sealer = sealer

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def version(self, name: str) -> str:
        """Changes whenever the file of `name` is replaced or removed (writes are atomic
        renames: a new inode each time). Reads no content."""
        try:
            info = os.stat(self.path(name))
        except FileNotFoundError:
            return "absent"
        except OSError as exc:
            return f"unreadable:{exc.errno}"
        return f"{info.st_ino}:{info.st_size}:{info.st_mtime_ns}"

    def read(self, name: str, associated: str) -> bytes | None:
        """The plaintext stored under `name`, or None if there is none. Raises `UnusableFile`,
        or `SealError` when it does not open with this key for these associated data."""
        path = self.path(name)
        try:
            problem = private_problem(path, directory=False) or private_problem(
                self.directory, directory=True
            )
        except FileNotFoundError:
            return None
        if problem:
            raise UnusableFile(f"{path}: {problem}")
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise UnusableFile(f"{path}: unreadable ({type(exc).__name__})") from None
        if not isinstance(document, dict) or document.get("format") != _FORMAT:
            raise UnusableFile(f"{path}: not a sealed file of this tokend")
        return self._sealer.open(str(document.get("sealed", "")), associated)

    def write(self, name: str, associated: str, plaintext: bytes) -> None:
        """Seal and store atomically (fsync, rename). Raises OSError (a directory that is not
        private too)."""
        make_private_directory(self.directory.parent)
        make_private_directory(self.directory)
        sealed = self._sealer.seal(plaintext, associated)
        document = json.dumps({"format": _FORMAT, "sealed": sealed}).encode()
        files.write_atomic(self.path(name), document, mode=0o600)

    def remove(self, name: str) -> None:
        files.remove(self.path(name))

    def __repr__(self) -> str:
        return f"SealedFiles({str(self.directory)!r})"


def private_problem(path: Path, *, directory: bool) -> str | None:
    """Why `path` may not hold tokend's state (another user owns it or can write to it; for a
    file, can read it), or None. Raises FileNotFoundError if it does not exist."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        return "it is a symbolic link"
    if directory != stat.S_ISDIR(info.st_mode):
        return "it is a directory" if not directory else "it is not a directory"
    if info.st_uid != os.geteuid():
        return f"it is owned by uid {info.st_uid}, not by tokend's user (uid {os.geteuid()})"
    exposed = 0o022 if directory else 0o077
    if info.st_mode & exposed:
        who = "written" if directory else "read or written"
        return f"mode {stat.S_IMODE(info.st_mode):04o} lets other users have it {who}"
    return None


def make_private_directory(directory: Path) -> None:
    """Create `directory` (and missing parents) with mode 0700 whatever the umask; refuse one
    that is not private. Raises OSError."""
    try:
        problem = private_problem(directory, directory=True)
    except FileNotFoundError:
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        problem = private_problem(directory, directory=True)
    if problem:
        raise PermissionError(errno.EPERM, f"state_dir {directory}: {problem}")


def state_dir_problem(directory: Path) -> str | None:
    """Why `directory` cannot hold state (`state_dir`: `tokend check` and start-up), or None."""
    try:
        if problem := private_problem(directory, directory=True):
            return problem
        if not os.access(directory, os.W_OK | os.X_OK):
            return f"{directory} is not writable by this user"
        return None
    except FileNotFoundError:
        existing = next((p for p in directory.parents if p.exists()), None)
        if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
            return f"{directory} cannot be created: {existing} is not writable by this user"
        return None
