"""Benchmark 3: start-up. From `tokend run` being started to its first token published (the
file sink's file appearing), against the fast local provider; import time reported apart.

    python bench/startup.py [--runs R]          default 10 runs; target: first token <= 1.5 s
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from common import (
    ENV,
    PYTHON,
    TOKEND,
    fast_provider,
    free_port,
    machine,
    median,
    percentile,
    write_config,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with fast_provider() as provider, tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        out.mkdir()
        listen = f"127.0.0.1:{free_port()}"
        config = write_config(Path(tmp) / "startup.yaml", provider, 1, out, listen=listen)
        token_file = out / "t0.token"
        times = [first_token(config, token_file) for _ in range(args.runs)]
    imports = import_seconds()
    interpreter = median([_wall([PYTHON, "-c", "pass"]) for _ in range(5)])
    print(
        f"first token published: median {median(times):.3f}s  p90 {percentile(times, 0.9):.3f}s  "
        f"max {max(times):.3f}s over {len(times)} runs"
    )
    print(
        f"of which: interpreter start {interpreter:.3f}s, tokend imports {imports:.3f}s "
        f"(python -X importtime, cumulative for tokend.cli + tokend.daemon)"
    )


def first_token(config: Path, token_file: Path) -> float:
    token_file.unlink(missing_ok=True)
    started = time.perf_counter()
    process = subprocess.Popen(
        [TOKEND, "--log-level", "warning", "run", "-c", str(config)],
        env={**os.environ, **ENV},
        stderr=subprocess.DEVNULL,
    )
    try:
        while not token_file.exists():  # a benchmark's tight poll: 1 ms resolution
            if process.poll() is not None:
                raise SystemExit(f"tokend exited with status {process.returncode}")
            time.sleep(0.001)
        return time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(30)


def import_seconds() -> float:
    """Cumulative import time of what `tokend run` imports, from `python -X importtime`."""
    result = subprocess.run(
        [PYTHON, "-X", "importtime", "-c", "import tokend.cli, tokend.daemon"],
        capture_output=True,
        text=True,
        check=True,
    )
    total = 0
    for line in result.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S+)$", line)
        if match and match.group(2) in ("tokend.cli", "tokend.daemon"):
            total += int(match.group(1))
    return total / 1e6


def _wall(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
