"""Benchmark 2: footprint of `tokend run` with N one-hour tokens, after start-up has settled.

Start-up is settled when /readyz says every token is published. Then: resident memory now and at
its peak (VmRSS, VmHWM), and CPU used over an idle window (no token is due for ~45 minutes, so an
idle tokend should sleep: targets are <= 100 MB at 10,000 tokens and <= 1 % of one core).

    python bench/footprint.py [N ...] [--idle SECONDS] [--dirs D] [--allocator]
        default: 1000 10000, 60 s, every file in one directory

`--dirs D` spreads the token files over D directories (as bench/scale.py does). `--allocator`
also says where the memory is, as the settled daemon's allocators see it: Python's small-object
allocator (pymalloc: memory in its arenas, in live objects, and free inside them) and glibc's
malloc (objects over 512 bytes, such as the tokens themselves).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2
from common import (
    ENV,
    PYTHON,
    TOKEND,
    Provider,
    fast_provider,
    free_port,
    machine,
    process_cpu,
    write_config,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("counts", nargs="*", type=int, default=[1000, 10000])
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--dirs", type=int, default=0)
    parser.add_argument("--allocator", action="store_true")
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)  # the daemon process
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve[0]), Path(args.serve[1]))
        return
    print(f"machine: {machine()}")
    with fast_provider() as provider, tempfile.TemporaryDirectory() as tmp:
        for count in args.counts:
            measure(provider, Path(tmp), count, args)


def measure(provider: Provider, tmp: Path, count: int, args: argparse.Namespace) -> None:
    port, idle = free_port(), args.idle
    out = tmp / f"out{count}"
    out.mkdir()
    config = write_config(
        tmp / f"footprint{count}.yaml",
        provider,
        count,
        out,
        listen=f"127.0.0.1:{port}",
        dirs=args.dirs,
    )
    stats = tmp / f"allocator{count}.txt"
    command = (
        [PYTHON, __file__, "--serve", str(config), str(stats)]
        if args.allocator
        else [TOKEND, "--log-level", "warning", "run", "-c", str(config)]
    )
    started = time.perf_counter()
    process = subprocess.Popen(command, env={**os.environ, **ENV}, stderr=subprocess.DEVNULL)
    try:
        _wait_ready(port, process, timeout=max(60.0, count / 50))
        settled = time.perf_counter() - started
        cpu_before = process_cpu(process.pid)
        time.sleep(idle)  # the benchmark observes an idle daemon; nothing here is waited for
        idle_cpu = process_cpu(process.pid) - cpu_before
        rss, peak = _memory_mb(process.pid)
        print(
            f"N={count:>6}  settled in {settled:5.1f}s  RSS {rss:5.1f} MB (peak {peak:5.1f} MB)  "
            f"idle CPU {idle_cpu / idle:6.2%} of one core over {idle:.0f}s "
            f"({idle_cpu * 1000:.0f} ms)"
        )
        if args.allocator:
            process.send_signal(signal.SIGUSR1)
            print(_allocators(_wait_for(stats, process)))
    finally:
        process.terminate()
        process.wait(30)


def _wait_ready(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"tokend exited with status {process.returncode}")
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"tokend was not ready within {timeout:.0f}s")


def serve(config: Path, stats: Path) -> None:
    """`tokend run -c config` in this process; on SIGUSR1, both allocators' statistics (which
    they print to stderr) are written to `stats`."""

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

    signal.signal(signal.SIGUSR1, dump)
    from tokend.cli import main as tokend_main

    tokend_main(["--log-level", "warning", "run", "-c", str(config)])


def _wait_for(path: Path, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 60
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the daemon wrote no allocator statistics")
        time.sleep(0.1)
    return path.read_text()


def _allocators(text: str) -> str:
    """One line from the two allocators' statistics."""

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


def _memory_mb(pid: int) -> tuple[float, float]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


if __name__ == "__main__":
    main()
