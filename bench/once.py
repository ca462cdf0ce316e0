"""Benchmark 1: overhead against the practical limit.

`tokend once` acquires and publishes N tokens from the fast local provider; `bench/limit.py`
makes the same requests with the same concurrency and writes the same files atomically. Both
run as separate processes in the same session, alternating, several times; medians reported.

    python bench/once.py [N ...] [--runs R]        default: 1000 10000, 5 runs
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from common import (
    BENCH,
    ENV,
    PYTHON,
    TOKEND,
    fast_provider,
    machine,
    median,
    run_measured,
    write_config,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("counts", nargs="*", type=int, default=[1000, 10000])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with fast_provider() as provider, tempfile.TemporaryDirectory() as tmp:
        for count in args.counts:
            out = Path(tmp) / f"out{count}"
            config = write_config(Path(tmp) / f"config{count}.yaml", provider, count, out)
            tokend, limit, provider_cpu = [], [], []
            for _ in range(args.runs):
                for runs, command in (
                    (
                        limit,
                        [
                            PYTHON,
                            str(BENCH / "limit.py"),
                            provider.token_url(1),
                            str(count),
                            str(out),
                        ],
                    ),
                    (tokend, [TOKEND, "--log-level", "warning", "once", "-c", str(config)]),
                ):
                    shutil.rmtree(out, ignore_errors=True)
                    out.mkdir()
                    before = provider.cpu_seconds()
                    run = run_measured(command, env=ENV)
                    if run.returncode != 0:
                        raise SystemExit(f"{command[0]} failed with status {run.returncode}")
                    written = sum(1 for _ in out.glob("t*.token"))
                    if written != count:
                        raise SystemExit(f"{command[0]} wrote {written} of {count} files")
                    runs.append(run)
                    provider_cpu.append((runs is tokend, provider.cpu_seconds() - before))
            report(count, tokend, limit, provider_cpu)


def report(count: int, tokend: list, limit: list, provider_cpu: list) -> None:  # type: ignore[type-arg]
    per_k = 1000 / count
    t_wall, l_wall = median([r.wall for r in tokend]), median([r.wall for r in limit])
    t_cpu, l_cpu = median([r.cpu for r in tokend]), median([r.cpu for r in limit])
    p_tokend = median([cpu for is_tokend, cpu in provider_cpu if is_tokend])
    p_limit = median([cpu for is_tokend, cpu in provider_cpu if not is_tokend])
    print(
        f"N={count:>6}  wall: tokend {t_wall:6.2f}s  limit {l_wall:6.2f}s"
        f"  ratio {t_wall / l_wall:4.2f}"
        f"  |  client CPU per 1000: tokend {t_cpu * per_k:5.2f}s  limit {l_cpu * per_k:5.2f}s"
        f"  ratio {t_cpu / l_cpu:4.2f}"
        f"  |  provider CPU share of wall: {p_tokend / t_wall:4.0%} (tokend run), "
        f"{p_limit / l_wall:4.0%} (limit run)"
        f"  |  peak RSS tokend {median([r.peak_rss_mb for r in tokend]):.0f} MB"
    )


if __name__ == "__main__":
    main()
