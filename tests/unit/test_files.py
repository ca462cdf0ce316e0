"""Durable writes: the data reaches the disk before the rename makes it visible, and the rename
reaches the disk before the write is reported done. Proven without root or a crash: `os.fsync`,
`os.replace` and `os.unlink` are recorded with what each descriptor was (its inode) and what the
path held at that instant."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest

from tokend import files


@dataclass(frozen=True)
class Event:
    call: str
    inode: int = 0
    is_directory: bool = False
    path_holds: bytes | None = None
    """What the token's path held when the call was made (None: no file yet)."""


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Event]:
    recorded: list[Event] = []
    real_fsync, real_replace, real_unlink = os.fsync, os.replace, os.unlink
    path = tmp_path / "crm.token"

    def holds() -> bytes | None:
        return path.read_bytes() if path.is_file() else None

    def fsync(fd: int) -> None:
        info = os.fstat(fd)
        recorded.append(Event("fsync", info.st_ino, stat.S_ISDIR(info.st_mode), holds()))
        real_fsync(fd)

    def replace(source: str, target: str) -> None:
        recorded.append(Event("replace", os.stat(source).st_ino, path_holds=holds()))
        real_replace(source, target)

    def unlink(target: str) -> None:
        recorded.append(Event("unlink", path_holds=holds()))
        real_unlink(target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "unlink", unlink)
    return recorded


def test_file_then_rename_then_directory_are_synced(events: list[Event], tmp_path: Path) -> None:
    path = tmp_path / "crm.token"
    path.write_bytes(b"old")
    files.write_atomic(path, b"new")
    directory = tmp_path.stat().st_ino
    written = path.stat().st_ino
    assert [event.call for event in events] == ["fsync", "replace", "fsync"]
    data, rename, entry = events
    # The new file's own data is on disk while the path still shows the old content...
    assert (data.inode, data.is_directory, data.path_holds) == (written, False, b"old")
    # ...then the synced file (the same inode) is renamed over the path...
    assert (rename.inode, rename.path_holds) == (written, b"old")
    # ...and the directory holding the new entry is synced before write_atomic returns.
    assert (entry.inode, entry.is_directory, entry.path_holds) == (directory, True, b"new")
    assert path.read_bytes() == b"new"


def test_a_removal_is_synced_in_the_directory(events: list[Event], tmp_path: Path) -> None:
    path = tmp_path / "crm.token"
    path.write_bytes(b"old")
    assert files.remove(path) is True
    assert [(event.call, event.is_directory) for event in events] == [
        ("unlink", False),
        ("fsync", True),
    ]
    assert events[1].inode == tmp_path.stat().st_ino
    assert events[1].path_holds is None
    assert files.remove(path) is False  # already gone: nothing to sync
    assert len(events) == 3  # only the failed unlink


def test_a_failed_write_leaves_no_temp_file_and_syncs_nothing(
    events: list[Event], tmp_path: Path
) -> None:
    path = tmp_path / "crm.token"
    path.mkdir()  # something that is not a file stands where the token goes
    with pytest.raises(IsADirectoryError):
        files.write_atomic(path, b"new")
    assert [event.call for event in events] == ["fsync", "replace", "unlink"]
    assert [entry.name for entry in tmp_path.iterdir()] == ["crm.token"]


def test_temp_file_is_created_private_beside_the_target(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The temp file is in the same directory (a rename across filesystems is not atomic),
    hidden, marked as tokend's, exclusive (never follows or reuses a planted file) and has the
    requested mode from its creation on, whatever the umask."""
    opened: list[tuple[str, int, int]] = []
    real_open = os.open

    def record(name: str, flags: int, mode: int = 0o777, **kwargs: object) -> int:
        opened.append((name, flags, mode))
        return real_open(name, flags, mode, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", record)
    path = tmp_path / "crm.token"
    old_umask = os.umask(0o022)
    try:
        files.write_atomic(path, b"x" * 200_000, mode=0o640)
    finally:
        os.umask(old_umask)
    name, flags, mode = opened[0]
    assert os.path.dirname(name) == str(tmp_path)
    assert os.path.basename(name).startswith(".crm.token.tokend-tmp-")
    wanted = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    assert flags & wanted == wanted
    assert mode == 0o640
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert path.read_bytes() == b"x" * 200_000  # a long write is written whole
