"""A small run of every benchmark (N=50, short windows), so they cannot rot. Figures are not
judged here (never timing thresholds in tests): each must run, exit 0 and print its figures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def bench(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=BENCH,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("machine: ")
    return result.stdout


@pytest.mark.parametrize(
    ("script", "args", "figures"),
    [
        (
            "once.py",
            ["50", "--runs", "1"],
            r"N=\s+50\s+wall: tokend\s+[\d.]+s\s+limit\s+[\d.]+s\s+ratio [\d.]+",
        ),
        (
            "exchange.py",
            ["--requests", "50", "--rounds", "1"],
            r"tokend: [\d,]+ requests/s, [\d,]+ us CPU per request[\s\S]*tokend/httpx2 CPU",
        ),
        (
            "footprint.py",
            ["50", "--idle", "1"],
            r"N=\s+50\s+settled in\s+[\d.]+s\s+RSS\s+[\d.]+ MB",
        ),
        (
            "footprint.py",
            ["50", "--idle", "1", "--dirs", "3", "--allocator"],
            r"N=\s+50\s+settled in[^\n]+\n\s+pymalloc: [\d.]+ MB of arenas: [\d.]+ MB in objects, "
            r"[\d.]+ MB free blocks  \|  malloc: [\d.]+ MB from the system, [\d.]+ MB in use",
        ),
        (
            "footprint.py",
            ["50", "--idle", "1", "--systemd"],
            r"N=\s+50\s+settled in[^\n]+\n\s+systemd: \d+ messages before READY=1 \(\d+ extending "
            r"the start timeout\), \d+ over the idle window",
        ),
        (
            "startup_ab.py",
            [str(BENCH.parent), "--pairs", "1"],
            r"new/old wall, median of 1 pairs: [\d.]+",
        ),
        (
            "startup_ab.py",
            [str(BENCH.parent), "--pairs", "1", "--command", "check"],
            r"new: check to exit median [\d.]+s wall, [\d.]+s CPU\nnew/old wall",
        ),
        (
            "startup.py",
            ["--runs", "2"],
            r"first token published \(run\): median [\d.]+s[\s\S]*"
            r"tokend's share of check: imports [\d.]+ ms \(making dataclasses [\d.]+ ms, "
            r"completing pydantic models [\d.]+ ms\), loading and checking [\d.]+ ms"
            r"[\s\S]*imports of status: [\d.]+s",
        ),
        (
            "scheduling.py",
            ["--tokens", "50", "--minutes", "0.1", "--lifetimes", "2", "4"],
            r"50 tokens.*lateness p50 [\d.]+ ms\s+p99 [\d.]+ ms",
        ),
        (
            "scale.py",
            ["--tokens", "200", "--window", "2", "--idle", "1", "--rate", "100", "--lead", "6"],
            r"reload \(unchanged\): [\d.]+s to 'reloaded:'.*\n(.*\n)*refreshes: \d+ in 2s.*"
            r"lateness p50 [\d.]+ ms\s+p99 [\d.]+ ms[\s\S]*"
            r"after the refresh phase: RSS [\d.]+ MB \(peak [\d.]+ MB\)\n"
            r"/status: [\d.]+s median of 3, [\d.]+ MB; /healthz meanwhile: slowest \d+ ms of \d+;"
            r".*\n/status\?tokens=problems: [\d.]+s .*\n/metrics per_token=all: .*RSS after [\d.]+ MB",
        ),
        (
            "consumer_read.py",
            ["--reads", "1000", "--race-seconds", "0.5"],
            r"race: \d+ reads during \d+ atomic rewrites: 0 partial",
        ),
        (
            "endpoint.py",
            ["--runs", "1", "--seconds", "0.5", "--threads", "2", "--client-processes", "1"],
            r"tokend/flask: throughput [\d.]+x, p99 [\d.]+x",
        ),
    ],
)
def test_benchmark_runs(script: str, args: list[str], figures: str) -> None:
    assert re.search(figures, bench(script, *args)), script


def test_endpoint_benchmark_with_wrk() -> None:
    """The server-bound variant: Debian's wrk as the load generator."""
    found = subprocess.run(
        [str(BENCH.parent / "scripts" / "wrk")], capture_output=True, text=True, check=False
    )
    if not found.stdout.strip():
        if os.environ.get("CI") == "true":
            pytest.fail(f"wrk missing under CI: {found.stderr.strip()}")
        pytest.skip(found.stderr.strip() or "needs Debian's wrk: apt-get install wrk")
    args = ["--runs", "1", "--seconds", "1", "--threads", "2", "--load-with", "wrk"]
    out = bench("endpoint.py", *args)
    assert re.search(r"wrk, 2 keep-alive connections on 2 threads", out), out
    assert re.search(r"tokend\s+\d+ req/s\s+p50\s+[\d.]+ ms\s+p99\s+[\d.]+ ms", out), out
    assert re.search(r"tokend/flask: throughput [\d.]+x, p99 [\d.]+x", out), out
