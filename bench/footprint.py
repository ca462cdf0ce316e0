"""Benchmark 2: footprint of `tokend run` with N one-hour tokens, after start-up has settled.

Start-up is settled when /readyz says every token is published. Then: resident memory now and at
its peak (VmRSS, VmHWM), and CPU used over an idle window (no token is due for ~45 minutes, so an
idle tokend should sleep: targets are <= 100 MB at 10,000 tokens and <= 1 % of one core).

    python bench/footprint.py [N ...] [--idle SECONDS] [--dirs D] [--allocator] [--systemd]
        default: 1000 10000, 60 s, every file in one directory

`--dirs D` spreads the token files over D directories (as bench/scale.py does). `--allocator`
also says where the memory is, as the settled daemon's allocators see it: Python's small-object
allocator (pymalloc: memory in its arenas, in live objects, and free inside them) and glibc's
malloc (objects over 512 bytes, such as the tokens themselves). `--systemd` runs tokend as a
`Type=notify` unit would: the benchmark listens on `$NOTIFY_SOCKET` as systemd does, start-up is
settled at `READY=1` (not polled over HTTP), and the idle window includes tokend's STATUS updates.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
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
from memory import allocators, memory_mb, report_allocators_on_signal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("counts", nargs="*", type=int, default=[1000, 10000])
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--dirs", type=int, default=0)
    parser.add_argument("--allocator", action="store_true")
    parser.add_argument("--systemd", action="store_true")
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
    env = {**os.environ, **ENV}
    systemd = NotifySocket(tmp / f"notify{count}") if args.systemd else None
    if systemd:
        env["NOTIFY_SOCKET"] = str(systemd.path)
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    try:
        timeout = max(60.0, count / 50)
        if systemd:
            systemd.wait_ready(process, timeout)
        else:
            _wait_ready(port, process, timeout)
        settled = time.perf_counter() - started
        cpu_before = process_cpu(process.pid)
        said_before = len(systemd.received()) if systemd else 0
        time.sleep(idle)  # the benchmark observes an idle daemon; nothing here is waited for
        idle_cpu = process_cpu(process.pid) - cpu_before
        rss, peak = memory_mb(process.pid)
        print(
            f"N={count:>6}  settled in {settled:5.1f}s  RSS {rss:5.1f} MB (peak {peak:5.1f} MB)  "
            f"idle CPU {idle_cpu / idle:6.2%} of one core over {idle:.0f}s "
            f"({idle_cpu * 1000:.0f} ms)"
        )
        if systemd:
            print(systemd.summary(said_before))
        if args.allocator:
            print(allocators(stats, process))
    finally:
        process.terminate()
        process.wait(30)
        if systemd:
            systemd.close()


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


class NotifySocket:
    """The receiving end of `$NOTIFY_SOCKET`, as systemd listens: one datagram per message."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.setblocking(False)
        self._messages: list[str] = []

    def received(self) -> list[str]:
        while True:
            try:
                self._messages.append(self._socket.recv(65536).decode())
            except BlockingIOError:
                return self._messages

    def wait_ready(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._ready_at() is None:
            if process.poll() is not None:
                raise SystemExit(f"tokend exited with status {process.returncode}")
            if time.monotonic() > deadline:
                raise SystemExit(f"tokend sent no READY=1 within {timeout:.0f}s")
            time.sleep(0.2)

    def summary(self, idle_from: int) -> str:
        """What tokend told systemd while starting and while idle."""
        messages = self.received()
        starting = messages[: self._ready_at()]
        extended = sum("EXTEND_TIMEOUT_USEC=" in message for message in starting)
        return (
            f"         systemd: {len(starting)} messages before READY=1 ({extended} extending "
            f"the start timeout), {len(messages) - idle_from} over the idle window"
        )

    def _ready_at(self) -> int | None:
        """Which message said READY=1 first, if one has."""
        fields = (message.split("\n") for message in self.received())
        return next((i for i, said in enumerate(fields) if "READY=1" in said), None)

    def close(self) -> None:
        self._socket.close()


def serve(config: Path, stats: Path) -> None:
    """`tokend run -c config` in this process, reporting its allocators on a signal."""
    report_allocators_on_signal(stats)
    from tokend.cli import main as tokend_main

    tokend_main(["--log-level", "warning", "run", "-c", str(config)])


if __name__ == "__main__":
    main()
