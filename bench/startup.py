"""Benchmark 3: start-up. From `tokend run` being started to its first token published (the
file sink's file appearing), against the fast local provider; then the short commands people
run in scripts, init containers and `ExecStartPre=`, each start to exit; then what each one
spends importing, with its heaviest packages (`python -X importtime`). For scale, the floors:
the interpreter alone, and the libraries a command cannot do without (pydantic building and
validating one model, PyYAML; for `run`, also asyncio, httpx2 and APScheduler); and what
`tokend check` spends above its floor, with the dataclasses and pydantic models tokend makes.

    python bench/startup.py [--runs R]     default 10 runs of each
    targets: first token <= 0.3 s median; version, check, status <= 0.2 s
"""

from __future__ import annotations

import argparse
import collections
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
    Provider,
    fast_provider,
    free_port,
    machine,
    median,
    percentile,
    write_config,
)

FLOORS = {
    "interpreter start": "pass",
    # What any command that validates a YAML config with pydantic pays before its own code.
    "floor of check (yaml, one pydantic model validated)": (
        "import yaml, pydantic\nclass M(pydantic.BaseModel):\n    x: int\nM(x=1)"
    ),
    # ... and of a first token: the libraries `tokend run` needs to ask for one and plan the next.
    "floor of run (+ asyncio, httpx2, APScheduler)": (
        "import yaml, pydantic, asyncio, httpx2, apscheduler.schedulers.asyncio\n"
        "class M(pydantic.BaseModel):\n    x: int\nM(x=1)"
    ),
    # ... and what a start path without pydantic could reach at best (a config checked by
    # something else): the libraries a first token needs all the same.
    "floor of run without pydantic (yaml, asyncio, httpx2, APScheduler)": (
        "import yaml, asyncio, httpx2, apscheduler.schedulers.asyncio"
    ),
}
# tokend's own share of `tokend check`, in one process: the floor above first (so pydantic's and
# PyYAML's imports are not counted), then tokend's imports, with the time spent making dataclasses
# and completing pydantic models among them (both private hooks, timed by wrapping them), then
# loading the config and checking it. Prints milliseconds: imports, dataclasses, models, check.
SHARE = """
import dataclasses, sys, time
from pathlib import Path
import yaml, pydantic
class M(pydantic.BaseModel):
    x: int
M(x=1)
from pydantic._internal import _model_construction
spent = {"dataclasses": 0.0, "models": 0.0}
def timed(owner, name, key):
    original = getattr(owner, name)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[key] += time.perf_counter() - started
    setattr(owner, name, wrapper)
timed(dataclasses, "_process_class", "dataclasses")
timed(_model_construction, "complete_model_class", "models")
started = time.perf_counter()
import tokend.check, tokend.cli, tokend.configfile
imported = time.perf_counter()
tokend.check.preflight(tokend.configfile.load_config(Path(sys.argv[1])))
checked = time.perf_counter()
figures = (imported - started, spent["dataclasses"], spent["models"], checked - imported)
print(*(f"{seconds * 1000:.1f}" for seconds in figures))
"""
IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)$")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}")
    with fast_provider() as provider, tempfile.TemporaryDirectory() as tmp:
        config, token_file, listen = one_token(provider, Path(tmp))
        times = [first_token(config, token_file) for _ in range(args.runs)]
        report("first token published (run)", times)
        commands = {
            "version": ["version"],
            "check": ["check", "-c", str(config)],
            "once": ["once", "-c", str(config)],
        }
        for name, command in commands.items():
            report(name, [_wall([TOKEND, *command]) for _ in range(args.runs)])
        with running(config, token_file):
            status = ["status", "--url", f"http://{listen}"]
            report("status", [_wall([TOKEND, *status]) for _ in range(args.runs)])
            commands["status"] = status
        commands = {"run": ["run", "-c", str(config)], **commands}
        for name, code in FLOORS.items():
            print(f"{name}: {median([_wall([PYTHON, '-c', code]) for _ in range(5)]):.3f}s")
        print(share_of_check(config, args.runs))
        for name, command in commands.items():
            print(imports_of(name, command))


def one_token(provider: Provider, directory: Path) -> tuple[Path, Path, str]:
    """A config of one token, listener on: (the config, its token file, the listen address)."""
    out = directory / "out"
    out.mkdir()
    listen = f"127.0.0.1:{free_port()}"
    config = write_config(directory / "startup.yaml", provider, 1, out, listen=listen)
    return config, out / "t0.token", listen


def report(name: str, times: list[float]) -> None:
    print(
        f"{name}: median {median(times):.3f}s  p90 {percentile(times, 0.9):.3f}s  "
        f"max {max(times):.3f}s over {len(times)} runs"
    )


def first_token(config: Path, token_file: Path) -> float:
    token_file.unlink(missing_ok=True)
    started = time.perf_counter()
    with running(config, token_file):
        return time.perf_counter() - started


class running:
    """`tokend run` until its first token is published; stopped on leaving."""

    def __init__(self, config: Path, token_file: Path) -> None:
        self.config = config
        self.token_file = token_file

    def __enter__(self) -> None:
        self.token_file.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [TOKEND, "--log-level", "warning", "run", "-c", str(self.config)],
            env={**os.environ, **ENV},
            stderr=subprocess.DEVNULL,
        )
        while not self.token_file.exists():  # a benchmark's tight poll: 1 ms resolution
            if self.process.poll() is not None:
                raise SystemExit(f"tokend exited with status {self.process.returncode}")
            time.sleep(0.001)

    def __exit__(self, *_: object) -> None:
        self.process.terminate()
        self.process.wait(30)


def share_of_check(config: Path, runs: int) -> str:
    """What `tokend check` spends on top of its floor (`SHARE`), median of `runs` processes."""
    rows = [_share_figures(config) for _ in range(runs)]
    columns = zip(*rows, strict=True)
    imports, dataclasses, models, check = (median(list(column)) for column in columns)
    return (
        f"tokend's share of check: imports {imports:.0f} ms (making dataclasses {dataclasses:.0f} "
        f"ms, completing pydantic models {models:.0f} ms), loading and checking {check:.0f} ms"
    )


def _share_figures(config: Path) -> list[float]:
    argv = [PYTHON, "-c", SHARE, str(config)]
    env = {**os.environ, **ENV}
    output = subprocess.check_output(argv, env=env, cwd=tempfile.gettempdir(), text=True)
    return [float(figure) for figure in output.split()]


def imports_of(name: str, command: list[str]) -> str:
    """What `tokend <command>` imports, in total and by top-level package (the five heaviest).
    `run` is imported only (`-X importtime` of a daemon that never exits would not end)."""
    if name == "run":
        code = "import tokend.cli, tokend.daemon"
        argv = [PYTHON, "-X", "importtime", "-c", code]
    else:
        argv = [PYTHON, "-X", "importtime", "-m", "tokend", *command]
    env = {**os.environ, **ENV}
    stderr = subprocess.run(argv, check=False, capture_output=True, text=True, env=env).stderr
    by_package: collections.Counter[str] = collections.Counter()
    for line in stderr.splitlines():
        if match := IMPORT_LINE.match(line):
            by_package[match.group(4).split(".")[0]] += int(match.group(1))
    total = sum(by_package.values())
    top = ", ".join(f"{package} {us / 1e3:.0f}" for package, us in by_package.most_common(5))
    return f"imports of {name}: {total / 1e6:.3f}s in {len(by_package)} packages; ms: {top}"


def _wall(command: list[str]) -> float:
    started = time.perf_counter()
    quiet = subprocess.DEVNULL  # `once` logs its token's refresh
    subprocess.run(command, check=True, env={**os.environ, **ENV}, stdout=quiet, stderr=quiet)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
