"""Short garbage-collector pauses, and memory handed back, with many tokens.

CPython's full collection walks every object the collector tracks, with the event loop stopped.
At 100,000 tokens that is about 1.8 million objects (the config, jobs, sinks, tokens) and over
a second, during which every refresh that comes due waits (bench/RESULTS.md, section 7). Those
objects live as long as the config does, so once start-up has settled they are frozen
(`gc.freeze()`): later collections walk only what was made since. Reference counting still frees
frozen objects that are dropped; only reference cycles among them would wait, so a reload that
replaced tokens thaws, collects and freezes again (one full collection: about a second at
100,000 tokens, once per such reload; an unchanged reload replaces nothing and skips it).

The C allocator (glibc's malloc) keeps what is freed for reuse rather than returning it, so a
daemon's resident memory creeps up with use: at 100,000 tokens, 299 MB once settled and 335 MB
after ten minutes of refreshes (bench/RESULTS.md, section 7). Part of it is the buffers of a
reload, read in a worker thread whose own arena keeps them (5.5 MB at 20,000 tokens); the rest,
holes the refreshes leave between tokens that live on. `release_free_memory()` hands every whole
free page back (`malloc_trim`), once settled, after each reload and every `TRIM_INTERVAL`.
"""

from __future__ import annotations

import functools
import gc
import logging
import time
from collections.abc import Callable
from datetime import timedelta

from tokend.clock import Clock, Scheduler

log = logging.getLogger("tokend")

TRIM_INTERVAL = timedelta(minutes=10)
TRIM_KEY = "heap/trim"


def freeze_long_lived() -> None:
    """Collect what is garbage now, then keep every surviving object out of later collections."""
    started = time.perf_counter()
    gc.unfreeze()  # objects frozen before may have become garbage since: collect them too
    gc.collect()
    gc.freeze()
    log.debug(
        "garbage collector: %d objects frozen in %.2fs",
        gc.get_freeze_count(),
        time.perf_counter() - started,
    )


def keep_releasing_free_memory(scheduler: Scheduler, clock: Clock) -> None:
    """Release free memory now, and again every `TRIM_INTERVAL` (each ~0.1 ms in a synthetic
    heap the size of 100,000 tokens')."""

    async def again() -> None:
        keep_releasing_free_memory(scheduler, clock)

    release_free_memory()
    scheduler.schedule(TRIM_KEY, clock.now() + TRIM_INTERVAL, again)


def release_free_memory() -> None:
    """Hand the C allocator's free pages back to the system. A no-op where the C library has no
    `malloc_trim` (musl, as in Alpine images; macOS)."""
    trim = _malloc_trim()
    if trim is None:
        return
    started = time.perf_counter()
    trim(0)
    log.debug("free memory handed back in %.3fs", time.perf_counter() - started)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    import ctypes  # noqa: PLC0415 - once settled, not on the way to the first token

    return getattr(ctypes.CDLL(None), "malloc_trim", None)
