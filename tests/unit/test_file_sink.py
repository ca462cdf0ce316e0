"""The file sink: formats, modes, directories, withdrawal, atomicity under a concurrent reader."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import stat
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tokend.sinks import SinkContext, SinkError
from tokend.sinks.file import FileSink, FileSinkOptions
from tokend.token import Token

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _token(value: str = "eyJ.payload.sig", lifetime: float = 3600) -> Token:
    return Token(
        value=value,
        token_type="Bearer",
        expires_at=T0 + timedelta(seconds=lifetime),
        obtained_at=T0,
        resource="https://crm.example",
    )


def _sink(**options: object) -> FileSink:
    return FileSink(
        FileSinkOptions(type="file", **options),
        SinkContext("crm", "file"),  # type: ignore[arg-type]
    )


def test_raw_is_the_token_alone(tmp_path: Path) -> None:
    path = tmp_path / "crm.token"
    asyncio.run(_sink(path=path).publish(_token()))
    assert path.read_bytes() == b"eyJ.payload.sig"


def test_json(tmp_path: Path) -> None:
    path = tmp_path / "crm.json"
    asyncio.run(_sink(path=path, format="json").publish(_token()))
    assert json.loads(path.read_text()) == {
        "access_token": "eyJ.payload.sig",
        "token_type": "Bearer",
        "expires_on": int((T0 + timedelta(hours=1)).timestamp()),
        "expires_at": "2026-03-01T13:00:00Z",
        "resource": "https://crm.example",
    }


def test_env_file(tmp_path: Path) -> None:
    path = tmp_path / "crm.env"
    asyncio.run(_sink(path=path, format="env", env_prefix="CRM_").publish(_token()))
    assert path.read_text().splitlines() == [
        "CRM_ACCESS_TOKEN='eyJ.payload.sig'",
        "CRM_TOKEN_TYPE='Bearer'",
        f"CRM_EXPIRES_ON={int((T0 + timedelta(hours=1)).timestamp())}",
    ]
    # What the README tells consumers to do with it:
    shell = subprocess.run(
        [
            "/bin/sh",
            "-c",
            'set -a; . "$1"; printf "%s|%s|%s" "$CRM_ACCESS_TOKEN" "$CRM_TOKEN_TYPE" "$CRM_EXPIRES_ON"',
            "sh",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shell.stdout == f"eyJ.payload.sig|Bearer|{int((T0 + timedelta(hours=1)).timestamp())}"


@pytest.mark.parametrize("file_format", ["raw", "env", "json"])
@pytest.mark.parametrize(
    ("value", "token_type"),
    [
        ("a b\nEVIL=1", "Bearer"),
        ("tok'en", "Bearer"),
        ("token", "Bearer$(touch pwned)"),
        ("token", "Bearer\nEVIL=1"),
    ],
)
def test_values_no_file_format_may_hold_are_refused(
    tmp_path: Path, file_format: str, value: str, token_type: str
) -> None:
    """A second lock: parsing already refuses such responses; a sink never writes them."""
    path = tmp_path / f"x.{file_format}"
    token = dataclasses.replace(_token(value), token_type=token_type)
    with pytest.raises(SinkError, match="token has characters a file sink never writes"):
        asyncio.run(_sink(path=path, format=file_format).publish(token))
    assert not path.exists()


def test_mode_is_reapplied_on_every_write(tmp_path: Path) -> None:
    path = tmp_path / "crm.token"
    sink = _sink(path=path, mode="0640")
    old_umask = os.umask(0o077)
    try:
        asyncio.run(sink.publish(_token()))
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        path.chmod(0o666)
        asyncio.run(sink.publish(_token("eyJ.second.sig")))
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(old_umask)


def test_default_mode_is_private(tmp_path: Path) -> None:
    path = tmp_path / "crm.token"
    asyncio.run(_sink(path=path).publish(_token()))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "crm.token"
    with pytest.raises(SinkError) as caught:
        asyncio.run(_sink(path=path).publish(_token()))
    assert str(caught.value) == (
        f"{path}: directory {path.parent} does not exist (create it, or set create_dirs: true)"
    )


def test_create_dirs(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "crm.token"
    asyncio.run(_sink(path=path, create_dirs=True).publish(_token()))
    assert path.read_bytes() == b"eyJ.payload.sig"


def test_os_errors_are_one_line_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "crm.token"
    path.mkdir()  # something that is not a file stands where the token goes
    with pytest.raises(SinkError) as caught:
        asyncio.run(_sink(path=path).publish(_token()))
    assert str(caught.value) == f"{path}: Is a directory"
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_withdraw_removes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "crm.token"
    sink = _sink(path=path)
    asyncio.run(sink.publish(_token()))
    asyncio.run(sink.withdraw())
    assert not path.exists()
    asyncio.run(sink.withdraw())  # already gone: fine


def test_stale_temp_files_are_swept_once_per_directory(tmp_path: Path) -> None:
    """Temp files left by killed writers go; a fresh one may be another writer's, so it stays."""
    path = tmp_path / "crm.token"
    stale = tmp_path / ".crm.token.tokend-tmp-abcdef"
    stale_other = tmp_path / ".graph.token.tokend-tmp-123456"
    fresh = tmp_path / ".crm.token.tokend-tmp-fedcba"
    unrelated = tmp_path / ".crm.token.tmp"
    for leftover in (stale, stale_other, fresh, unrelated):
        leftover.write_text("partial")
    long_ago = time.time() - 120
    for leftover in (stale, stale_other, unrelated):
        os.utime(leftover, (long_ago, long_ago))
    asyncio.run(_sink(path=path).publish(_token()))
    assert not stale.exists() and not stale_other.exists()
    assert fresh.exists() and unrelated.exists()
    os.utime(fresh, (long_ago, long_ago))
    asyncio.run(_sink(path=path).publish(_token()))
    assert fresh.exists()  # the directory was swept already by this process


def test_concurrent_reader_never_sees_partial_content(tmp_path: Path) -> None:
    """A reader polling the file while tokens are rewritten sees only complete tokens."""
    path = tmp_path / "crm.json"
    sink = _sink(path=path, format="json")
    values = [f"eyJ.{'x' * (i % 7 * 300)}{i}.sig" for i in range(300)]
    asyncio.run(sink.publish(_token(values[0])))
    seen: list[str] = []
    bad: list[bytes] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            data = path.read_bytes()
            try:
                seen.append(json.loads(data)["access_token"])
            except ValueError:
                bad.append(data)

    reader = threading.Thread(target=read)
    reader.start()

    async def write_all() -> None:
        for value in values[1:]:
            await sink.publish(_token(value))

    try:
        asyncio.run(write_all())
    finally:
        done.set()
        reader.join()
    assert bad == []
    assert len(seen) > 50
    assert set(seen) <= set(values)
    assert path.read_text().count(values[-1]) == 1
