"""Mutation testing of tokend's core modules with mutmut, one module at a time.

Each module is mutated in a workspace of its own (`.mutation/MODULE/`: links to `tokend/`,
`tests/` and `config/`, a pyproject.toml whose `[tool.mutmut]` names that module and its
tests), so its results are cached apart from the others and a run pays only for the tests that
guard it. mutmut then runs, per mutant, only those of the module's tests that call the mutated
function.

This file is the command line and one module's run; `mutation_modules.py` is the table of
modules and their tests, `mutation_workspace.py` prepares a workspace and runs mutmut there (and
the API server of `kubernetes`), `mutation_report.py` reads the verdicts and prints the scores.

Run through `scripts/mutation` (it installs mutmut first). See tests/MUTATION.md for the scores
and the mutants that survive on purpose (equivalent ones), docs/testing.md for when to run it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mutation_modules import MODULES
from mutation_report import KILLED, UNCHECKED, Score, equivalents, report, statuses
from mutation_workspace import MutmutFailed, mutmut, prepare, servers

ROOT = Path(__file__).resolve().parent.parent
LEDGER = ROOT / "tests" / "MUTATION.md"
TARGET = 90.0
"""Per module: at least this percentage of mutants killed."""


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
    equivalent = equivalents(LEDGER)
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
        # Earlier verdicts only: a mutant never run before ("not checked", e.g. a run stopped
        # half-way) got its first verdict just now, with the same tests.
        again = [key for key, status in before.items() if status not in KILLED | {UNCHECKED}]
        again = [key for key in again if after.get(key, "killed") not in KILLED]
        if timeouts:
            again += [key for key, status in after.items() if status == "timeout"]
        for chunk in range(0, len(again), 200):
            arguments = ["run", "--max-children", str(jobs), *again[chunk : chunk + 200]]
            mutmut(workspace, arguments, env)
    return Score(name, statuses(workspace), time.monotonic() - started)


if __name__ == "__main__":
    sys.exit(main())
