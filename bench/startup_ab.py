"""Start-up, old code against new: `tokend run` (or `once`) from two checkouts in alternation,
timed from `Popen` to the token file appearing, with tokend's CPU time at that moment (`check`:
to its exit); the median of each and of the pair-by-pair ratios (pairing cancels a machine's
drift).

    python bench/startup_ab.py OLD_CHECKOUT [NEW_CHECKOUT] [--pairs N] [--command run|once|check]

Both run on this venv's interpreter with `PYTHONPATH=<checkout>`, from a neutral directory
(`python -m` inside a checkout would import that checkout whatever `PYTHONPATH` says).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import BENCH, ENV, PYTHON, fast_provider, machine, process_cpu
from startup import one_token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path, nargs="?", default=BENCH.parent)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--command", choices=["run", "once", "check"], default="run")
    args = parser.parse_args()
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}")
    with fast_provider() as provider, tempfile.TemporaryDirectory() as tmp:
        config, token, _ = one_token(provider, Path(tmp))
        runs: dict[str, list[tuple[float, float]]] = {"old": [], "new": []}
        for _ in range(args.pairs):
            for name, checkout in (("old", args.old), ("new", args.new)):
                timed = to_exit if args.command == "check" else first_token
                runs[name].append(timed(checkout, args.command, config, token))
    for name, figures in runs.items():
        wall = statistics.median(w for w, _ in figures)
        cpu = statistics.median(c for _, c in figures)
        until = "to exit" if args.command == "check" else "first token"
        print(f"{name}: {args.command} {until} median {wall:.3f}s wall, {cpu:.3f}s CPU")
    ratios = [new[0] / old[0] for old, new in zip(runs["old"], runs["new"], strict=True)]
    print(f"new/old wall, median of {args.pairs} pairs: {statistics.median(ratios):.3f}")


def first_token(checkout: Path, command: str, config: Path, token: Path) -> tuple[float, float]:
    token.unlink(missing_ok=True)
    env, argv = _command(checkout, command, config)
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, cwd=tempfile.gettempdir(), stderr=subprocess.DEVNULL)
    try:
        while not token.exists():  # a benchmark's tight poll
            if process.poll() is not None and not token.exists():
                raise SystemExit(f"tokend from {checkout} exited with {process.returncode}")
            time.sleep(0.0005)
        return time.perf_counter() - started, process_cpu(process.pid)
    finally:
        process.kill()
        process.wait(30)


def to_exit(checkout: Path, command: str, config: Path, _token: Path) -> tuple[float, float]:
    """Wall and CPU seconds of `tokend COMMAND` from start to exit (status 0 required)."""
    env, argv = _command(checkout, command, config)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, env=env, cwd=tempfile.gettempdir(), capture_output=True, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def _command(checkout: Path, command: str, config: Path) -> tuple[dict[str, str], list[str]]:
    env = {**os.environ, **ENV, "PYTHONPATH": str(checkout.resolve())}
    return env, [PYTHON, "-m", "tokend", "--log-level", "warning", command, "-c", str(config)]


if __name__ == "__main__":
    main()
