"""File writes run on a few writer threads: the calls on one object always on the same one (so
a sink's writes land in the order they were made), different objects spread over them; file
sinks by directory."""

from __future__ import annotations

import asyncio
import os
import threading
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tokend import files, writers
from tokend.sinks import SinkContext
from tokend.sinks.file import FileSink, FileSinkOptions
from tokend.token import Token


class Recorder:
    def __init__(self) -> None:
        self.threads: list[str] = []

    def write(self, index: int) -> int:
        self.threads.append(threading.current_thread().name)
        return index


def test_calls_on_one_object_stay_on_one_thread_in_order() -> None:
    async def run() -> tuple[list[Recorder], list[int]]:
        recorders = [Recorder() for _ in range(32)]
        order = [await writers.in_writer_thread(recorders[0].write, index) for index in range(5)]
        await asyncio.gather(*(writers.in_writer_thread(r.write, 0) for r in recorders[1:]))
        return recorders, order

    recorders, order = asyncio.run(run())
    assert order == [0, 1, 2, 3, 4]
    assert len(set(recorders[0].threads)) == 1
    assert all(name.startswith("tokend-files") for r in recorders for name in r.threads)
    assert len({r.threads[0] for r in recorders}) > 1  # 32 objects: not all on one thread


def test_arguments_reach_the_function_and_its_result_comes_back() -> None:
    def where(a: int, *, b: int) -> tuple[str, int]:
        return threading.current_thread().name, a + b

    name, total = asyncio.run(writers.in_writer_thread(where, 1, b=2))
    assert name.startswith("tokend-files")
    assert total == 3


def test_a_plain_function_runs_on_the_first_writer_and_a_lane_on_its_own() -> None:
    def where() -> str:
        return threading.current_thread().name

    async def run() -> tuple[set[str], set[str]]:
        plain = {await writers.in_writer_thread(where) for _ in range(3)}
        lanes = {await writers.in_writer_thread(where, lane=f"d{index}") for index in range(32)}
        return plain, lanes

    plain, lanes = asyncio.run(run())
    assert plain == {"tokend-files0_0"}
    assert len(lanes) > 1


def test_file_sinks_write_into_one_directory_from_one_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Concurrent fsyncs of one directory cost CPU and save no time (bench/RESULTS.md, section
    1): each directory is a lane of its own, and different directories still spread."""
    threads: dict[str, set[str]] = defaultdict(set)
    write_atomic = files.write_atomic

    def recording(path: str | Path, data: bytes, **options: Any) -> None:
        threads[os.path.dirname(path)].add(threading.current_thread().name)
        write_atomic(path, data, **options)

    monkeypatch.setattr(files, "write_atomic", recording)
    directories = [tmp_path / f"d{index}" for index in range(16)]
    sinks = []
    for directory in directories:
        directory.mkdir()
        sinks += [_sink(directory / f"t{index}.token") for index in range(8)]

    async def publish_all() -> None:
        await asyncio.gather(*(sink.publish(TOKEN) for sink in sinks))

    asyncio.run(publish_all())
    assert sorted(threads) == sorted(str(directory) for directory in directories)
    assert all(len(names) == 1 for names in threads.values())
    assert len({name for names in threads.values() for name in names}) > 1
    assert all((directory / "t7.token").read_text() == TOKEN.value for directory in directories)


def test_removals_run_in_their_directorys_lane_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A withdrawal lands in order with the other writes into its directory."""
    threads: dict[str, set[str]] = defaultdict(set)
    remove = files.remove

    def recording(path: str | Path) -> None:
        threads[os.path.dirname(path)].add(threading.current_thread().name)
        remove(path)

    monkeypatch.setattr(files, "remove", recording)
    directories = [tmp_path / f"d{index}" for index in range(16)]
    sinks = []
    for directory in directories:
        directory.mkdir()
        sinks += [_sink(directory / f"t{index}.token") for index in range(8)]

    async def publish_and_withdraw() -> None:
        await asyncio.gather(*(sink.publish(TOKEN) for sink in sinks))
        await asyncio.gather(*(sink.withdraw() for sink in sinks))

    asyncio.run(publish_and_withdraw())
    assert sorted(threads) == sorted(str(directory) for directory in directories)
    assert all(len(names) == 1 for names in threads.values())
    assert not any((directory / "t7.token").exists() for directory in directories)


TOKEN = Token(
    value="eyJ.payload.sig",
    token_type="Bearer",
    expires_at=datetime(2026, 3, 1, 13, tzinfo=UTC),
    obtained_at=datetime(2026, 3, 1, 12, tzinfo=UTC),
    resource="https://crm.example",
)


def _sink(path: Path) -> FileSink:
    return FileSink(FileSinkOptions(type="file", path=path), SinkContext("crm", "file"))  # type: ignore[arg-type]
