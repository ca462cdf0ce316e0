"""Secret references: each form resolves, each failure names the reference and never the value."""

from __future__ import annotations

from pathlib import Path

import pytest

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
