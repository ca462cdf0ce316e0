"""Shared pieces of the benchmarks: the fast provider process, child-process CPU accounting,
config generation, and a description of this machine."""

from __future__ import annotations

import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
PYTHON = sys.executable
TOKEND = str(Path(sys.executable).with_name("tokend"))


@dataclass(frozen=True)
class Provider:
    url: str
    pid: int

    def token_url(self, version: int = 1) -> str:
        return f"{self.url}/bench/oauth2/{'v2.0/' if version == 2 else ''}token"

    def cpu_seconds(self) -> float:
        return process_cpu(self.pid)


@contextmanager
def fast_provider(*options: str) -> Iterator[Provider]:
    """bench/fastidp.py on a free port; `options` as its command line takes them."""
    process = subprocess.Popen(
        [PYTHON, str(BENCH / "fastidp.py"), "0", *options], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"fastidp did not start: {line!r}")
        yield Provider(line.split()[1], process.pid)
    finally:
        process.terminate()
        process.wait(10)


def process_cpu(pid: int) -> float:
    """user + system CPU seconds of a running process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Run:
    wall: float
    cpu: float  # user + system seconds of the process (and its children)
    returncode: int
    peak_rss_mb: float


def run_measured(args: list[str], env: dict[str, str] | None = None) -> Run:
    """Run a command to completion; its wall time, CPU time and peak RSS."""
    started = time.perf_counter()
    process = subprocess.Popen(
        args, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0 and process.stderr:
        sys.stderr.write(process.stderr.read().decode()[-2000:])
    if process.stderr:
        process.stderr.close()
    return Run(wall, usage.ru_utime + usage.ru_stime, process.returncode, usage.ru_maxrss / 1024)


def write_config(
    path: Path,
    provider: Provider,
    count: int,
    out: Path,
    *,
    lifetimes: list[int] | None = None,
    listen: str | None = None,
    dirs: int = 0,
    top: dict[str, object] | None = None,
    **defaults: object,
) -> Path:
    """A tokend config with `count` Entra v1 tokens (file sinks in `out`, or spread over `dirs`
    directories under it), secret from env; `top`: more top-level keys."""

    def resource(index: int) -> str:
        life = f"/life-{lifetimes[index % len(lifetimes)]}" if lifetimes else ""
        return f"https://api{index}.bench{life}"

    def sink_path(index: int) -> Path:
        return out / (f"d{index % dirs}" if dirs else "") / f"t{index}.token"

    for index in range(dirs):
        (out / f"d{index}").mkdir(parents=True, exist_ok=True)

    document = {
        "identities": {
            "bench": {
                "tenant": "bench",
                "authority_host": provider.url,
                "allow_insecure_http": True,
                "client_id": "bench",
                "credential": {"type": "client_secret", "secret": {"env": "BENCH_SECRET"}},
            }
        },
        "tokens": {
            f"t{index}": {
                "identity": "bench",
                "resource": resource(index),
                "sinks": [{"type": "file", "path": str(sink_path(index))}],
            }
            for index in range(count)
        },
        "defaults": {"startup_spread": 0, **defaults},
        "listen": listen,
        **(top or {}),
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


ENV = {"BENCH_SECRET": "bench-secret"}


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory_gb:.0f} GiB, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
