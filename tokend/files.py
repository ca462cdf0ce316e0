"""Atomic, private file writes: a reader sees the old file or the new one, never a partial one,
and a crash (even `kill -9`) at any instant leaves one of the two."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

_TEMP_MARK = ".tokend-tmp-"


def write_atomic(
    path: Path,
    data: bytes,
    *,
    mode: int = 0o600,
    uid: int = -1,
    gid: int = -1,
) -> None:
    """Write `data` to `path` atomically: temp file in the same directory created with `mode`
    (re-applied, whatever the umask), owner set, fsync, rename over `path`, fsync the directory."""
    temp = path.with_name(f".{path.name}{_TEMP_MARK}{secrets.token_hex(6)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, mode)
    try:
        try:
            os.fchmod(fd, mode)
            if uid != -1 or gid != -1:
                os.fchown(fd, uid, gid)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def remove(path: Path) -> bool:
    """Remove `path` durably; False if it was not there."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    fsync_directory(path.parent)
    return True


def remove_stale_temp_files(path: Path) -> None:
    """Temp files of `path` left by a process killed mid-write (only tokend uses these names)."""
    for leftover in path.parent.glob(f".{path.name}{_TEMP_MARK}*"):
        leftover.unlink(missing_ok=True)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
