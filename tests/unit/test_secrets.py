"""Secret references: each form resolves, each failure names the reference and never the value."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.support.fifo import within
from tokend import secrets
from tokend.secrets import (
    CredentialSecret,
    EnvSecret,
    FileSecret,
    InlineSecret,
    SecretError,
    parse_secret_ref,
)

CANARY = "CANARY-secret-4b1d"


def test_forms_parse() -> None:
    assert parse_secret_ref("x-inline") == InlineSecret(inline="x-inline")
    assert parse_secret_ref({"env": "A"}) == EnvSecret(env="A")
    assert parse_secret_ref({"file": "/s"}) == FileSecret(file=Path("/s"))
    assert parse_secret_ref({"credential": "c"}) == CredentialSecret(credential="c")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"env": "A", "file": "/x"}, "expected a secret reference"),
        ({"nope": "A"}, "unknown secret reference 'nope'"),
        ({"Xy9~Sup3rS3cret": None}, r"unknown secret reference \(expected"),  # not quoted back
        ({"env": ""}, "needs a non-empty string"),
        ({"env": 5}, "needs a non-empty string"),
        (5, "expected a secret reference"),
        ("", "secret is empty"),
    ],
)
def test_bad_forms(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_secret_ref(value)


def test_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKEND_TEST_SECRET", CANARY)
    assert EnvSecret(env="TOKEND_TEST_SECRET").resolve().reveal() == CANARY
    monkeypatch.delenv("TOKEND_TEST_SECRET")
    with pytest.raises(SecretError, match="environment variable TOKEND_TEST_SECRET is not set"):
        EnvSecret(env="TOKEND_TEST_SECRET").resolve()


def test_file_strips_one_trailing_newline_only(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(f"  {CANARY}\n")
    assert FileSecret(file=path).resolve().reveal() == f"  {CANARY}"


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist"), ("\n", "is empty")],
)
def test_file_problems(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "secret"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SecretError, match=f"secret file {path} {message}"):
        FileSecret(file=path).resolve()


def test_systemd_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "crm-secret").write_text(CANARY)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert CredentialSecret(credential="crm-secret").resolve().reveal() == CANARY
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(SecretError, match="CREDENTIALS_DIRECTORY is not set"):
        CredentialSecret(credential="crm-secret").resolve()


def test_resolved_secret_hides_its_value() -> None:
    secret = InlineSecret(inline=CANARY).resolve()
    for text in (repr(secret), str(secret), f"{secret}", repr(InlineSecret(inline=CANARY))):
        assert CANARY not in text


def test_env_that_is_not_utf8_is_refused_without_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytes that are not UTF-8 reach os.environ as lone surrogates (PEP 383): refused by name,
    never echoed, never handed on to crash whatever encodes them next."""
    monkeypatch.setenv("TOKEND_TEST_SECRET", os.fsdecode(b"CANARY\xff\xfe-4b1d"))
    with pytest.raises(SecretError) as caught:
        EnvSecret(env="TOKEND_TEST_SECRET").resolve()
    assert str(caught.value) == "environment variable TOKEND_TEST_SECRET is not valid UTF-8"


@pytest.mark.parametrize("resolve", [FileSecret.resolve, FileSecret.resolve_bytes])
def test_a_secret_file_over_the_limit_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, resolve: Any
) -> None:
    """Past `MAX_SECRET_FILE_SIZE` (1 MiB, patched smaller here) a file is not a secret."""
    path = tmp_path / "secret"
    path.write_text(CANARY * 100)
    monkeypatch.setattr(secrets, "MAX_SECRET_FILE_SIZE", 1 << 10)
    with pytest.raises(SecretError) as caught:
        resolve(FileSecret(file=path))
    assert str(caught.value) == f"secret file {path} is larger than 1 KiB"


def test_a_secret_file_that_is_not_utf8_says_so(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"CANARY\xff\xfe-4b1d\n")
    with pytest.raises(SecretError) as caught:
        FileSecret(file=path).resolve()
    assert str(caught.value) == f"secret file {path} is not valid UTF-8"
    assert FileSecret(file=path).resolve_bytes() == b"CANARY\xff\xfe-4b1d\n"  # binary: as it is


@pytest.mark.parametrize(("make", "kind"), [(os.mkdir, "a directory"), (os.mkfifo, "a FIFO")])
def test_a_systemd_credential_that_is_not_a_regular_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make: Any, kind: str
) -> None:
    make(tmp_path / "crm-secret")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    with pytest.raises(SecretError) as caught:
        within(10, CredentialSecret(credential="crm-secret").resolve, tmp_path / "crm-secret")
    assert str(caught.value) == (
        f"systemd credential {tmp_path / 'crm-secret'} is not a regular file ({kind})"
    )
