"""Calling code that must not block on a FIFO, without the test hanging when it does."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")


def within(seconds: float, call: Callable[[], T], fifo: Path) -> T:
    """`call()`, failing the test if it blocks (on opening `fifo`, when it is one): a blocked
    open is released by opening the FIFO for writing, so the test fails rather than hangs."""
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(call)
        try:
            return future.result(timeout=seconds)
        except TimeoutError:
            while not future.done():  # each blocked open returns once a writer comes
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                time.sleep(0.01)
            pytest.fail(f"reading {fifo} blocked")
