"""Benchmark 5: what a consumer pays to read the token from the file sink, and proof that a
reader racing a writer never sees a partial file.

    python bench/consumer_read.py [--reads R] [--race-seconds S]      default 100000, 10 s
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from common import machine, percentile

from tokend import files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=100_000)
    parser.add_argument("--race-seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "crm.token"
        files.write_atomic(path, _token(0))
        timed_reads(path, args.reads)
        race(path, args.race_seconds)


def timed_reads(path: Path, count: int) -> None:
    """Per read: open, read, close, as `Path.read_text()` does."""
    samples = []
    for _ in range(count):
        started = time.perf_counter_ns()
        path.read_text()
        samples.append((time.perf_counter_ns() - started) / 1000)
    print(
        f"read_text of a {path.stat().st_size}-byte token: p50 {percentile(samples, 0.5):.1f} us"
        f"  p99 {percentile(samples, 0.99):.1f} us  max {max(samples):.1f} us  ({count} reads)"
    )


def race(path: Path, seconds: float) -> None:
    """One thread rewrites the file as tokend does (tokens of different lengths); another reads
    it in a loop. Every read must be one of the written tokens, whole."""
    written = {_token(n) for n in range(64)}
    stop = threading.Event()
    writes = 0

    def writer() -> None:
        nonlocal writes
        while not stop.is_set():
            files.write_atomic(path, _token(writes % 64))
            writes += 1

    thread = threading.Thread(target=writer)
    thread.start()
    reads = partial = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if path.read_bytes() not in written:
                partial += 1
            reads += 1
    finally:
        stop.set()
        thread.join()
    print(f"race: {reads} reads during {writes} atomic rewrites: {partial} partial or empty reads")
    if partial:
        raise SystemExit("a reader saw a partial file")


def _token(n: int) -> bytes:
    """A JWT-shaped token whose length varies with n (600 to 2,490 bytes)."""
    return b"eyJ" + b"x" * (600 + 30 * n) + b"." + str(n).encode() + b".sig"


if __name__ == "__main__":
    main()
