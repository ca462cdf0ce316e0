"""`kill -9` in the middle of a burst of writes never leaves an empty or partial sink file.

40 tokens living 2 seconds are refreshed together about every second: about 80 file writes
per burst. tokend is killed at a different point inside a burst each round; every sink file
must then be absent or hold a complete token whose signature verifies.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
from datetime import timedelta
from functools import partial
from pathlib import Path

import jwt

from tests.conftest import entra_identity, write_config
from tests.support.idp import CLIENT_SECRET, running_idp
from tests.support.processes import start_tokend, wait_for

TOKENS = 40
ROUNDS = 4


def _complete(path: Path, key: jwt.PyJWK) -> bool:
    raw = path.read_text()
    value = json.loads(raw)["access_token"] if path.suffix == ".json" else raw
    jwt.decode(value, key, algorithms=["RS256"], options={"verify_exp": False, "verify_aud": False})
    return True


def _writes_reached(sinks: list[Path], seen: set[tuple[str, int]], target: int) -> bool:
    """Count distinct (file, mtime) pairs seen so far: each is one completed write."""
    for path in sinks:
        with contextlib.suppress(FileNotFoundError):
            seen.add((path.name, path.stat().st_mtime_ns))
    return len(seen) >= target


def test_kill_9_never_leaves_a_partial_file(tmp_path: Path) -> None:
    out = tmp_path / "tokens"
    out.mkdir()
    rng = random.Random(9)
    with running_idp(lifetime=timedelta(seconds=2)) as idp:
        key = jwt.PyJWK(idp.provider.jwks()["keys"][0])
        config = write_config(
            tmp_path / "config.yaml",
            {
                "identities": {"app": entra_identity(idp, CLIENT_SECRET)},
                "tokens": {
                    f"t{i}": {
                        "identity": "app",
                        "resource": f"https://api{i}.example",
                        "sinks": [
                            {"type": "file", "path": str(out / f"t{i}.token")},
                            {"type": "file", "path": str(out / f"t{i}.json"), "format": "json"},
                        ],
                    }
                    for i in range(TOKENS)
                },
                "defaults": {"jitter": 0, "startup_spread": 0},
                "listen": None,
            },
        )
        sinks = [out / f"t{i}{suffix}" for i in range(TOKENS) for suffix in (".token", ".json")]
        for round_ in range(ROUNDS):
            process = start_tokend("run", "-c", str(config), log=tmp_path / f"round{round_}.log")
            seen: set[tuple[str, int]] = set()
            target = 2 * len(sinks) + rng.randint(5, len(sinks) - 5)  # inside the third burst
            wait_for(partial(_writes_reached, sinks, seen, target), timeout=30, what="writes")
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            assert all(_complete(path, key) for path in sinks if path.exists())
        long_ago = time.time() - 120  # the restart comes a while after the last crash
        for leftover in out.glob(".*.tokend-tmp-*"):
            os.utime(leftover, (long_ago, long_ago))
        process = start_tokend("run", "-c", str(config), log=tmp_path / "final.log")
        before = {path: path.stat().st_mtime_ns for path in sinks if path.exists()}
        wait_for(
            lambda: all(
                path.exists() and path.stat().st_mtime_ns != before.get(path) for path in sinks
            ),
            timeout=30,
            what="every sink rewritten after the last restart",
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    assert all(_complete(path, key) for path in sinks)
    leftovers = [path.name for path in out.iterdir() if ".tokend-tmp-" in path.name]
    assert leftovers == []  # temp files of killed writes are swept once they are stale
