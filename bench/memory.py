"""Where a daemon's memory is: its resident set from /proc, and both allocators' statistics,
written by the daemon itself on a signal (Python's small-object allocator, pymalloc: its arenas,
the live objects in them and the free blocks between; glibc's malloc: objects over 512 bytes,
such as the tokens themselves)."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ALLOCATOR_SIGNAL = signal.SIGUSR2


def memory_mb(pid: int) -> tuple[float, float]:
    """VmRSS and VmHWM (its peak) of process `pid`, in MB (MiB)."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def report_allocators_on_signal(stats: Path) -> None:
    """In the daemon: on `ALLOCATOR_SIGNAL`, write both allocators' statistics (which they
    print to stderr) to `stats`."""

    def dump(*_: object) -> None:
        partial = stats.with_suffix(".part")
        saved = os.dup(2)
        try:
            with partial.open("w") as file:
                os.dup2(file.fileno(), 2)
                sys._debugmallocstats()
                ctypes.CDLL("libc.so.6").malloc_stats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        partial.rename(stats)

    signal.signal(ALLOCATOR_SIGNAL, dump)


def allocators(stats: Path, process: subprocess.Popen[bytes]) -> str:
    """Ask the daemon for its allocators' statistics: one line of what they say."""
    stats.unlink(missing_ok=True)
    process.send_signal(ALLOCATOR_SIGNAL)
    text = wait_for_file(stats, process).decode()

    def megabytes(pattern: str) -> float:
        found = re.search(pattern, text)
        return int(found.group(1).replace(",", "")) / 2**20 if found else float("nan")

    arenas = megabytes(r"arenas \* \d+ bytes/arena\s*=\s*([\d,]+)")
    in_objects = megabytes(r"bytes in allocated blocks\s*=\s*([\d,]+)")
    free = megabytes(r"bytes in available blocks\s*=\s*([\d,]+)")
    total = r"Total \(incl. mmap\):\s*system bytes\s*=\s*"
    system = megabytes(total + r"(\d+)")
    in_use = megabytes(total + r"\d+\s*in use bytes\s*=\s*(\d+)")
    return (
        f"         pymalloc: {arenas:.1f} MB of arenas: {in_objects:.1f} MB in objects, "
        f"{free:.1f} MB free blocks  |  malloc: {system:.1f} MB from the system, "
        f"{in_use:.1f} MB in use"
    )


def wait_for_file(path: Path, process: subprocess.Popen[bytes], timeout: float = 60) -> bytes:
    """The contents of `path` once the daemon has written it."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise SystemExit(f"tokend exited with status {process.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"the daemon wrote no {path.name} within {timeout:.0f}s")
        time.sleep(0.1)  # polling another process for a file
    return path.read_bytes()
