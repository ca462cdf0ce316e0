"""`type: federated` piece by piece: reading the token file, running the command, the expiry
`tokend check` reads from a token nobody verified, the request itself, and what the workload
identity webhook's variables fill in. Each check names the exact line or value."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.fifo import within
from tokend.oauth.dialects import Endpoint, Target
from tokend.oauth.grants import federated
from tokend.oauth.grants.base import GrantContext, HttpRequest
from tokend.oauth.grants.certificate import ASSERTION_TYPE
from tokend.oauth.grants.federated import (
    FederatedGrant,
    FederatedOptions,
    read_token_file,
    run_token_command,
    unverified_expiry,
)
from tokend.secrets import SecretError

MAX = 64 * 1024
HEADER = "eyJhbGciOiJSUzI1NiJ9"  # {"alg":"RS256"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def jwt(claims: Any, *, payload: str | None = None) -> str:
    """A JWT-shaped token (header.payload.signature) with `claims`; nothing signs it."""
    body = payload if payload is not None else _b64(json.dumps(claims).encode())
    return f"{HEADER}.{body}.c2lnbmF0dXJl"


def _options(**options: Any) -> FederatedOptions:
    return FederatedOptions.model_validate({"type": "federated", **options})


# --- unverified_expiry


@pytest.mark.parametrize("padding", ["", "x", "xy", "xyz"])
def test_the_expiry_of_any_payload_length(padding: str) -> None:
    """Payloads of every length mod 4 (0, 2 or 3 characters of padding put back)."""
    exp = 1_900_000_000
    assert unverified_expiry(jwt({"exp": exp, "p": padding})) == datetime.fromtimestamp(exp, UTC)


@pytest.mark.parametrize(
    ("exp", "expected"),
    [
        (1, datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)),
        (10**11 - 1, datetime.fromtimestamp(10**11 - 1, UTC)),
        (0, None),
        (-5, None),
        (10**11, None),
        (True, None),
        (1.9e9, None),
        ("1900000000", None),
        (None, None),
    ],
)
def test_only_a_plausible_integer_exp_is_an_expiry(exp: Any, expected: datetime | None) -> None:
    assert unverified_expiry(jwt({"exp": exp})) == expected


@pytest.mark.parametrize(
    "token",
    [
        "opaque-token",
        "a.b",
        "a.b.c.d",
        jwt(None, payload="!!!!"),  # not base64
        jwt(None, payload=_b64(b"\xff\xfe")),  # not UTF-8
        jwt(None, payload=_b64(b"not json")),
        jwt([1, 2]),  # JSON, not an object
        jwt({"sub": "no exp"}),
    ],
)
def test_no_expiry_from_what_is_not_a_jwt_with_exp(token: str) -> None:
    assert unverified_expiry(token) is None


# --- read_token_file and the checks on any token


def test_the_token_file_is_stripped_of_surrounding_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_bytes(b"\n  !abc~  \r\n")  # '!' and '~': the first and last printable
    assert read_token_file(path) == "!abc~"


def test_a_token_of_exactly_64_kib_is_read(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_bytes(b"a" * MAX)
    assert read_token_file(path) == "a" * MAX


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"a" * (MAX + 1), "larger than 64 KiB, not a token"),
        (b"", "empty"),
        (b" \n\t ", "empty"),
        (b"two words", "not a token (expected one line of printable characters)"),
        (b"line\nbreak", "not a token (expected one line of printable characters)"),
        (b"del\x7f", "not a token (expected one line of printable characters)"),
        ("caf\u00e9".encode(), "not a token (expected one line of printable characters)"),
    ],
)
def test_what_is_not_a_token_is_refused(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "token"
    path.write_bytes(content)
    with pytest.raises(SecretError) as caught:
        read_token_file(path)
    assert str(caught.value) == f"token_file {path}: {problem}"
    assert not caught.value.transient
    assert caught.value.code == "secret_unavailable"


def test_a_token_file_that_cannot_be_read_says_why(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(SecretError) as caught:
        read_token_file(missing)
    assert str(caught.value) == f"token_file {missing} does not exist"
    with pytest.raises(SecretError) as caught:
        read_token_file(tmp_path)
    assert str(caught.value) == f"token_file {tmp_path}: not a regular file (a directory)"


def test_a_token_file_that_is_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    """A FIFO with no writer blocked the read (and the grant) for good."""
    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    with pytest.raises(SecretError) as caught:
        within(10, lambda: read_token_file(fifo), fifo)
    assert str(caught.value) == f"token_file {fifo}: not a regular file (a FIFO)"


# --- run_token_command


def _run(argv: list[str], timeout: float = 10) -> str:
    return asyncio.run(run_token_command(argv, timedelta(seconds=timeout)))


def test_a_command_s_output_is_the_token() -> None:
    printer = "import sys; sys.stdout.write('  tok.en-1~ \\n'); sys.stderr.write('noise')"
    assert _run([sys.executable, "-c", printer]) == "tok.en-1~"


def test_a_command_printing_more_than_64_kib_is_refused() -> None:
    program = f"import sys; sys.stdout.write('a' * {MAX + 1})"
    with pytest.raises(SecretError) as caught:
        _run([sys.executable, "-c", program])
    assert str(caught.value) == f"command {sys.executable}: larger than 64 KiB, not a token"


@pytest.mark.parametrize(
    ("program", "message", "transient"),
    [
        ("import sys; sys.exit(4)", "exited with status 4 (run it by hand to see why)", True),
        ("import time; time.sleep(30)", "did not finish within 0.4s", True),
        ("print()", "empty", False),
    ],
)
def test_a_command_that_fails_says_how_it_ended(
    program: str, message: str, transient: bool
) -> None:
    with pytest.raises(SecretError) as caught:
        _run([sys.executable, "-c", program], timeout=0.4)
    separator = ": " if message == "empty" else " "
    assert str(caught.value) == f"command {sys.executable}{separator}{message}"
    assert caught.value.transient is transient


@pytest.mark.parametrize(
    ("program", "error"),
    [("/nonexistent/token-printer", "FileNotFoundError"), ("/etc", "PermissionError")],
)
def test_a_command_that_cannot_be_run_says_so(program: str, error: str) -> None:
    with pytest.raises(SecretError) as caught:
        _run([program])
    assert str(caught.value) == f"command {program} cannot be run: {error}"
    assert not caught.value.transient


# --- preflight (what `tokend check` says)


def test_preflight_of_a_command_looks_for_the_program() -> None:
    assert _options(command=[sys.executable, "-c", "pass"]).preflight() == []
    nowhere = _options(command=["no-such-token-printer", "--audience", "api"])
    assert nowhere.preflight() == [
        "command: no-such-token-printer is not an executable program here"
    ]


def test_preflight_of_a_token_file(tmp_path: Path) -> None:
    path = tmp_path / "azure-identity-token"
    options = _options(token_file=str(path))
    assert options.preflight() == [f"token_file {path} does not exist"]
    expired = datetime(2021, 3, 4, 5, 6, 7, tzinfo=UTC)
    path.write_text(jwt({"exp": int(expired.timestamp())}))
    assert options.preflight() == [
        f"token_file: the token in {path} expired at 2021-03-04T05:06:07Z: whatever should"
        " rotate it is not doing so"
    ]
    fresh = datetime.now(UTC) + timedelta(minutes=5)
    path.write_text(jwt({"exp": int(fresh.timestamp())}))
    assert options.preflight() == []
    path.write_text("opaque-token-without-an-expiry")
    assert options.preflight() == []


# --- the grant


def _grant(options: FederatedOptions) -> FederatedGrant:
    endpoint = Endpoint(token_url="https://login.example/t/oauth2/v2.0/token")
    return FederatedGrant(options, GrantContext(client_id="app-id", endpoint=endpoint))


def test_the_request_carries_the_token_as_client_assertion(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("federated.token.value\n")
    grant = _grant(_options(token_file=str(path)))
    target = Target(scopes=("api://crm/.default",))
    request = asyncio.run(grant.request("https://login.example/token", target))
    assert request == HttpRequest(
        "POST",
        "https://login.example/token",
        form={
            "grant_type": "client_credentials",
            "client_id": "app-id",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": "federated.token.value",
            "scope": "api://crm/.default",
        },
        headers={"Accept": "application/json"},
    )
    assert ASSERTION_TYPE == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert repr(grant) == "FederatedGrant(client_id='app-id')"


def test_the_request_from_a_command(tmp_path: Path) -> None:
    grant = _grant(_options(command=[sys.executable, "-c", "print('from.the.command')"]))
    request = asyncio.run(grant.request("https://t", Target(resource="https://crm.example")))
    assert request.form["client_assertion"] == "from.the.command"
    assert request.form["resource"] == "https://crm.example"


def test_the_source_version_follows_the_token_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    grant = _grant(_options(token_file=str(path)))
    assert asyncio.run(grant.source_version()) == "unreadable:secret_unavailable"
    path.write_text("first.token\n")
    first = asyncio.run(grant.source_version())
    assert first == hashlib.sha256(b"first.token").hexdigest()[:16]
    path.write_text("second.token")
    assert asyncio.run(grant.source_version()) == hashlib.sha256(b"second.token").hexdigest()[:16]
    command = _grant(_options(command=["/bin/false"]))
    assert asyncio.run(command.source_version()) == "command"


# --- from_environment: what the webhook's variables fill in

WEBHOOK = {
    "AZURE_CLIENT_ID": "env-client",
    "AZURE_TENANT_ID": "env-tenant",
    "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.us/",
}
ON = {"type": "federated", "from_environment": True}


@pytest.mark.parametrize(
    ("identity", "environ", "defaults"),
    [
        ({}, WEBHOOK, {"client_id": "env-client", "tenant": "env-tenant",
                       "authority_host": "https://login.microsoftonline.us/"}),
        ({"client_id": "mine"}, WEBHOOK, {"tenant": "env-tenant",
                                          "authority_host": "https://login.microsoftonline.us/"}),
        ({"tenant": "mine"}, WEBHOOK, {"client_id": "env-client",
                                       "authority_host": "https://login.microsoftonline.us/"}),
        ({"tenant": "t", "authority_host": "https://mine.example"}, WEBHOOK,
         {"client_id": "env-client"}),
        ({"token_endpoint": "https://idp.example/token"}, WEBHOOK, {"client_id": "env-client"}),
        ({"issuer": "https://idp.example"}, WEBHOOK, {"client_id": "env-client"}),
        ({"client_id": None}, {**WEBHOOK, "AZURE_AUTHORITY_HOST": ""},
         {"client_id": "env-client", "tenant": "env-tenant"}),
        ({"client_id": "c", "tenant": "t"}, {}, {}),
    ],
)  # fmt: skip
def test_identity_defaults_from_the_webhook(
    identity: dict[str, Any], environ: dict[str, str], defaults: dict[str, Any]
) -> None:
    assert FederatedOptions.identity_defaults(ON, identity, environ) == defaults


def test_identity_defaults_only_with_from_environment() -> None:
    assert FederatedOptions.identity_defaults({"type": "federated"}, {}, WEBHOOK) == {}
    off = {"type": "federated", "from_environment": "yes"}  # only true itself turns it on
    assert FederatedOptions.identity_defaults(off, {}, WEBHOOK) == {}


@pytest.mark.parametrize(
    ("identity", "environ", "line"),
    [
        ({}, {"AZURE_TENANT_ID": "t"},
         "credential.from_environment: AZURE_CLIENT_ID is not set and client_id is not given"),
        ({"client_id": "c"}, {"AZURE_TENANT_ID": ""},
         "credential.from_environment: AZURE_TENANT_ID is not set and tenant is not given"),
    ],
)  # fmt: skip
def test_a_missing_variable_names_the_key_to_write(
    identity: dict[str, Any], environ: dict[str, str], line: str
) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(line)}$"):
        FederatedOptions.identity_defaults(ON, identity, environ)


def test_a_token_file_this_user_may_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(As root nothing is unreadable: the refusal is made by hand.)"""
    path = tmp_path / "token"

    def refuse(path: Path) -> Any:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(federated, "open_regular_file", refuse)
    with pytest.raises(SecretError) as caught:
        read_token_file(path)
    assert str(caught.value) == f"token_file {path} is not readable by this user"


def test_a_command_reads_nothing_and_its_errors_go_nowhere(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Its standard input is empty even when tokend's has something to read, and what it
    writes to standard error never reaches tokend's (it may say anything)."""
    read, write = os.pipe()
    os.write(write, b"what tokend's stdin holds\n")
    os.close(write)
    saved = os.dup(0)
    os.dup2(read, 0)
    try:
        program = (
            "import sys; data = sys.stdin.read(); sys.stderr.write('CANARY-stderr');"
            " print('read-' + str(len(data)))"
        )
        token = _run([sys.executable, "-c", program])
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(read)
    assert token == "read-0"
    assert "CANARY-stderr" not in capfd.readouterr().err
