"""State at rest: private as ssh keys are, sealed with `state_key`, never trusted beyond what an
identity provider could have issued. (Tests run as root, so `chown` makes another user's file.)"""

from __future__ import annotations

import json
import logging
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tokend.engine.state import StateStore
from tokend.seal import Sealer
from tokend.sealed import state_dir_problem
from tokend.token import Token

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FP = "f" * 64
NOBODY = 65534


def _token(value: str = "CANARY-state-token", lifetime: timedelta = timedelta(hours=1)) -> Token:
    return Token(value=value, token_type="Bearer", expires_at=NOW + lifetime, obtained_at=NOW)


def test_a_sealed_round_trip_holds_no_plaintext(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state", Sealer("a state key of enough entropy"))
    store.save("crm", FP, _token())
    raw = (tmp_path / "state" / "crm.json").read_text()
    assert "CANARY" not in raw and json.loads(raw)["format"] == 2
    loaded = store.load("crm", FP, NOW)
    assert loaded is not None and loaded.value == "CANARY-state-token"


@pytest.mark.parametrize("how", ["tampered", "another key", "another name"])
def test_a_sealed_file_that_does_not_open_is_ignored_with_one_warning(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "state"
    StateStore(directory, Sealer("the key")).save("crm", FP, _token())
    path = directory / "crm.json"
    document = json.loads(path.read_text())
    name, key = "crm", "the key"
    if how == "tampered":
        sealed = bytearray(document["sealed"].encode())
        sealed[-5] = ord("A") if sealed[-5] != ord("A") else ord("B")
        document["sealed"] = sealed.decode()
        path.write_text(json.dumps(document))
    elif how == "another key":
        key = "a different key"
    else:
        os.rename(path, directory / "graph.json")
        name = "graph"
    with caplog.at_level(logging.WARNING, logger="tokend.state"):
        assert StateStore(directory, Sealer(key)).load(name, FP, NOW) is None
    (warning,) = [r.getMessage() for r in caplog.records if "does not open" in r.getMessage()]
    assert "CANARY" not in warning


def test_a_file_someone_else_owns_or_can_write_is_refused(tmp_path: Path) -> None:
    """A forged file in a shared directory never reaches a sink."""
    directory = tmp_path / "state"
    store = StateStore(directory)
    store.save("crm", FP, _token())
    path = directory / "crm.json"
    os.chown(path, NOBODY, NOBODY)
    assert store.load("crm", FP, NOW) is None
    os.chown(path, os.geteuid(), os.getegid())
    path.chmod(0o666)
    assert store.load("crm", FP, NOW) is None
    path.chmod(0o600)
    assert store.load("crm", FP, NOW) is not None


def test_a_directory_others_can_write_is_refused_for_saving_and_by_check(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    directory.mkdir()
    directory.chmod(0o777)
    assert state_dir_problem(directory) == "mode 0777 lets other users have it written"
    with pytest.raises(PermissionError, match="lets other users have it written"):
        StateStore(directory).save("crm", FP, _token())
    directory.chmod(0o700)
    os.chown(directory, NOBODY, NOBODY)
    assert "owned by uid 65534" in (state_dir_problem(directory) or "")


def test_a_directory_tokend_cannot_write_is_found_by_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A private directory of tokend's own user but mode 0500: `run` could save nothing. (The
    tests run as root, whom no mode stops: the answer for a non-root user is simulated.)"""
    directory = tmp_path / "state"
    directory.mkdir(mode=0o500)
    real_access = os.access

    def access(path: object, mode: int, **kwargs: object) -> bool:
        if Path(str(path)) == directory and mode & os.W_OK:
            return bool(directory.stat().st_mode & stat.S_IWUSR)
        return real_access(path, mode, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "access", access)
    assert state_dir_problem(directory) == f"{directory} is not writable by this user"
    directory.chmod(0o700)
    assert state_dir_problem(directory) is None


def test_missing_directories_are_created_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        StateStore(tmp_path / "a" / "state").save("crm", FP, _token())
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a" / "state").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "a" / "state" / "crm.json").stat().st_mode) == 0o600


def test_a_stored_expiry_no_identity_provider_issues_is_not_trusted(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    store.save("crm", FP, _token(lifetime=timedelta(days=300)))
    assert store.load("crm", FP, NOW) is None
    store.save("crm", FP, _token(lifetime=timedelta(hours=23)))
    assert store.load("crm", FP, NOW) is not None


def test_unencrypted_state_is_warned_about_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="tokend.state"):
        StateStore(tmp_path / "once")
        StateStore(tmp_path / "once")
    warnings = [r for r in caplog.records if "stored unencrypted" in r.getMessage()]
    assert len(warnings) == 1


def test_plain_state_from_before_a_key_was_set_still_resumes(tmp_path: Path) -> None:
    StateStore(tmp_path / "state").save("crm", FP, _token())
    sealed = StateStore(tmp_path / "state", Sealer("new key"))
    assert sealed.load("crm", FP, NOW) is not None
    sealed.save("crm", FP, _token())
    assert "CANARY" not in (tmp_path / "state" / "crm.json").read_text()
