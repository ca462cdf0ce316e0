"""`kill -9` right after a refresh-token rotation loses nothing: a real `tokend run`, SIGKILL.

Tokens living 2 seconds are refreshed about every second, each refresh spending the refresh
token and bringing a new one (each good once). tokend is killed as soon as a new access token
appears in the sink: the refresh token that came with it must be the one stored (sealed: no
plaintext in the state directory), and the next start must spend it, not fall back to the
password.
"""

from __future__ import annotations

import signal
from datetime import timedelta
from pathlib import Path

from tests.conftest import write_config
from tests.support.delegated import (
    RT_PREFIX,
    delegated_config,
    env,
    password_credential,
    stored_refresh_token,
    users_idp,
)
from tests.support.processes import start_tokend, wait_for

ROUNDS = 2


def _published(path: Path, seen: set[str]) -> str | None:
    """A token in the sink that was not there before, if one has appeared."""
    try:
        value = path.read_text()
    except FileNotFoundError:
        return None
    return value if value and value not in seen else None


def test_kill_9_right_after_a_rotation_loses_no_refresh_token(tmp_path: Path) -> None:
    with users_idp(lifetime=timedelta(seconds=2)) as idp:
        users = idp.provider.users
        document = delegated_config(idp, tmp_path, password_credential())
        document["defaults"] |= {"jitter": 0}
        config = write_config(tmp_path / "config.yaml", document)
        sink, state = tmp_path / "crm.token", tmp_path / "state"
        seen: set[str] = set()
        for round_ in range(ROUNDS):
            process = start_tokend(
                "run", "-c", str(config), env=env(), log=tmp_path / f"{round_}.log"
            )
            try:
                for _ in range(2):  # the second new token in this round: a rotation, not a resume
                    token = wait_for(lambda: _published(sink, seen), timeout=30, what="a new token")
                    seen.add(token)
            finally:
                process.send_signal(signal.SIGKILL)
                process.wait(10)
            came_with = users.given_with[token]
            assert stored_refresh_token(state, idp) == came_with, f"round {round_}"
            for path in state.rglob("*"):
                if path.is_file():
                    assert RT_PREFIX not in path.read_text()
        process = start_tokend("run", "-c", str(config), env=env(), log=tmp_path / "last.log")
        try:
            wait_for(lambda: came_with in users.spent, timeout=30, what="the stored token spent")
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0
    assert users.refused == []
    assert users.grants.count("password") == 1  # signed in once; every restart went on
