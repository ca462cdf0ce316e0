"""A delegated identity's sign-in (`SignIn`) on its own: storing the newest refresh token
sealed, removing a dead one unless another process replaced it, reading the file again only
when it changed, and the exact line logged when the disk refuses."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from tokend.oauth.dialects import Endpoint
from tokend.oauth.grants.base import GrantContext
from tokend.oauth.grants.signin import (
    SignIn,
    binding_of,
    refresh_token_files,
    sign_in_for,
    subject_of,
)
from tokend.redaction import Redactor
from tokend.seal import Sealer
from tokend.sealed import SealedFiles

BINDING = "tokend refresh token\nuser\nhttps://login.example/t\napp"


class Counting(SealedFiles):
    """Sealed files that count reads and can be told to refuse writes or removals."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, Sealer("state-key"))
        self.reads = 0
        self.refuse: OSError | None = None

    def read(self, name: str, associated: str) -> bytes | None:
        self.reads += 1
        return super().read(name, associated)

    def write(self, name: str, associated: str, plaintext: bytes) -> None:
        if self.refuse is not None:
            raise self.refuse
        super().write(name, associated, plaintext)

    def remove(self, name: str) -> None:
        if self.refuse is not None:
            raise self.refuse
        super().remove(name)


def _exchange(sign_in: SignIn, token: str | None = None, dead: str | None = None) -> None:
    """One exchange: `token` came with the answer, or `dead` was refused."""

    async def main() -> None:
        sign_in.begin()
        sign_in.current()  # a grant reads the newest token first
        if token is not None:
            sign_in.hold(token)
        if dead is not None:
            sign_in.drop(dead, "refused")
        await sign_in.settle()

    asyncio.run(main())


def test_a_login_is_stored_sealed_and_read_by_another_process(tmp_path: Path) -> None:
    kept = Counting(tmp_path / "kept")
    sign_in = SignIn(kept, "user", BINDING)
    assert sign_in.version() == "absent"
    asyncio.run(sign_in.save("rt-login"))
    assert sign_in.current() == "rt-login"
    assert kept.reads == 0  # what it wrote itself is not read back
    assert sign_in.version() == kept.version("user") != "absent"
    other = SignIn(SealedFiles(tmp_path / "kept", Sealer("state-key")), "user", BINDING)
    assert other.current() == "rt-login"
    assert other.current("someone else") is None


def test_a_login_without_a_place_to_keep_it_fails() -> None:
    sign_in = SignIn(None, "user", BINDING)
    with pytest.raises(
        OSError, match=r"^refresh tokens cannot be stored: no state_dir or state_key$"
    ):
        asyncio.run(sign_in.save("rt"))
    assert sign_in.version() == "not kept"
    _exchange(sign_in, token="rt-2")  # a daemon without state: kept in memory, no error
    assert sign_in.current() == "rt-2"


def test_a_rotated_token_is_stored_and_the_file_not_read_again(tmp_path: Path) -> None:
    kept = Counting(tmp_path / "kept")
    sign_in = SignIn(kept, "user", BINDING)
    assert sign_in.current() is None and kept.reads == 1
    _exchange(sign_in, token="rt-1")
    _exchange(sign_in, token="rt-2")
    assert sign_in.current() == "rt-2"
    assert kept.reads == 1
    SealedFiles(tmp_path / "kept", Sealer("state-key")).write("user", BINDING, b'{"refresh_token"'
                                                              b': "rt-from-login"}')  # fmt: skip
    assert sign_in.current() == "rt-from-login" and kept.reads == 2


@pytest.mark.parametrize(
    ("refusal", "reason"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
        (PermissionError("denied"), "PermissionError"),
    ],
)
def test_a_token_the_disk_refuses_is_kept_in_memory_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, refusal: OSError, reason: str
) -> None:
    kept = Counting(tmp_path / "kept")
    sign_in = SignIn(kept, "user", BINDING)
    kept.refuse = refusal
    with caplog.at_level(logging.ERROR, logger="tokend.signin"):
        _exchange(sign_in, token="rt-1")
    assert sign_in.current() == "rt-1"
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "ERROR",
            f"identity user: the new refresh token could not be stored in {kept.directory}"
            f" ({reason}); it is kept in memory only: a restart now would need the password"
            " or tokend login",
        )
    ]
    with pytest.raises(type(refusal)):
        asyncio.run(sign_in.save("rt-login"))  # a login says so instead


def test_a_dead_token_is_removed_unless_replaced_meanwhile(tmp_path: Path) -> None:
    kept = Counting(tmp_path / "kept")
    sign_in = SignIn(kept, "user", BINDING)
    _exchange(sign_in, token="rt-1")
    _exchange(sign_in, dead="rt-other")  # not the one held: nothing happens
    assert sign_in.current() == "rt-1" and kept.version("user") != "absent"
    _exchange(sign_in, dead="rt-1")
    assert kept.version("user") == "absent"
    assert sign_in.current() is None and sign_in.problem == "refused"
    _exchange(sign_in, token="rt-2")
    sign_in.current()
    replaced = SealedFiles(tmp_path / "kept", Sealer("state-key"))

    async def dies_while_login_writes() -> None:
        sign_in.begin()
        sign_in.drop("rt-2", "refused")
        replaced.write("user", BINDING, b'{"refresh_token": "rt-login"}')  # tokend login
        await sign_in.settle()

    asyncio.run(dies_while_login_writes())
    assert replaced.read("user", BINDING) == b'{"refresh_token": "rt-login"}'
    assert sign_in.current() == "rt-login"


@pytest.mark.parametrize(
    ("refusal", "reason"),
    [(OSError(errno.EROFS, "Read-only file system"), "Read-only file system"),
     (OSError("odd"), "OSError")],
)  # fmt: skip
def test_a_dead_token_that_cannot_be_removed_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, refusal: OSError, reason: str
) -> None:
    kept = Counting(tmp_path / "kept")
    sign_in = SignIn(kept, "user", BINDING)
    _exchange(sign_in, token="rt-1")
    kept.refuse = refusal
    with caplog.at_level(logging.WARNING, logger="tokend.signin"):
        _exchange(sign_in, dead="rt-1")
    assert [r.getMessage() for r in caplog.records] == [
        f"identity user: the dead refresh token could not be removed ({reason})"
    ]
    reads = kept.reads
    assert sign_in.current() is None
    assert kept.reads == reads  # the version it saw after trying is remembered


def test_refresh_tokens_live_in_their_own_directory(tmp_path: Path) -> None:
    files = refresh_token_files(tmp_path, Sealer("k"))
    assert files.directory == tmp_path / "refresh-tokens"
    assert repr(SignIn(files, "user", BINDING)) == "SignIn(identity='user')"


@pytest.mark.parametrize(
    ("spoil", "problem"),
    [
        (lambda kept: kept.write("user", BINDING, b'{"no": "token"}'),
         "the stored refresh token file is damaged"),
        (lambda kept: kept.write("user", BINDING, b"not json"),
         "the stored refresh token file is damaged"),
        (lambda kept: kept.write("user", "another binding", b'{"refresh_token": "rt"}'),
         "the stored refresh token does not open with this state_key for this identity (sealed"
         " with another key, or for another tenant or client)"),
        (lambda kept: (kept.write("user", BINDING, b'{"refresh_token": "rt"}'),
                       os.chmod(kept.path("user"), 0o644)),
         "the stored refresh token is not used: {path}: mode 0644 lets other users have it read or"
         " written"),
    ],
)  # fmt: skip
def test_a_stored_token_that_cannot_be_used_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, spoil: Any, problem: str
) -> None:
    kept = SealedFiles(tmp_path / "kept", Sealer("state-key"))
    spoil(kept)
    sign_in = SignIn(kept, "user", BINDING)
    with caplog.at_level(logging.WARNING, logger="tokend.signin"):
        assert sign_in.current() is None
    line = problem.format(path=kept.path("user"))
    assert sign_in.problem is not None and sign_in.problem.startswith(line)
    assert [r.getMessage() for r in caplog.records] == [f"identity user: {sign_in.problem}"]
    kept.write("user", BINDING, b'{"refresh_token": "rt-good"}')
    os.chmod(kept.path("user"), 0o600)
    assert sign_in.current() == "rt-good" and sign_in.problem is None


def test_a_replaced_token_is_no_longer_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    masking = Redactor()
    monkeypatch.setattr("tokend.oauth.grants.signin.redactor", masking)
    sign_in = SignIn(None, "user", BINDING)
    first, second = "rt-first-0123456789abcdef", "rt-second-0123456789abcdef"
    _exchange(sign_in, token=first)
    assert first not in masking.redact(f"a text with {first}")
    _exchange(sign_in, token=second)
    assert masking.redact(f"old {first}") == f"old {first}"  # spent: no secret any more
    assert second not in masking.redact(f"new {second}")
    _exchange(sign_in, token=second)  # the same again: still masked
    assert second not in masking.redact(f"new {second}")


def test_what_a_stored_token_is_bound_to() -> None:
    """Part of every sealed file: a change here would orphan the refresh tokens stored before
    an upgrade."""
    v2 = Endpoint(token_url="https://login.example/t-1/oauth2/v2.0/token")
    v1 = Endpoint(token_url="https://login.example/t-1/oauth2/token")
    issuer = Endpoint(issuer="https://idp.example/realm")
    bindings = [binding_of(GrantContext("app", endpoint, identity="me")) for endpoint in (v2, v1)]
    assert bindings == ["tokend refresh token\nme\nhttps://login.example/t-1\napp"] * 2
    assert binding_of(GrantContext("app", issuer, identity="me")) == (
        "tokend refresh token\nme\nhttps://idp.example/realm\napp"
    )
    assert binding_of(GrantContext("app", Endpoint(), identity="me")) == (
        "tokend refresh token\nme\n\napp"
    )
    assert (
        subject_of("Ann@Contoso.example") == hashlib.sha256(b"ann@contoso.example").hexdigest()[:32]
    )


def test_a_newer_config_brings_the_newer_place_to_keep_tokens(tmp_path: Path) -> None:
    endpoint = Endpoint(token_url="https://login.example/t-1/oauth2/v2.0/token")
    older = SealedFiles(tmp_path / "old", Sealer("old-key"))
    newer = SealedFiles(tmp_path / "new", Sealer("new-key"))

    async def scenario() -> list[Any]:
        first = sign_in_for(GrantContext("app", endpoint, identity="me", kept=older))
        second = sign_in_for(GrantContext("app", endpoint, identity="me", kept=newer))
        third = sign_in_for(GrantContext("app", endpoint, identity="me"))
        return [first is second is third, first.kept]

    shared, kept = asyncio.run(scenario())
    assert shared and kept is newer
