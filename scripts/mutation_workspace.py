"""Where and how mutmut runs for one module (scripts/mutation.py): the module's workspace in
`.mutation/MODULE/` (links to the tree, a pyproject.toml whose `[tool.mutmut]` names the module
and its tests), mutmut itself under `nice`, the clean tests' failure mutmut hides, and the
Kubernetes API server the `kubernetes` module's tests share.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mutation_modules import MODULES, Module
from mutmut.utils.format_utils import mangled_name_from_mutant_name


class MutmutFailed(Exception):
    pass


@contextmanager
def servers(module: Module, source: Path) -> Iterator[dict[str, str]]:
    """The environment the module's tests run in: with `kube`, an API server started here for
    the whole run (tests/support/kube_serve.py) and named by $TOKEND_TEST_KUBE."""
    if not module.kube:
        yield {}
        return
    workdir = Path(tempfile.mkdtemp(prefix="tokend-mutation-kube-"))
    command = [sys.executable, "-m", "tests.support.kube_serve", str(workdir)]
    with (workdir / "serve.log").open("w") as log:
        server = subprocess.Popen(command, cwd=source, stdout=log, stderr=log)  # noqa: S603
    try:
        deadline = time.monotonic() + 300
        while not (workdir / "port").exists():
            if server.poll() is not None or time.monotonic() > deadline:
                tail = (workdir / "serve.log").read_text()[-2000:]
                raise MutmutFailed(f"the shared kube-apiserver did not start:\n{tail}")
            time.sleep(1)
        print(f"   kube-apiserver for every mutant's tests: TOKEND_TEST_KUBE={workdir}", flush=True)
        yield {"TOKEND_TEST_KUBE": str(workdir)}
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def prepare(name: str, source: Path, fresh: bool) -> Path:
    workspace = source / ".mutation" / name
    if fresh and workspace.exists():
        shutil.rmtree(workspace)
    workspace.mkdir(parents=True, exist_ok=True)
    module = MODULES[name]
    for linked in ("tokend", "tests", "config", *module.copy):
        link = workspace / linked
        if not link.is_symlink():
            link.symlink_to(source / linked)
    tests = [test for test in module.tests if _exists(source, test)]
    for test in sorted(set(module.tests) - set(tests)):
        print(f"   {test}: no such test here; left out", flush=True)
    project = (source / "pyproject.toml").read_text()
    text = re.sub(r"(?ms)^\[tool\.mutmut\]$.*?(?=^\[|\Z)", "", project)
    shared = tomllib.loads(project)["tool"]["mutmut"]
    settings = {
        **shared,
        "also_copy": [*shared.get("also_copy", []), *module.copy],
        "only_mutate": list(module.mutate),
        "pytest_add_cli_args_test_selection": [
            *tests,
            *(f"--deselect={test}" for test in module.slow if _exists(source, test)),
        ],
    }
    table = "\n".join(f"{key} = {json.dumps(value)}" for key, value in settings.items())
    config = f"{text.rstrip()}\n\n[tool.mutmut]\n{table}\n"
    path = workspace / "pyproject.toml"
    if not path.exists() or path.read_text() != config:
        path.write_text(config)
    return workspace


def _exists(source: Path, test: str) -> bool:
    """The test file is there (and the test function in it, for a node id): a tree from before
    a test was written can still be scored."""
    path, _, function = test.partition("::")
    if not (source / path).is_file():
        return False
    return not function or f"def {function}(" in (source / path).read_text()


def mutmut(workspace: Path, arguments: list[str], extra_env: dict[str, str]) -> None:
    command = ["nice", "-n", "19", str(Path(sys.executable).parent / "mutmut"), *arguments]
    log_path = workspace / "mutmut.log"
    with log_path.open("a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        start = log.tell()
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **extra_env}
        done = subprocess.run(  # noqa: S603 - our own venv's mutmut, fixed arguments
            command, cwd=workspace, stdout=log, stderr=log, env=env, check=False
        )
    if done.returncode == 0:
        return
    message = f"mutmut failed (exit {done.returncode}); see {log_path}"
    with log_path.open("rb") as log:
        log.seek(start)
        failed_clean = b"Failed to run clean test" in log.read()
    if failed_clean:  # mutmut ran them in a child whose output it dropped: show it
        message += "\n" + clean_test_failure(workspace, arguments, env)
    raise MutmutFailed(message)


def clean_test_failure(workspace: Path, arguments: list[str], env: dict[str, str]) -> str:
    """Why the unmutated code failed the tests mutmut picked: the same tests run by pytest
    where mutmut runs them (a test can fail there and not in the suite, e.g. on an example
    hypothesis found under a mutant and stored in the workspace's example database)."""
    names = [argument for argument in arguments[3:] if "__mutmut_" in argument]
    stats = json.loads((workspace / "mutants" / "mutmut-stats.json").read_text())
    by_function = stats["tests_by_mangled_function_name"]
    functions = {mangled_name_from_mutant_name(name) for name in names}
    tests = sorted({test for function in functions for test in by_function.get(function, [])})
    if not tests:  # mutmut then runs the module's whole selection
        selection = tomllib.loads((workspace / "pyproject.toml").read_text())["tool"]["mutmut"]
        tests = selection["pytest_add_cli_args_test_selection"]
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:randomly", *tests]
    done = subprocess.run(  # noqa: S603 - our own venv's pytest, the tests mutmut chose
        command,
        cwd=workspace / "mutants",
        env={**env, "MUTANT_UNDER_TEST": ""},
        capture_output=True,
        text=True,
        check=False,
    )
    tail = "\n".join(done.stdout.splitlines()[-25:])
    where = workspace / "mutants"
    return f"the clean tests, run by pytest in {where} (exit {done.returncode}):\n{tail}"
