"""The parts of delegated sign-in that need no identity provider: sealed files, what a refusal
means, finding a password identity by its user."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from tests.support.clock import FakeClock
from tests.support.servers import serve
from tokend.oauth.device_code import DeviceCode, DeviceFlowError, request_device_code
from tokend.oauth.errors import Peer, PermanentError, TransientError
from tokend.oauth.grants.client_secret import ClientSecretOptions
from tokend.oauth.grants.delegated import advise, refresh_token_is_dead
from tokend.oauth.grants.password import PasswordOptions, identities_of_user
from tokend.oauth.http import Clients
from tokend.seal import Sealer, SealError
from tokend.sealed import SealedFiles, UnusableFile

PEER = Peer("crm", "login.example")


def _refusal(error: str, *codes: int) -> PermanentError:
    return PermanentError(PEER, f"HTTP 400 {error}", code=error, error=error, aadsts_codes=codes)


def test_sealed_files_are_private_bound_and_versioned(tmp_path: Path) -> None:
    files = SealedFiles(tmp_path / "state" / "kept", Sealer("key-one"))
    assert files.read("user", "bound to user") is None
    assert files.version("user") == "absent"
    files.write("user", "bound to user", b"secret bytes")
    first = files.version("user")
    assert files.read("user", "bound to user") == b"secret bytes"
    assert b"secret bytes" not in files.path("user").read_bytes()
    assert oct(files.path("user").stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "state").stat().st_mode & 0o777) == "0o700"
    assert oct(files.directory.stat().st_mode & 0o777) == "0o700"
    with pytest.raises(SealError):
        files.read("user", "bound to another user")  # a copy under another name does not open
    with pytest.raises(SealError):
        SealedFiles(files.directory, Sealer("key-two")).read("user", "bound to user")
    files.write("user", "bound to user", b"newer")
    assert files.version("user") != first
    os.chmod(files.path("user"), 0o644)
    with pytest.raises(UnusableFile, match="lets other users have it read or written"):
        files.read("user", "bound to user")
    files.path("user").write_text(json.dumps({"format": 99}))
    os.chmod(files.path("user"), 0o600)
    with pytest.raises(UnusableFile, match="not a sealed file of this tokend"):
        files.read("user", "bound to user")
    files.remove("user")
    assert files.version("user") == "absent"


@pytest.mark.parametrize(
    ("error", "dead"),
    [
        (_refusal("invalid_grant", 70000), True),  # spent already, or malformed
        (_refusal("invalid_grant", 700082), True),  # expired
        (_refusal("invalid_grant", 50173), True),  # the password changed since
        (_refusal("invalid_grant"), True),  # any OAuth2 server
        (_refusal("invalid_grant", 65001), False),  # consent for one API: the token is fine
        (_refusal("invalid_grant", 50076), False),  # MFA for one API
        (_refusal("invalid_client", 7000215), False),
        (TransientError(PEER, "HTTP 503", code="http_503"), False),
    ],
)
def test_which_refusals_mean_the_refresh_token_is_dead(error: object, dead: bool) -> None:
    assert refresh_token_is_dead(error) is dead  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("code", "says"),
    [
        (50076, "multi-factor authentication is required for this user"),
        (50079, "must register for multi-factor authentication"),
        (65001, "grant admin consent"),
        (53003, "Conditional Access"),
        (50126, "wrong username or password"),
        (50053, "the account is locked"),
        (50055, "the password has expired"),
        (50057, "disabled"),
        (50034, "no such user"),
        (7000218, "not a public client"),
    ],
)
def test_refusals_of_a_user_say_what_to_do(code: int, says: str) -> None:
    advised = advise(_refusal("invalid_grant", code))
    assert str(advised).startswith("login.example: HTTP 400 invalid_grant; ")
    assert says in str(advised)
    assert advised.code == "invalid_grant"  # the same problem, whatever the advice


def test_other_errors_are_left_as_they_are() -> None:
    plain = _refusal("invalid_client", 7000215)
    assert advise(plain) is plain
    transient = TransientError(PEER, "HTTP 503", code="http_503")
    assert advise(transient) is transient


def test_a_password_identity_is_found_by_its_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOB", "Bob@Contoso.example")

    def password(username: object) -> PasswordOptions:
        return PasswordOptions.model_validate(
            {"type": "password", "username": username, "password": {"env": "UNSET_PASSWORD"}}
        )

    credentials = {
        "alice": password("alice@contoso.example"),
        "bob": password({"env": "BOB"}),
        "broken": password({"env": "UNSET_USER"}),
        "app": ClientSecretOptions.model_validate({"type": "client_secret", "secret": "x1y2"}),
    }
    found = asyncio.run(identities_of_user(credentials, "BOB@contoso.EXAMPLE"))
    assert found == ["bob"]
    assert asyncio.run(identities_of_user(credentials, "alice@contoso.example")) == ["alice"]
    assert asyncio.run(identities_of_user(credentials, "carol@contoso.example")) == []


def _device_code_answer(body: object, status: int = 200) -> DeviceCode | str:
    """What `request_device_code` makes of `body`, served over loopback."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse(body, status_code=status)(scope, receive, send)

    async def ask(url: str) -> DeviceCode | str:
        http = Clients(deadline=5, connect_timeout=5, max_connections=1)
        try:
            return await request_device_code(http, url, "app", ("s",), clock=FakeClock())
        except DeviceFlowError as exc:
            return str(exc)
        finally:
            await http.aclose()

    with serve(app) as base:
        return asyncio.run(ask(f"{base}/t/oauth2/v2.0/devicecode"))


GOOD = {
    "device_code": "dc-1",
    "user_code": "ABCD-EFGH",
    "verification_uri": "https://microsoft.com/devicelogin",
    "expires_in": 900,
    "interval": 5,
}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (GOOD, DeviceCode("dc-1", "ABCD-EFGH", "https://microsoft.com/devicelogin", 900, 5)),
        (
            {**GOOD, "expires_in": "900", "interval": "3"},
            DeviceCode("dc-1", "ABCD-EFGH", "https://microsoft.com/devicelogin", 900, 3),
        ),
        (
            {k: v for k, v in GOOD.items() if k != "interval"},
            DeviceCode("dc-1", "ABCD-EFGH", "https://microsoft.com/devicelogin", 900, 5),
        ),
        (
            {**GOOD, "interval": 0},
            DeviceCode("dc-1", "ABCD-EFGH", "https://microsoft.com/devicelogin", 900, 1),
        ),
        ({**GOOD, "user_code": "AB\nCD"}, "user_code is missing or malformed"),
        (
            {**GOOD, "verification_uri": "javascript:alert(1)"},
            "verification_uri is missing or malformed",
        ),
        ({**GOOD, "expires_in": -1}, "expires_in is missing or not a sane number of seconds"),
        ({**GOOD, "device_code": None}, "device_code is missing or malformed"),
    ],
)
def test_device_code_answers_are_checked(body: dict[str, object], expected: object) -> None:
    got = _device_code_answer(body)
    if isinstance(expected, str):
        assert isinstance(got, str) and expected in got
    else:
        assert got == expected


def test_a_refused_device_code_request_says_why() -> None:
    body = {
        "error": "invalid_client",
        "error_codes": [7000218],
        "error_description": "AADSTS7000218: no",
    }
    got = _device_code_answer(body, status=400)
    assert (
        got
        == "no device code: 127.0.0.1: HTTP 400 invalid_client (AADSTS7000218) - AADSTS7000218: no"
    )
