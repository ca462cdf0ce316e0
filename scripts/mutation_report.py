"""Scores of mutation-testing runs: mutmut's cached verdicts per module, the share killed, and
the survivors not listed as equivalent in tests/MUTATION.md (scripts/mutation.py)."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mutmut.stats import status_by_exit_code

KILLED = {"killed", "timeout", "caught by type check"}
UNCHECKED = "not checked"
EQUIVALENT = re.compile(r"`(tokend\.[^`\s]+__mutmut_\d+)`")


def equivalents(ledger: Path) -> set[str]:
    """The mutants tests/MUTATION.md lists (as equivalent: each with a line on why)."""
    return set(EQUIVALENT.findall(ledger.read_text())) if ledger.exists() else set()


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
    for name in stale(score, equivalent):
        verdict = score.statuses.get(name, "no such mutant now")
        print(f"    listed as equivalent but not a survivor: {name} ({verdict})")


def stale(score: Score, equivalent: set[str]) -> list[str]:
    """The module's entries in tests/MUTATION.md that name no survivor: killed since, or
    renumbered after their function changed (the entry must then name the new number)."""
    files = {name.split(".x")[0] for name in score.statuses}
    survivors = set(score.survivors())
    return sorted(
        name for name in equivalent if name.split(".x")[0] in files and name not in survivors
    )
