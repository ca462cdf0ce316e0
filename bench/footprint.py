"""Benchmark 2: footprint of `tokend run` with N one-hour tokens, after start-up has settled.

Start-up is settled when /readyz says every token is published. Then: resident memory now and at
its peak (VmRSS, VmHWM), and CPU used over an idle window (no token is due for ~45 minutes, so an
idle tokend should sleep: targets are <= 100 MB at 10,000 tokens and <= 1 % of one core).

    python bench/footprint.py [N ...] [--idle SECONDS]       default: 1000 10000, 60 s
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import httpx2
from common import ENV, TOKEND, fast_provider, free_port, machine, process_cpu, write_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("counts", nargs="*", type=int, default=[1000, 10000])
    parser.add_argument("--idle", type=float, default=60.0)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with fast_provider() as provider, tempfile.TemporaryDirectory() as tmp:
        for count in args.counts:
            measure(provider, Path(tmp), count, args.idle)


def measure(provider: object, tmp: Path, count: int, idle: float) -> None:
    port = free_port()
    out = tmp / f"out{count}"
    out.mkdir()
    config = write_config(
        tmp / f"footprint{count}.yaml",
        provider,
        count,
        out,
        listen=f"127.0.0.1:{port}",  # type: ignore[arg-type]
    )
    started = time.perf_counter()
    process = subprocess.Popen(
        [TOKEND, "--log-level", "warning", "run", "-c", str(config)],
        env={**__import__("os").environ, **ENV},
        stderr=subprocess.DEVNULL,
    )
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


def _memory_mb(pid: int) -> tuple[float, float]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


if __name__ == "__main__":
    main()
