"""Where blocking file work runs for code on the event loop: a few dedicated writer threads.

The calls on one object (the refresh tokens a sign-in keeps), or into one directory (file
sinks), always go to the same thread, so they land in the order they were made. Each write
(`tokend.files`) is mostly waiting in fsync, but it takes the GIL back after each of its ten
syscalls, and a busy event loop holds the GIL for the switch interval (5 ms) before handing it
over: one writer beside a busy loop managed 41-57 writes a second (100,000 tokens took 30
minutes to reach their files), 4 writers over 100 directories several times more
(bench/RESULTS.md, section 7). The default executor's many threads cost ~40 % more CPU than one
(2000 file-sink writes during `tokend once`); 4 writers fsyncing one directory at once cost ~25 %
more than one, and a 1 ms switch interval ~15 % more again (10,000 files in one directory;
section 1): hence a lane per directory, and Python's own switch interval.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

WRITERS = 4
_WRITERS = [
    ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tokend-files{index}")
    for index in range(WRITERS)
]
_T = TypeVar("_T")


async def in_writer_thread(
    function: Callable[..., _T], *args: object, lane: Hashable = None, **kwargs: object
) -> _T:
    """Run blocking file work on a writer thread without blocking the event loop. Work on one
    `lane` runs on one thread, in order; the default lane is the object whose method `function`
    is (its calls land in the order they were made), or the first thread for a plain function.
    A file sink's lane is its directory: writes into one directory then fsync it one after the
    other, since concurrent ones cost more CPU than they save (bench/RESULTS.md, section 1)."""
    if lane is None:
        lane = getattr(function, "__self__", None)
    writer = _WRITERS[_spread(hash(lane)) if lane is not None else 0]
    return await asyncio.get_running_loop().run_in_executor(
        writer, partial(function, *args, **kwargs)
    )


def _spread(key: int) -> int:
    """A writer for a lane's hash. Fibonacci hashing mixes every bit in: an object's hash comes
    from its address, and addresses are spaced alike, so a few low bits would pick few writers."""
    return (key * 0x9E3779B97F4A7C15 >> 40) % WRITERS
