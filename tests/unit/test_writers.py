"""File writes run on a few writer threads: the calls on one object always on the same one (so
a sink's writes land in the order they were made), different objects spread over them."""

from __future__ import annotations

import asyncio
import sys
import threading

from tokend import files


class Recorder:
    def __init__(self) -> None:
        self.threads: list[str] = []

    def write(self, index: int) -> int:
        self.threads.append(threading.current_thread().name)
        return index


def test_calls_on_one_object_stay_on_one_thread_in_order() -> None:
    async def run() -> tuple[list[Recorder], list[int]]:
        recorders = [Recorder() for _ in range(32)]
        order = [await files.in_writer_thread(recorders[0].write, index) for index in range(5)]
        await asyncio.gather(*(files.in_writer_thread(r.write, 0) for r in recorders[1:]))
        return recorders, order

    recorders, order = asyncio.run(run())
    assert order == [0, 1, 2, 3, 4]
    assert len(set(recorders[0].threads)) == 1
    assert all(name.startswith("tokend-files") for r in recorders for name in r.threads)
    assert len({r.threads[0] for r in recorders}) > 1  # 32 objects: not all on one thread
    assert sys.getswitchinterval() <= files.SWITCH_INTERVAL
