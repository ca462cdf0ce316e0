"""`tokend.heap`: objects alive when start-up settles are kept out of later garbage collections
(short pauses at 100,000 tokens); garbage is collected before freezing, and what became garbage
while frozen is collected by the next freeze (a reload that replaced tokens)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from tokend.heap import freeze_long_lived


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
