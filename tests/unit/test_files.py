"""Durable writes: the data reaches the disk before the rename makes it visible, and the rename
reaches the disk before the write is reported done. Proven without root or a crash: `os.fsync`,
`os.replace` and `os.unlink` are recorded with what each descriptor was (its inode) and what the
path held at that instant."""

from __future__ import annotations

import errno
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def test_default_mode_is_private(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    old_umask = os.umask(0)
    try:
        files.write_atomic(path, b"{}")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_temp_names_are_unguessable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    opened: list[str] = []
    real_open = os.open

    def record(name: str, flags: int, mode: int = 0o777, **kwargs: object) -> int:
        opened.append(name)
        return real_open(name, flags, mode, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", record)
    for _ in range(2):
        files.write_atomic(tmp_path / "crm.token", b"x")
    temps = [os.path.basename(name) for name in opened if "tokend-tmp" in name]
    assert all(re.fullmatch(r"\.crm\.token\.tokend-tmp-[0-9a-f]{12}", name) for name in temps)
    assert len(set(temps)) == 2


def test_directories_are_opened_for_sync_only_and_not_inherited(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    opened: list[int] = []
    real_open = os.open

    def record(name: str | Path, flags: int, *args: object, **kwargs: object) -> int:
        if os.fspath(name) == str(tmp_path):
            opened.append(flags)
        return real_open(name, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", record)
    files.fsync_directory(tmp_path)
    wanted = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    assert opened == [wanted]


def test_the_sweep_removes_dangling_temp_links_and_survives_a_race(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A killed writer's temp file may be a symlink (judged by its own age, never followed),
    and another process may remove a stale file first: the sweep carries on either way."""
    link = tmp_path / ".crm.token.tokend-tmp-aaaaaaaaaaaa"
    link.symlink_to(tmp_path / "nowhere")
    raced = tmp_path / ".graph.token.tokend-tmp-bbbbbbbbbbbb"
    raced.write_text("partial")
    later = tmp_path / ".api.token.tokend-tmp-cccccccccccc"
    later.write_text("partial")
    long_ago = time.time() - 120
    for leftover in (link, raced, later):
        os.utime(leftover, (long_ago, long_ago), follow_symlinks=False)
    real_unlink = os.unlink

    def unlink(path: str) -> None:
        if path == str(raced):
            real_unlink(path)
            raise FileNotFoundError(path)  # someone else removed it just before us
        real_unlink(path)

    monkeypatch.setattr(os, "unlink", unlink)
    files.sweep_stale_temp_files(tmp_path)
    assert sorted(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("uid", "gid", "calls"),
    [(-1, -1, []), (1000, -1, [(1000, -1)]), (-1, 50, [(-1, 50)]), (5, 6, [(5, 6)])],
)
def test_owner_and_group_are_set_on_the_temp_file_only_when_asked(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    uid: int,
    gid: int,
    calls: list[tuple[int, int]],
) -> None:
    """fchown on the temp file's own descriptor, before the rename (no root needed: recorded)."""
    path = tmp_path / "crm.token"
    recorded: list[tuple[int, int]] = []

    def fchown(fd: int, owner: int, group: int) -> None:
        assert os.readlink(f"/proc/self/fd/{fd}").startswith(f"{tmp_path}/.crm.token.tokend-tmp-")
        assert not path.exists()
        recorded.append((owner, group))

    monkeypatch.setattr(os, "fchown", fchown)
    files.write_atomic(path, b"x", uid=uid, gid=gid)
    assert recorded == calls


def test_a_failed_rename_raises_its_own_error_even_if_the_temp_file_is_gone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def replace(source: str, target: str) -> None:
        os.unlink(source)
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="cross-device") as caught:
        files.write_atomic(tmp_path / "crm.token", b"x")
    assert caught.value.errno == errno.EXDEV
    assert list(tmp_path.iterdir()) == []


def test_directories_are_looked_at_once_while_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tokend check` of many sinks in few directories asks about each directory once; outside
    a check every call asks again (a directory created since must be seen)."""
    asked: list[tuple[str, str]] = []
    access, realpath = os.access, os.path.realpath
    monkeypatch.setattr(
        os, "access", lambda path, mode: asked.append(("access", path)) or access(path, mode)
    )
    monkeypatch.setattr(
        os.path, "realpath", lambda path: asked.append(("realpath", path)) or realpath(path)
    )
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    here, link, missing = str(tmp_path), str(tmp_path / "link"), str(tmp_path / "missing")
    absent = f"directory {missing} does not exist (create it, or set create_dirs: true)"
    assert files.directory_problem(here, create=False) is None
    assert files.directory_problem(here, create=False) is None
    assert asked == [("access", here)] * 2
    asked.clear()
    with files.remembered_directories():
        answers = [files.directory_problem(path, create=False) for path in (here, here, missing)]
        assert answers == [None, None, absent]
        assert files.directory_problem(missing, create=True) is None  # another question
        assert files.directory_problem(link, create=False) is None  # the same path, too
        assert files.real_directory(link) == files.real_directory(link) == str(tmp_path / "real")
    assert asked == [("access", here), ("access", here), ("access", link), ("realpath", link)]
    asked.clear()
    assert files.real_directory(link) == str(tmp_path / "real")
    assert asked == [("realpath", link)]  # forgotten after the check


def test_what_stops_files_being_created_in_a_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `tokend check` says of a file sink's directory, before anything is written."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert files.directory_problem(str(tmp_path), create=False) is None
    assert files.directory_problem(str(tmp_path / "new" / "deeper"), create=True) is None
    assert files.directory_problem(str(afile), create=False) == f"{afile} is not a directory"
    assert files.directory_problem(str(afile / "sub"), create=True) == f"{afile} is not a directory"
    # What the kernel says of a directory this user may not write in (root may write anywhere,
    # so the answer is given here rather than found).
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert files.directory_problem(str(tmp_path / "new"), create=True) == (
        f"cannot create files in {tmp_path} (permissions, or a read-only file system)"
    )


# --- reading files a user names -----------------------------------------------------------------


def test_a_regular_file_is_read_whole_up_to_its_limit(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    assert files.read_regular_file(path, 10) == b"x" * 10
    with pytest.raises(files.RefusedFile, match=r"^larger than 9 bytes$"):
        files.read_regular_file(path, 9)


def test_a_file_that_claims_no_size_is_still_read_and_still_capped() -> None:
    """A file in /proc says it holds 0 bytes: its size is a hint, never the limit."""
    status = files.read_regular_file("/proc/self/status", files.MiB)
    assert b"Pid:" in status
    with pytest.raises(files.RefusedFile, match=r"^larger than 1 KiB$"):
        files.read_regular_file("/proc/self/maps", 1 << 10)  # usually 4 KiB or more


def test_a_file_that_grew_past_its_limit_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * (3 * files.MiB))
    real_fstat = os.fstat
    monkeypatch.setattr(os, "fstat", lambda fd: _claiming(real_fstat(fd), size=100))
    with pytest.raises(files.RefusedFile, match=r"^larger than 2 MiB$"):
        files.read_regular_file(path, 2 * files.MiB)
    assert len(files.read_regular_file(path, 4 * files.MiB)) == 3 * files.MiB


def _claiming(info: os.stat_result, size: int) -> os.stat_result:
    fields = list(info)
    fields[stat.ST_SIZE] = size
    return os.stat_result(fields)


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (os.mkfifo, "a FIFO"),  # no writer: a blocking open would wait forever
        (os.mkdir, "a directory"),
        (lambda path: os.symlink("/dev/zero", path), "a character device"),
    ],
)
def test_what_is_not_a_regular_file_is_refused_at_once(
    tmp_path: Path, make: Any, kind: str
) -> None:
    path = tmp_path / "x"
    make(path)
    with pytest.raises(files.RefusedFile, match=rf"^not a regular file \({kind}\)$"):
        files.read_regular_file(path, files.MiB)


def test_sizes_are_named_in_the_largest_unit_that_divides_them() -> None:
    sizes = [256 * files.MiB, files.MiB, 64 << 10, 1000]
    assert [files.size_text(size) for size in sizes] == ["256 MiB", "1 MiB", "64 KiB", "1000 bytes"]
