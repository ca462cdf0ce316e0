"""File sink details an operator meets: how `mode`, `owner` and `group` read, what `tokend
check` finds without writing, which write failures are worth retrying (and their codes), and
how sinks are labelled in metrics and status."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tokend import files
from tokend.sinks import SinkContext, SinkError, sink_labels
from tokend.sinks.base import can_verify
from tokend.sinks.file import FileSink, FileSinkOptions, rfc3339
from tokend.token import Token


def _options(**values: Any) -> FileSinkOptions:
    return FileSinkOptions(type="file", **values)


@pytest.mark.parametrize(
    ("mode", "parsed"), [("0600", 0o600), ("640", 0o640), ("0o644", 0o644), ("0750", 0o750)]
)
def test_modes_read_as_octal_strings(mode: str, parsed: int) -> None:
    assert _options(path="/run/t", mode=mode).mode == parsed


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        (600, 'write the mode as a quoted octal string, e.g. mode: "0600"'),
        (True, "'True' is not an octal file mode like \"0600\""),
        ("0800", "'0800' is not an octal file mode like \"0600\""),
        ("60", "'60' is not an octal file mode like \"0600\""),
        ("4600", "setuid, setgid and sticky bits are not allowed on a token file"),
        ("1600", "setuid, setgid and sticky bits are not allowed on a token file"),
    ],
)
def test_bad_modes_are_explained(mode: object, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _options(path="/run/t", mode=mode)
    assert caught.value.errors()[0]["msg"] == f"Value error, {message}"


@pytest.mark.parametrize("path", ["/run/tokend/", "/run/tokend/.", "/run/tokend/.."])
def test_a_directory_is_not_a_file_path(path: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _options(path=path)
    assert (
        caught.value.errors()[0]["msg"] == f"Value error, '{path}' is a directory, not a file path"
    )


def test_paths_are_absolute_strings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    options = _options(path=Path("crm.token"))
    assert options.path == str(tmp_path / "crm.token")
    assert options.target() == f"file {tmp_path / 'crm.token'}"


def test_preflight_finds_what_the_first_write_would_meet(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    assert _options(path=str(tmp_path / "crm.token")).preflight() == []
    assert _options(path=str(tmp_path / "new" / "crm.token"), create_dirs=True).preflight() == []
    assert _options(
        path=str(tmp_path / "new" / "crm.token"), owner="no-such-user-x", group="root"
    ).preflight() == [
        "owner: no user 'no-such-user-x' on this machine",
        f"directory {tmp_path / 'new'} does not exist (create it, or set create_dirs: true)",
    ]
    assert _options(path=str(tmp_path / "taken"), group="no-such-group-x").preflight() == [
        "group: no group 'no-such-group-x' on this machine",
        f"{tmp_path / 'taken'} is a directory, not a file",
    ]


@pytest.mark.parametrize(
    ("owner", "group", "ids"),
    [
        (None, None, (-1, -1)),
        ("root", None, (0, -1)),
        (None, "root", (-1, 0)),
        (1234, 5678, (1234, 5678)),
        (0, 4294967294, (0, 4294967294)),  # the ends of the range (4294967295 is chown's -1)
    ],
)
def test_owner_and_group_by_name_or_number(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    owner: object,
    group: object,
    ids: tuple[int, int],
) -> None:
    seen: list[tuple[int, int]] = []
    write = files.write_atomic

    def record(path: str, data: bytes, *, mode: int, uid: int, gid: int) -> None:
        seen.append((uid, gid))
        write(path, data, mode=mode)

    monkeypatch.setattr(files, "write_atomic", record)
    options = _options(path=str(tmp_path / "crm.token"), owner=owner, group=group)
    asyncio.run(FileSink(options, SinkContext("crm", "file")).publish(_token()))
    assert seen == [ids]


def _token() -> Token:
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    return Token(
        value="v", token_type="Bearer", expires_at=now + timedelta(hours=1), obtained_at=now
    )


@pytest.mark.parametrize(
    ("error", "code", "transient", "reason"),
    [
        (
            OSError(errno.ENOSPC, "No space left on device"),
            "file_enospc",
            True,
            "No space left on device",
        ),
        (OSError(errno.EIO, "Input/output error"), "file_eio", True, "Input/output error"),
        (OSError(errno.ESTALE, "Stale file handle"), "file_estale", True, "Stale file handle"),
        (
            OSError(errno.EROFS, "Read-only file system"),
            "file_erofs",
            False,
            "Read-only file system",
        ),
        (
            PermissionError(errno.EACCES, "Permission denied"),
            "file_eacces",
            False,
            "Permission denied (check the directory's owner and mode, and the owner/group options)",
        ),
        (OSError("odd"), "file_os_error", False, "OSError"),
    ],
)
def test_write_failures_say_whether_retrying_may_help(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    error: OSError,
    code: str,
    transient: bool,
    reason: str,
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(files, "write_atomic", fail)
    path = tmp_path / "crm.token"
    with pytest.raises(SinkError) as caught:
        asyncio.run(
            FileSink(_options(path=str(path)), SinkContext("crm", "file")).publish(_token())
        )
    assert (str(caught.value), caught.value.code, caught.value.transient) == (
        f"{path}: {reason}",
        code,
        transient,
    )
    monkeypatch.setattr(files, "remove", fail)
    with pytest.raises(SinkError) as caught:
        asyncio.run(FileSink(_options(path=str(path)), SinkContext("crm", "file")).withdraw())
    assert str(caught.value) == f"{path}: cannot remove: {reason}"


def test_a_missing_directory_is_not_worth_retrying_until_someone_creates_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "missing" / "crm.token"
    with pytest.raises(SinkError) as caught:
        asyncio.run(
            FileSink(_options(path=str(path)), SinkContext("crm", "file")).publish(_token())
        )
    assert (caught.value.code, caught.value.transient) == ("file_no_directory", False)


def test_created_directories_are_not_world_readable(tmp_path: Path) -> None:
    path = tmp_path / "a" / "crm.token"
    old_umask = os.umask(0)
    try:
        asyncio.run(
            FileSink(
                _options(path=str(path), create_dirs=True), SinkContext("crm", "file")
            ).publish(_token())
        )
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o750


def test_sink_labels_name_type_or_number() -> None:
    sinks = [
        _options(path="/run/a"),
        _options(path="/run/b", name="backup"),
        _options(path="/run/c"),
    ]
    assert sink_labels(sinks) == ["file-1", "backup", "file-3"]  # numbered by position
    assert sink_labels([_options(path="/run/a")]) == ["file"]
    assert sink_labels([_options(path="/run/a", name="only")]) == ["only"]


def test_rfc3339_is_utc_to_the_second_whatever_the_local_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from datetime import datetime, timedelta, timezone

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        moment = datetime(2026, 3, 1, 13, 0, 5, 999999, tzinfo=timezone(timedelta(hours=1)))
        assert rfc3339(moment) == "2026-03-01T12:00:05Z"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_readiness_waits_for_a_sink_as_configured_else_as_its_type_says() -> None:
    assert _options(path="/run/a").waits_for_ready() is True  # a file: the pod's app reads it
    assert _options(path="/run/a", required_for_ready=False).waits_for_ready() is False
    assert _options(path="/run/a", required_for_ready=True).waits_for_ready() is True


class _Verifies:
    verify_interval = 60.0

    def verify(self, token: Token) -> bool:
        return True


class _IntervalOnly:
    verify_interval = 60.0


class _VerifyOnly:
    def verify(self, token: Token) -> bool:
        return True


def test_a_sink_is_verified_only_with_both_a_verify_method_and_an_interval() -> None:
    assert can_verify(_Verifies())  # type: ignore[arg-type]
    assert not can_verify(_IntervalOnly())  # type: ignore[arg-type]
    assert not can_verify(_VerifyOnly())  # type: ignore[arg-type]


def test_the_resolved_target_follows_directory_links(tmp_path: Path) -> None:
    """Two sinks writing one file through different links are found out by check."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    options = _options(path=str(tmp_path / "link" / "crm.token"))
    assert options.target() == f"file {tmp_path / 'link' / 'crm.token'}"
    assert options.resolved_target() == f"file {tmp_path / 'real' / 'crm.token'}"


@pytest.mark.parametrize(
    ("mode", "warned"), [("0600", False), ("0640", False), ("0604", True), ("0666", True)]
)
def test_a_world_readable_token_file_is_warned_about(mode: str, warned: bool) -> None:
    options = _options(path="/run/tokend/crm.token", mode=mode)
    expected = [f"mode {mode} lets every user on this machine read /run/tokend/crm.token"]
    assert options.warnings() == (expected if warned else [])


def test_json_files_are_indented_and_carry_the_scopes(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    token = Token(
        value="v",
        token_type="Bearer",
        expires_at=now + timedelta(hours=1),
        obtained_at=now,
        scopes=("a", "b"),
    )
    path = tmp_path / "crm.json"
    sink = FileSink(_options(path=str(path), format="json"), SinkContext("crm", "file-json"))
    asyncio.run(sink.publish(token))
    assert sink.name == "file-json"
    assert path.read_text() == (
        "{\n"
        '  "access_token": "v",\n'
        '  "token_type": "Bearer",\n'
        f'  "expires_on": {int((now + timedelta(hours=1)).timestamp())},\n'
        '  "expires_at": "2026-03-01T13:00:00Z",\n'
        '  "scopes": [\n    "a",\n    "b"\n  ]\n'
        "}\n"
    )


def test_the_lowest_mode_bits_are_allowed_and_sink_errors_default_to_permanent() -> None:
    assert _options(path="/run/t", mode="0601").mode == 0o601
    error = SinkError("x")
    assert (error.code, error.transient) == ("sink_error", False)


def test_file_sinks_in_one_directory_share_its_name(tmp_path: Path) -> None:
    """One string per directory, not one per sink (100,000 sinks in 100 directories)."""
    first, second = (
        FileSink(_options(path=str(tmp_path / name)), SinkContext(name, "file"))
        for name in ("a.token", "b.token")
    )
    assert first._directory == str(tmp_path)
    assert first._directory is second._directory
