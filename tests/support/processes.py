"""Running tokend as a real process, the way users and init systems do."""

from __future__ import annotations

import functools
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

TOKEND = str(Path(sys.executable).with_name("tokend"))


def tokend(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    memory_limit: int | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run tokend to its end. `memory_limit` (bytes of address space) makes a tokend that would
    read without end fail with a MemoryError instead of taking the test machine's memory."""
    limit = None if memory_limit is None else functools.partial(_limit_memory, memory_limit)
    return subprocess.run(
        [TOKEND, *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        preexec_fn=limit,
    )


def _limit_memory(size: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (size, size))


def start_tokend(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    log: Path | None = None,
) -> subprocess.Popen[str]:
    """Start tokend; its stderr goes to `log` if given (readable while it runs), else a pipe."""
    with log.open("w") if log else nullcontext(subprocess.PIPE) as stderr:
        return subprocess.Popen(
            [TOKEND, *args],
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=cwd,
        )


def wait_for(condition: Callable[[], T | None], timeout: float = 20, what: str = "condition") -> T:
    """Poll `condition` until it returns something truthy: for events in another process.
    (Waiting on an event with a deadline, not sleeping for time to pass.)"""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
