"""Atomic, private file writes: a reader sees the old file or the new one, never a partial one,
and a crash (even `kill -9`) at any instant leaves one of the two. And bounded reads of files a
user names (a config, a secret): a FIFO or a device given by mistake is refused, not waited on
or read until memory runs out.

Everything here blocks: code on the event loop runs it on another thread (file sinks and kept
refresh tokens on `tokend.writers`' threads, saved access tokens on asyncio's default executor).
No asyncio here: `tokend check` uses these functions and loads no event loop.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, BinaryIO

_TEMP_MARK = ".tokend-tmp-"


def write_atomic(
    path: str | Path,
    data: bytes,
    *,
    mode: int = 0o600,
    uid: int = -1,
    gid: int = -1,
) -> None:
    """Write `data` to `path` atomically: temp file in the same directory created with `mode`
    (re-applied, whatever the umask), owner set, fsync, rename over `path`, fsync the directory."""
    directory, name = os.path.split(os.fspath(path))
    temp = f"{directory}/.{name}{_TEMP_MARK}{os.urandom(6).hex()}"
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
        os.replace(temp, os.fspath(path))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    fsync_directory(directory)


def remove(path: str | Path) -> bool:
    """Remove `path` durably; False if it was not there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    fsync_directory(os.path.dirname(os.fspath(path)))
    return True


STALE_AFTER = 60.0
"""A temp file this many seconds old belongs to no write in progress (writes take
milliseconds): it was left by a process killed mid-write."""

_swept: set[str] = set()  # directories swept by this process (a race sweeps one twice: harmless)


def sweep_stale_temp_files(directory: str | Path) -> None:
    """Once per directory per process: remove temp files left by killed writers. Only files older
    than `STALE_AFTER` go, so another tokend writing into the same directory is left alone."""
    key = os.fspath(directory)
    if key in _swept:
        return
    _swept.add(key)
    cutoff = time.time() - STALE_AFTER
    with os.scandir(key) as entries:
        for entry in entries:
            if _TEMP_MARK in entry.name and entry.name.startswith("."):
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)


def fsync_directory(directory: str | Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- reading files a user names --------------------------------------------------------------

MiB = 1 << 20


class RefusedFile(ValueError):
    """A path names something tokend will not read. The text is the reason alone ("not a
    regular file (a FIFO)", "larger than 1 MiB"): the caller names the file its own way."""


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


@contextmanager
def open_regular_file(path: str | Path) -> Iterator[BinaryIO]:
    """`path` opened for reading if it is a regular file (after symbolic links), else
    `RefusedFile`. Opened with O_NONBLOCK, so a FIFO with no writer cannot block the open, and
    the opened descriptor is the one looked at: nothing can be swapped in between. Raises
    `OSError` as `open` does."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "of an unknown kind")
            raise RefusedFile(f"not a regular file ({kind})")
        os.set_blocking(fd, True)  # a regular file ignores it; reads then behave as usual
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as file:
        yield file


def read_regular_file(path: str | Path, limit: int) -> bytes:
    """The content of the regular file `path`, if it is at most `limit` bytes; else
    `RefusedFile`. At most `limit + 1` bytes are read, whatever the file's size says (a file in
    /proc says 0; a growing file says less than it holds). Raises `OSError` as `open` does."""
    with open_regular_file(path) as file:
        hint = min(os.fstat(file.fileno()).st_size, limit) + 1
        data = file.read(hint)  # one read of the size the file claims, +1 to meet its end
        if len(data) == hint:  # it holds more than it claimed: go on, a chunk at a time
            more = bytearray(data)
            while len(more) <= limit and (piece := file.read(min(MiB, limit + 1 - len(more)))):
                more += piece
            data = bytes(more)
    if len(data) > limit:
        raise RefusedFile(f"larger than {size_text(limit)}")
    return data


def size_text(size: int) -> str:
    """`size` in the largest binary unit that divides it: "1 MiB", "64 KiB", "100 bytes"."""
    for unit, name in ((MiB, "MiB"), (1 << 10, "KiB")):
        if size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size} bytes"


# --- looking at directories during a check ----------------------------------------------------

_memo: ContextVar[dict[tuple[str, str], Any] | None] = ContextVar("directory_memo", default=None)


@contextmanager
def remembered_directories() -> Iterator[None]:
    """While active, `directory_problem` and `real_directory` answer each directory once: a check of
    100,000 sinks in 100 directories asks 100 questions, not 200,000. Outside, every call asks
    (a reload after an operator created a directory must see it)."""
    token = _memo.set({})
    try:
        yield
    finally:
        _memo.reset(token)


def directory_problem(directory: str, *, create: bool) -> str | None:
    """Why files cannot be created in `directory` (made first, with `create`), as far as this
    machine says without writing; None if they can. Answered once per directory while
    `remembered_directories` is active."""
    problem: str | None = _remembered(
        f"problem {create}", directory, lambda path: _directory_problem(path, create)
    )
    return problem


def _directory_problem(directory: str, create: bool) -> str | None:
    existing = directory
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if existing != directory and not create:
        return f"directory {directory} does not exist (create it, or set create_dirs: true)"
    if not os.path.isdir(existing):
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot create files in {existing} (permissions, or a read-only file system)"
    return None


def real_directory(path: str) -> str:
    """`path` with symbolic links resolved."""
    return str(_remembered("realpath", path, os.path.realpath))


def _remembered(kind: str, path: str, look: Callable[[str], Any]) -> Any:
    memo = _memo.get()
    if memo is None:
        return look(path)
    key = (kind, path)
    if key not in memo:
        memo[key] = look(path)
    return memo[key]
