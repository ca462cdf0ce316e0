"""Benchmark 4: scheduling accuracy. N tokens with staggered short lifetimes, refreshed for a
few minutes by the real scheduler (APScheduler + the runner) against the fast local provider;
lateness of each refresh (when it actually starts, after any queueing) against its plan.

    python bench/scheduling.py [--tokens N] [--minutes M] [--lifetimes MIN MAX]
    default: 10,000 tokens, 5 minutes, lifetimes 60-300 s (refreshed at half-life).
    Target: p99 <= 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
import time
from datetime import datetime
from pathlib import Path

from common import ENV, fast_provider, machine, percentile, write_config

from tokend.assemble import run_limit
from tokend.configfile import load_config
from tokend.daemon import Daemon
from tokend.engine import ApsScheduler
from tokend.engine.scheduler import Job


class TimedScheduler(ApsScheduler):
    """Records, for each token run, how late it started against the time it was planned for."""

    def __init__(self, concurrency: int) -> None:
        super().__init__(concurrency)
        self.lateness: list[float] = []
        self.first_runs: set[str] = set()

    def schedule(self, key: str, at: datetime, job: Job) -> None:
        if "/" in key:  # sink retries, Vault upkeep: not token refreshes
            super().schedule(key, at, job)
            return

        async def timed() -> None:
            if key in self.first_runs:  # first acquisitions at start are not refreshes
                self.lateness.append(time.time() - at.timestamp())
            self.first_runs.add(key)
            await job()

        super().schedule(key, at, timed)


async def run(config_path: Path, minutes: float) -> TimedScheduler:
    config = load_config(config_path).config
    scheduler = TimedScheduler(concurrency=run_limit(config))
    daemon = Daemon(config, custom_scheduler=scheduler)
    scheduler.start()
    await daemon.engine.start()
    await asyncio.sleep(minutes * 60)  # the benchmark observes; nothing here waits for a token
    await scheduler.stop(10)
    await daemon.engine.stop()
    await daemon.client.aclose()
    return scheduler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=10_000)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--lifetimes", type=int, nargs=2, default=[60, 300])
    args = parser.parse_args()
    print(f"machine: {machine()}")
    os.environ.update(ENV)
    logging.basicConfig(level=logging.WARNING)
    low, high = args.lifetimes
    lifetimes = [low + (high - low) * i // 20 for i in range(21)]
    with fast_provider() as provider, tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        out.mkdir()
        config = write_config(
            Path(tmp) / "scheduling.yaml",
            provider,
            args.tokens,
            out,
            lifetimes=lifetimes,
        )
        text = config.read_text().replace("startup_spread: 0", f"startup_spread: {low}s")
        config.write_text(text)
        scheduler = asyncio.run(run(config, args.minutes))
    late = scheduler.lateness
    if not late:
        raise SystemExit("no refresh happened: run longer")
    print(
        f"{args.tokens} tokens, lifetimes {low}-{high} s, {args.minutes:g} min: {len(late)} "
        f"refreshes ({len(late) / (args.minutes * 60):.0f}/s); lateness p50 "
        f"{percentile(late, 0.5) * 1000:.1f} ms  p99 {percentile(late, 0.99) * 1000:.1f} ms  "
        f"max {max(late) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
