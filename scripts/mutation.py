"""Mutation testing of tokend's core modules with mutmut, one module at a time.

Each module is mutated in a workspace of its own (`.mutation/MODULE/`: links to `tokend/`,
`tests/` and `config/`, a pyproject.toml whose `[tool.mutmut]` names that module and its
tests), so its results are cached apart from the others and a run pays only for the tests that
guard it. mutmut
then runs, per mutant, only those of the module's tests that call the mutated function.

Run through `scripts/mutation` (it installs mutmut first). See tests/MUTATION.md for the scores
and the mutants that survive on purpose (equivalent ones), docs/testing.md for when to run it.
"""

from __future__ import annotations

import argparse
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
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mutmut.stats import status_by_exit_code
from mutmut.utils.format_utils import mangled_name_from_mutant_name

ROOT = Path(__file__).resolve().parent.parent
LEDGER = ROOT / "tests" / "MUTATION.md"
TARGET = 90.0
"""Per module: at least this percentage of mutants killed."""


@dataclass(frozen=True)
class Module:
    mutate: tuple[str, ...]
    """Globs of the files to mutate (mutmut's `only_mutate`)."""
    tests: tuple[str, ...]
    """The tests that guard them: files or node ids, run in-process (a test that starts
    `tokend` as a subprocess would run the unmutated code, so none is listed)."""
    slow: tuple[str, ...] = ()
    """Node ids among `tests` too slow to run for every mutant (a property test of thousands
    of examples, a day-long simulation): left out here, they still run in the suite."""
    copy: tuple[str, ...] = ()
    """More directories the tests read (besides tokend/, tests/ and config/)."""
    kube: bool = False
    """The tests need a Kubernetes API server: one is started for the whole run and shared
    through $TOKEND_TEST_KUBE (tests/support/kube_serve.py), not one per mutant."""


PROPERTIES = "tests/unit/test_properties.py"
CONCURRENT_READER = (
    "tests/unit/test_file_sink.py::test_concurrent_reader_never_sees_partial_content"
)

MODULES: dict[str, Module] = {
    "engine": Module(
        ("tokend/engine/*",),
        (
            "tests/unit/test_policy.py",
            "tests/unit/test_publisher.py",
            "tests/unit/test_runner.py",
            "tests/unit/test_engine_parts.py",
            "tests/integration/test_engine.py",
            "tests/integration/test_faults.py",
            "tests/unit/test_state.py",
            "tests/unit/test_state_messages.py",
            "tests/unit/test_verifier.py",
            "tests/integration/test_recovery.py",
            "tests/integration/test_reload.py::test_engine_reload",
            "tests/integration/test_reload.py::"
            "test_a_job_stopped_while_its_request_is_in_flight_plans_no_more_runs",
            "tests/integration/test_simulation.py",
            "tests/integration/test_metrics.py",
            "tests/integration/test_leadership.py",
            "tests/integration/test_on_demand.py",
        ),
        slow=(
            "tests/integration/test_simulation.py::test_a_day_against_a_flaky_identity_provider",
            "tests/integration/test_recovery.py::"
            "test_after_an_outage_every_consumer_is_whole_again_within_15_s",
        ),
    ),
    "files": Module(
        ("tokend/files.py",),
        ("tests/unit/test_files.py", "tests/unit/test_file_sink.py", "tests/unit/test_state.py"),
        slow=(CONCURRENT_READER,),
    ),
    "oauth": Module(
        tuple(
            f"tokend/oauth/{name}.py"
            for name in (
                "__init__",
                "client",
                "dialects",
                "errors",
                "http",
                "jwks",
                "response",
                "verify",
                "grants/__init__",
                "grants/base",
                "grants/certificate",
                "grants/client_secret",
                "grants/federated",
                "grants/keys",
                "grants/managed_identity",
            )
        ),
        (
            "tests/unit/test_token_parsing.py",
            "tests/unit/test_errors.py",
            "tests/integration/test_oauth_parts.py",
            "tests/unit/test_certificate_keys.py",
            "tests/unit/test_credential_config.py",
            "tests/credentials/test_certificate.py",
            "tests/credentials/test_federated.py",
            "tests/credentials/test_managed_identity.py",
            "tests/credentials/test_verify.py",
            "tests/unit/test_federated_parts.py",
            "tests/unit/test_managed_identity_parts.py",
            "tests/unit/test_grant_parts.py",
            "tests/unit/test_verify_check.py",
            "tests/integration/test_jwks.py",
            "tests/unit/test_certificate_grant.py",
            "tests/integration/test_client_parts.py",
            "tests/integration/test_client.py",
            "tests/integration/test_faults.py",
            f"{PROPERTIES}::test_error_responses_classify_cleanly",
            f"{PROPERTIES}::test_retry_after_never_raises",
        ),
    ),
    # The delegated grants (a user's password, device-code login): apart from "oauth" so that
    # module's cached verdicts survive their arrival.
    "login": Module(
        (
            "tokend/oauth/device_code.py",
            "tokend/oauth/grants/delegated.py",
            "tokend/oauth/grants/device_login.py",
            "tokend/oauth/grants/password.py",
            "tokend/oauth/grants/signin.py",
        ),
        (
            "tests/unit/test_delegated.py",
            "tests/integration/test_password.py",
            "tests/integration/test_device_login.py",
            "tests/unit/test_delegated_grants.py",
            "tests/unit/test_signin.py",
            "tests/integration/test_device_code.py",
        ),
    ),
    "transport": Module(
        ("tokend/transport.py",),
        (
            "tests/unit/test_transport.py",
            "tests/unit/test_config.py",
            "tests/integration/test_client.py",
        ),
    ),
    "logs": Module(
        ("tokend/logs.py", "tokend/redaction.py"),
        (
            "tests/unit/test_logs.py",
            "tests/unit/test_redaction.py",
            "tests/unit/test_errors.py",
            "tests/unit/test_systemd.py",
        ),
    ),
    "config": Module(
        ("tokend/config.py", "tokend/config_checks.py", "tokend/validation.py"),
        (
            "tests/unit/test_config.py",
            "tests/unit/test_vault_config.py",
            "tests/unit/test_credential_config.py",
            "tests/integration/test_plugins.py",
            "tests/unit/test_endpoint.py",  # the endpoint: block's checks across keys
            f"{PROPERTIES}::test_any_text_is_a_config_or_a_config_error",
        ),
    ),
    "metrics": Module(
        ("tokend/metrics.py",),
        ("tests/integration/test_metrics.py",),
    ),
    "sinks": Module(
        (
            "tokend/sinks/__init__.py",
            "tokend/sinks/base.py",
            "tokend/sinks/file.py",
            "tokend/sinks/vault.py",
        ),
        (
            "tests/unit/test_file_sink.py",
            "tests/unit/test_sink_parts.py",
            "tests/unit/test_config.py",
            "tests/integration/test_plugins.py",
            "tests/unit/test_vault_ownership.py",  # and the Vault sink's own decisions
            "tests/vault/test_kv.py",
            "tests/vault/test_drift.py",
        ),
        slow=(CONCURRENT_READER,),
    ),
    # Its tests need a real API server (tests/support/kube.py), started once for the run.
    "kubernetes": Module(
        ("tokend/sinks/kubernetes.py",),
        ("tests/kube/test_secret_sink.py", "tests/unit/test_kube.py"),
        copy=("deploy",),  # the shipped Role the tests bind tokend's service account to
        kube=True,
    ),
}

KILLED = {"killed", "timeout", "caught by type check"}
EQUIVALENT = re.compile(r"`(tokend\.[^`\s]+__mutmut_\d+)`")


@dataclass
class Score:
    module: str
    statuses: dict[str, str]
    """mutant name -> mutmut status"""
    seconds: float

    @property
    def killed(self) -> int:
        return sum(status in KILLED for status in self.statuses.values())

    @property
    def percent(self) -> float:
        return 100.0 * self.killed / len(self.statuses) if self.statuses else 100.0

    def survivors(self) -> list[str]:
        return sorted(name for name, status in self.statuses.items() if status not in KILLED)


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/mutation", description=__doc__.split("\n")[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE", help=f"any of {', '.join(MODULES)}")
    parser.add_argument("--fresh", action="store_true", help="forget cached results first")
    parser.add_argument(
        "--timeouts",
        action="store_true",
        help="test again the mutants whose verdict is a timeout (one can be a test paused by a"
        " SIGSTOP or a loaded machine, not a mutant that loops)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument("--list", action="store_true", help="print the module -> tests table")
    parser.add_argument(
        "--report", action="store_true", help="print the scores of the last runs, run nothing"
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=ROOT,
        help="mutate and test the tokend/ and tests/ under this directory instead (e.g. an"
        " exported older commit, for before/after scores); workspaces go under its .mutation/",
    )
    args = parser.parse_args()
    unknown = [name for name in args.modules if name not in MODULES]
    if unknown:
        parser.error(f"unknown module {', '.join(unknown)} (known: {', '.join(MODULES)})")
    if args.list:
        for name, module in MODULES.items():
            print(f"{name}: {' '.join(module.mutate)}\n    " + "\n    ".join(module.tests))
        return 0
    equivalent = set(EQUIVALENT.findall(LEDGER.read_text())) if LEDGER.exists() else set()
    source = args.source.resolve()
    if args.report:
        for name in args.modules or MODULES:
            report(Score(name, statuses(source / ".mutation" / name), 0.0), equivalent)
        return 0
    scores: list[Score] = []
    failed: list[str] = []
    for name in args.modules or MODULES:
        try:
            scores.append(run(name, source, args.fresh, args.jobs, timeouts=args.timeouts))
        except MutmutFailed as exc:
            print(exc, flush=True)
            failed.append(name)
    print()
    for score in scores:
        report(score, equivalent)
    for name in failed:
        print(f"{name:<10} mutmut failed: see {source / '.mutation' / name / 'mutmut.log'}")
    return 0 if not failed and all(score.percent >= TARGET for score in scores) else 1


class MutmutFailed(Exception):
    pass


def run(name: str, source: Path, fresh: bool, jobs: int, *, timeouts: bool = False) -> Score:
    """Mutate one module and test each mutant; then test again any mutant that survived an
    earlier run and still does (mutmut keeps a verdict until the mutated function changes, and
    new tests may kill it now)."""
    workspace = prepare(name, source, fresh)
    before = statuses(workspace)
    # mutmut maps each function to the tests that call it once, on its first run, and later
    # only maps tests that are new: a function added or changed since (main's refactors) would
    # keep the few tests mapped to it then, and its mutants survive untested. Its stats are
    # recollected every run (one traced run of the module's tests); verdicts stay cached per
    # function in the .meta files.
    (workspace / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    started = time.monotonic()
    print(f"== {name}: mutmut run (log: {workspace / 'mutmut.log'})", flush=True)
    with servers(MODULES[name], source) as env:
        mutmut(workspace, ["run", "--max-children", str(jobs)], env)
        after = statuses(workspace)
        again = [key for key, status in before.items() if status not in KILLED]
        again = [key for key in again if after.get(key, "killed") not in KILLED]
        if timeouts:
            again += [key for key, status in after.items() if status == "timeout"]
        for chunk in range(0, len(again), 200):
            arguments = ["run", "--max-children", str(jobs), *again[chunk : chunk + 200]]
            mutmut(workspace, arguments, env)
    return Score(name, statuses(workspace), time.monotonic() - started)


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


def statuses(workspace: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for meta in sorted((workspace / "mutants" / "tokend").rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        found |= {key: status_by_exit_code[code] for key, code in codes.items()}
    return found


def report(score: Score, equivalent: set[str]) -> None:
    survivors = score.survivors()
    unexplained = [name for name in survivors if name not in equivalent]
    minutes, seconds = divmod(round(score.seconds), 60)
    print(
        f"{score.module:<10} {score.percent:5.1f} % killed ({score.killed}/{len(score.statuses)})"
        f"; {len(survivors) - len(unexplained)} survivors listed as equivalent in"
        f" tests/MUTATION.md, {len(unexplained)} not; {minutes}m{seconds:02d}s"
    )
    by_file = Counter(name.split(".x")[0] for name in score.statuses)
    killed_by_file = Counter(
        name.split(".x")[0] for name, status in score.statuses.items() if status in KILLED
    )
    for file, total in sorted(by_file.items()):
        print(f"    {file:<32} {killed_by_file[file]:>4}/{total:<4}")
    for name in unexplained:
        print(f"    survived: {name} ({score.statuses[name]})")


if __name__ == "__main__":
    sys.exit(main())
