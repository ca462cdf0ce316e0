"""`tokend.heap`: objects alive when start-up settles are kept out of later garbage collections
(short pauses at 100,000 tokens); garbage is collected before freezing, and what became garbage
while frozen is collected by the next freeze (a reload that replaced tokens). Memory the C
allocator holds free goes back to the system, then again every `TRIM_INTERVAL`."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clock import FakeClock
from tests.support.virtual import VirtualScheduler
from tokend import heap
from tokend.heap import TRIM_INTERVAL, TRIM_KEY, freeze_long_lived, keep_releasing_free_memory


class Node:
    other: Node


def cycle() -> tuple[Node, weakref.ref[Node]]:
    first, second = Node(), Node()
    first.other, second.other = second, first
    return first, weakref.ref(first)


@pytest.fixture(autouse=True)
def manual_collection() -> Iterator[None]:
    """Automatic collections off, so only the calls here collect anything."""
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.enable()


def test_garbage_is_collected_before_the_survivors_are_frozen() -> None:
    dead = cycle()[1]  # unreachable at once
    assert dead() is not None
    freeze_long_lived()
    assert dead() is None
    assert gc.get_freeze_count() > 0


def test_what_became_garbage_while_frozen_is_collected_by_the_next_freeze() -> None:
    holder = [cycle()[0]]
    kept = weakref.ref(holder[0])
    freeze_long_lived()
    holder.clear()  # the cycle is garbage now, but frozen
    gc.collect()
    assert kept() is not None  # a plain collection does not look at frozen objects
    freeze_long_lived()
    assert kept() is None


def resident_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


@pytest.mark.skipif(
    heap._malloc_trim() is None, reason="this C library has no malloc_trim (glibc has)"
)
def test_freed_memory_goes_back_to_the_system() -> None:
    """Objects over 512 bytes come from the C allocator (as tokens do). Every 32nd is kept, so
    what is freed lies between live objects, where the allocator cannot shrink its heap."""
    blocks = [bytes(600) for _ in range(40_000)]  # ~24 MB
    kept = blocks[::32]
    del blocks
    before = resident_mb()
    heap.release_free_memory()
    assert before - resident_mb() > 8
    assert len(kept) == 1250  # alive throughout: what was freed lies between them


def test_without_malloc_trim_nothing_is_released(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(heap, "_malloc_trim", lambda: None)  # musl, macOS
    with caplog.at_level(logging.DEBUG, logger="tokend"):
        heap.release_free_memory()
    assert "free memory handed back" not in caplog.text


def test_free_memory_is_released_again_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[int] = []
    monkeypatch.setattr(heap, "_malloc_trim", lambda: trims.append)
    clock = FakeClock()
    scheduler = VirtualScheduler(clock)
    start = clock.now()
    keep_releasing_free_memory(scheduler, clock)
    assert trims == [0]  # at once
    asyncio.run(scheduler.run_until(start + 3.5 * TRIM_INTERVAL))
    assert trims == [0] * 4
    assert scheduler.runs == [(start + n * TRIM_INTERVAL, TRIM_KEY) for n in (1, 2, 3)]
