"""The delegated grants (device login, password) without an identity provider: the exact
request each builds, what a refusal becomes (the line, the code, the host), what `tokend login`
asks for, and secrets read through shared clients. Sealed state lives in tmp_path."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tokend.oauth.dialects import Endpoint, Target
from tokend.oauth.errors import Peer, PermanentError, TransientError
from tokend.oauth.grants.base import GrantContext, HttpRequest
from tokend.oauth.grants.client_secret import ClientSecretOptions, basic_authorization
from tokend.oauth.grants.delegated import (
    DelegatedOptions,
    advise,
    endpoint_authority,
    with_reason,
)
from tokend.oauth.grants.device_login import (
    LOGIN_REQUIRED,
    DeviceLoginGrant,
    DeviceLoginOptions,
    LoginRequired,
)
from tokend.oauth.grants.password import (
    PasswordGrant,
    PasswordOptions,
    PlainValue,
    identities_of_user,
)
from tokend.oauth.grants.signin import refresh_token_files
from tokend.seal import Sealer
from tokend.sealed import SealedFiles
from tokend.secrets import Secret, SecretError, SecretReference

T = TypeVar("T")
V2 = "https://login.example/tenant-1/oauth2/v2.0/token"
V1 = "https://login.example/tenant-1/oauth2/token"
GRAPH = Target(scopes=("https://graph.example/User.Read",))


def run(make: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(make())  # type: ignore[arg-type]


def _kept(tmp_path: Path) -> SealedFiles:
    return refresh_token_files(tmp_path / "state", Sealer("state-key"))


def _device(
    tmp_path: Path | None, token_url: str | None = V2, identity: str = "user", **options: Any
) -> DeviceLoginGrant:
    endpoint = Endpoint(token_url=token_url, issuer=None if token_url else "https://idp.example")
    context = GrantContext(
        client_id="public-app",
        endpoint=endpoint,
        identity=identity,
        kept=_kept(tmp_path) if tmp_path else None,
    )
    return DeviceLoginGrant(
        DeviceLoginOptions.model_validate({"type": "device_login", **options}), context
    )


def _refusal(error: str, *codes: int, name: str = "crm") -> PermanentError:
    return PermanentError(
        Peer(name, "login.example"),
        f"HTTP 400 {error} (AADSTS{codes[0] if codes else 0})",
        code=f"{error}/{codes[0]}" if codes else error,
        error=error,
        aadsts_codes=codes,
        trace_id="trace-1",
        correlation_id="corr-1",
    )


# --- device login


def test_a_device_login_refreshes_with_the_stored_token(tmp_path: Path) -> None:
    grant = _device(tmp_path)

    async def scenario() -> HttpRequest:
        assert await grant.store_login({"refresh_token": "rt-stored"}) is True
        async with grant.exchange():
            return await grant.request(V2, GRAPH)

    assert run(scenario) == HttpRequest(
        "POST",
        V2,
        form={
            "grant_type": "refresh_token",
            "refresh_token": "rt-stored",
            "client_id": "public-app",
            "scope": "https://graph.example/User.Read offline_access",
        },
        headers={"Accept": "application/json"},
    )


@pytest.mark.parametrize(
    ("body", "stored"),
    [
        ({"refresh_token": "rt-1"}, True),
        ({}, False),
        ({"refresh_token": 7}, False),
        ({"refresh_token": "two words"}, False),
        ({"refresh_token": ""}, False),
    ],
)
def test_a_login_stores_only_a_refresh_token(
    tmp_path: Path, body: dict[str, Any], stored: bool
) -> None:
    grant = _device(tmp_path)

    async def scenario() -> tuple[bool, str]:
        return await grant.store_login(body), await grant.source_version()

    result, version = run(scenario)
    assert result is stored
    assert (version != "absent") is stored


@pytest.mark.parametrize(
    ("stored", "kept", "why"),
    [
        (False, True, "no refresh token is stored for it"),
        (False, False, "its refresh token cannot be read: state_key is unreadable"),
    ],
)
def test_without_a_refresh_token_a_login_is_required(
    tmp_path: Path, stored: bool, kept: bool, why: str
) -> None:
    grant = _device(tmp_path if kept else None)

    async def scenario() -> None:
        async with grant.exchange():
            await grant.request(V2, GRAPH)

    with pytest.raises(LoginRequired) as caught:
        run(scenario)
    assert str(caught.value) == f"identity 'user': {why}"
    assert caught.value.code == LOGIN_REQUIRED == "login_required"


def test_a_damaged_file_says_why_a_login_is_required(tmp_path: Path) -> None:
    grant = _device(tmp_path)
    kept = _kept(tmp_path)
    kept.write("user", "bound to something else", b"{}")

    async def scenario() -> None:
        async with grant.exchange():
            await grant.request(V2, GRAPH)

    with pytest.raises(LoginRequired) as caught:
        run(scenario)
    assert str(caught.value).startswith(
        "identity 'user': the stored refresh token does not open with this state_key"
    )


def test_what_a_device_login_reports(tmp_path: Path) -> None:
    grant = _device(tmp_path)
    required = LoginRequired("identity 'user': no refresh token is stored for it")
    wrapped = PermanentError(Peer("crm", "config"), str(required), code=LOGIN_REQUIRED)

    async def failed(error: Any) -> Any:
        async with grant.exchange() as exchange:
            return exchange.failed(error)

    reported = run(lambda: failed(wrapped))
    assert str(reported) == (
        "login.example: identity 'user': no refresh token is stored for it: sign in with"
        " `tokend login crm` (as tokend's user)"
    )
    assert (reported.code, reported.peer) == (LOGIN_REQUIRED, Peer("crm", "login.example"))
    mfa = _refusal("interaction_required", 50076)
    advised = run(lambda: failed(mfa))
    assert str(advised) == (
        "login.example: HTTP 400 interaction_required (AADSTS50076); sign in again with"
        " `tokend login crm`"
    )
    assert (advised.code, advised.trace_id) == ("interaction_required/50076", "trace-1")
    consent = run(lambda: failed(_refusal("invalid_grant", 65001)))
    assert "consent is missing" in str(consent)
    transient = TransientError(Peer("crm", "login.example"), "HTTP 503", code="http_503")
    assert run(lambda: failed(transient)) is transient


def test_a_dead_stored_token_needs_a_new_login(tmp_path: Path) -> None:
    grant = _device(tmp_path)

    async def scenario() -> Any:
        await grant.store_login({"refresh_token": "rt-dead"})
        async with grant.exchange() as exchange:
            await grant.request(V2, GRAPH)
            reported = exchange.failed(_refusal("invalid_grant", 70000))
        return reported, await grant.source_version()

    reported, version = run(scenario)
    assert str(reported) == (
        "login.example: the stored refresh token was refused (HTTP 400 invalid_grant"
        " (AADSTS70000)): sign in with `tokend login crm` (as tokend's user)"
    )
    assert reported.code == LOGIN_REQUIRED
    assert version == "absent"  # the dead token's file is gone


@pytest.mark.parametrize(
    ("token_url", "device_url", "poll_url"),
    [
        (V2, "https://login.example/tenant-1/oauth2/v2.0/devicecode", V2),
        (V1, "https://login.example/tenant-1/oauth2/v2.0/devicecode", V2),
        ("https://idp.example/token", "https://idp.example/device", "https://idp.example/token"),
        (None, "https://idp.example/device", None),
    ],
)
def test_where_tokend_login_asks(token_url: str | None, device_url: str, poll_url: str) -> None:
    grant = _device(None, token_url, device_authorization_endpoint="https://idp.example/device")
    assert grant.device_authorization_url() == device_url
    assert grant.device_token_url() == poll_url
    assert repr(grant) == "DeviceLoginGrant(client_id='public-app')"


@pytest.mark.parametrize(
    ("target", "scopes"),
    [
        (GRAPH, ("https://graph.example/User.Read", "offline_access", "openid", "profile")),
        (Target(resource="https://crm.example/"),
         ("https://crm.example/.default", "offline_access", "openid", "profile")),
        (Target(scopes=("openid", "api://x/read")), ("openid", "api://x/read", "offline_access",
                                                      "profile")),
    ],
)  # fmt: skip
def test_what_tokend_login_signs_in_for(target: Target, scopes: tuple[str, ...]) -> None:
    assert _device(None).login_scopes(target) == scopes


# --- what every delegated grant shares


def test_with_reason_keeps_everything_but_the_line() -> None:
    error = _refusal("invalid_grant", 50126, 50053)
    changed = with_reason(error, "another line")
    assert (str(changed), changed.code, changed.error) == (
        "login.example: another line",
        "invalid_grant/50126",
        "invalid_grant",
    )
    assert (changed.aadsts_codes, changed.trace_id, changed.correlation_id) == (
        (50126, 50053),
        "trace-1",
        "corr-1",
    )
    assert with_reason(error, "x", code="other").code == "other"


def test_mfa_advice_says_where_only_when_given() -> None:
    error = _refusal("interaction_required", 50076)
    assert str(advise(error)).endswith("multi-factor authentication is required for this user")
    assert str(advise(error, " (at x)")).endswith("required for this user (at x)")


@pytest.mark.parametrize(
    ("url", "authority"),
    [
        (V2, "https://login.example/tenant-1"),
        (V1, "https://login.example/tenant-1"),
        ("https://idp.example/token", ""),
        (None, ""),
    ],
)
def test_the_entra_authority_of_an_endpoint(url: str | None, authority: str) -> None:
    assert endpoint_authority(Endpoint(token_url=url)) == authority


def test_delegated_scopes_must_name_an_api() -> None:
    options = DeviceLoginOptions.model_validate({"type": "device_login"})
    line = (
        "name the API's delegated permissions, e.g. https://graph.microsoft.com/User.Read "
        "(offline_access and openid alone ask for no API)"
    )
    assert options.entra_scopes_problem(("openid", "offline_access", "profile", "email")) == line
    assert options.entra_scopes_problem(()) == line
    assert options.entra_scopes_problem(("openid", "https://graph.example/Mail.Read")) is None
    assert isinstance(options, DelegatedOptions) and options.keeps_refresh_tokens()


# --- password


class FromStore(SecretReference):
    """A secret read through a shared client (as `{vault: ...}` is)."""

    key: str = ""

    def describe(self) -> str:
        return "test store"

    def resolve(self, resources: Any = None) -> Secret:
        if resources is None:
            raise SecretError("test store: no shared client", transient=True)
        if self.key not in resources:
            raise SecretError(f"test store: nothing under {self.key}", transient=True)
        return Secret(resources[self.key])


def _password(tmp_path: Path, resources: Any = None, **options: Any) -> PasswordGrant:
    context = GrantContext(
        client_id="public-app",
        endpoint=Endpoint(token_url=V2),
        resources=resources,
        identity="ann",
        kept=_kept(tmp_path),
    )
    parsed = PasswordOptions.model_construct(
        type="password",
        username=options.pop("username", FromStore(key="user")),
        password=options.pop("password", FromStore(key="pw")),
        client_secret=options.pop("client_secret", None),
        auth_method=options.pop("auth_method", "client_secret_post"),
        refresh_tokens=options.pop("refresh_tokens", True),
    )
    return PasswordGrant(parsed, context)


STORE = {"user": "ann@contoso.example", "pw": "pw-1"}


def test_the_password_request_reads_its_secrets_through_the_shared_clients(
    tmp_path: Path,
) -> None:
    grant = _password(tmp_path, STORE)

    async def scenario() -> tuple[HttpRequest, str]:
        async with grant.exchange():
            request = await grant.request(V2, GRAPH)
        return request, await grant.source_version()

    request, version = run(scenario)
    assert request.form == {
        "grant_type": "password",
        "client_id": "public-app",
        "username": "ann@contoso.example",
        "password": "pw-1",
        "scope": "https://graph.example/User.Read offline_access",
    }
    parts = version.split("/")
    assert len(parts) == 3 and parts[-1] == "absent"


def requesting(grant: PasswordGrant) -> Callable[[], Awaitable[None]]:
    async def scenario() -> None:
        async with grant.exchange():
            await grant.request(V2, GRAPH)

    return scenario


@pytest.mark.parametrize(
    ("store", "line"),
    [
        (None, "username: test store: no shared client"),
        ({"user": "ann@contoso.example"}, "password: test store: nothing under pw"),
    ],
)
def test_an_unreadable_secret_names_what_it_is_for(
    tmp_path: Path, store: dict[str, str] | None, line: str
) -> None:
    with pytest.raises(SecretError) as caught:
        run(requesting(_password(tmp_path, store)))
    assert str(caught.value) == line
    assert caught.value.transient is True


def test_a_dead_refresh_token_falls_back_to_the_password_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    grant = _password(tmp_path, STORE)

    async def scenario() -> Any:
        async with grant.exchange():
            await grant.request(V2, GRAPH)
            grant.absorb({"refresh_token": "rt-1"})
        async with grant.exchange() as exchange:
            refresh = await grant.request(V2, GRAPH)
            assert refresh.form["grant_type"] == "refresh_token"
            again = exchange.failed(_refusal("invalid_grant", 70000, name="me"))
            retry = await grant.request(V2, GRAPH)
        return again, retry

    with caplog.at_level(logging.WARNING, logger="tokend.oauth"):
        again, retry = run(scenario)
    assert again is None and retry.form["grant_type"] == "password"
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "identity 'ann': its refresh token was refused as dead (login.example: HTTP 400"
        " invalid_grant (AADSTS70000)); signing in with the password"
    ]


def test_a_refused_password_is_reported_again_without_sending_it(tmp_path: Path) -> None:
    grant = _password(tmp_path, STORE, refresh_tokens=False)
    wrong = _refusal("invalid_grant", 50126)

    async def scenario() -> Any:
        async with grant.exchange() as exchange:
            await grant.request(V2, GRAPH)
            reported = exchange.failed(wrong)
        async with grant.exchange():
            with pytest.raises(PermanentError) as caught:
                await grant.request(V2, GRAPH)
        return reported, caught.value

    reported, again = run(scenario)
    assert str(again) == str(reported)
    assert again.code == reported.code == "invalid_grant/50126"
    assert "wrong username or password" in str(again)


def test_only_kept_and_valid_refresh_tokens_are_absorbed(tmp_path: Path) -> None:
    async def held(grant: PasswordGrant, body: dict[str, Any]) -> str | None:
        async with grant.exchange():
            grant.absorb(body)
        return grant.sign_in().current()

    keeping = _password(tmp_path / "a", STORE)
    assert run(lambda: held(keeping, {"refresh_token": "rt-ok"})) == "rt-ok"
    assert run(lambda: held(_password(tmp_path / "b", STORE), {"refresh_token": "a b"})) is None
    off = _password(tmp_path / "c", STORE, refresh_tokens=False)
    assert run(lambda: held(off, {"refresh_token": "rt-ok"})) is None


def test_identities_are_found_by_their_user_through_the_shared_clients() -> None:
    def password(key: str) -> PasswordOptions:
        return PasswordOptions.model_construct(
            type="password", username=FromStore(key=key), password=FromStore(key="pw")
        )

    app = ClientSecretOptions.model_validate({"type": "client_secret", "secret": "s3cr3t-x"})
    credentials = {
        "app": app,
        "first": password("missing"),
        "ann": password("user"),
        "also": password("u2"),
    }
    store = {"user": "Ann@Contoso.example", "u2": "ann@contoso.EXAMPLE", "pw": "x"}
    found = run(lambda: identities_of_user(credentials, "ann@contoso.example", store))  # type: ignore[arg-type]
    assert found == ["ann", "also"]


def test_the_whole_password_request_of_a_confidential_client(tmp_path: Path) -> None:
    store = {**STORE, "secret": "app-secret"}
    basic = _password(tmp_path, store, client_secret=FromStore(key="secret"),
                      auth_method="client_secret_basic")  # fmt: skip
    post = _password(tmp_path / "post", store, client_secret=FromStore(key="secret"))
    password = {"grant_type": "password", "username": "ann@contoso.example", "password": "pw-1",
                "scope": "https://graph.example/User.Read offline_access"}  # fmt: skip
    assert run(lambda: requested(basic)) == HttpRequest(
        "POST",
        V2,
        form=password,
        headers={
            "Accept": "application/json",
            "Authorization": basic_authorization("public-app", "app-secret"),
        },
    )
    assert run(lambda: requested(post)) == HttpRequest(
        "POST",
        V2,
        form={**password, "client_id": "public-app", "client_secret": "app-secret"},
        headers={"Accept": "application/json"},
    )
    broken = _password(tmp_path / "b", STORE, client_secret=FromStore(key="secret"))
    with pytest.raises(SecretError, match=r"^client secret: test store: nothing under secret$"):
        run(lambda: requested(broken))


async def requested(grant: PasswordGrant) -> HttpRequest:
    async with grant.exchange():
        return await grant.request(V2, GRAPH)


def test_a_stored_refresh_token_is_not_used_once_refresh_tokens_are_off(tmp_path: Path) -> None:
    keeping = _password(tmp_path, STORE)

    async def keep() -> None:
        async with keeping.exchange():
            await keeping.request(V2, GRAPH)
            keeping.absorb({"refresh_token": "rt-from-before"})

    run(keep)
    off = _password(tmp_path, STORE, refresh_tokens=False)
    assert run(lambda: requested(off)).form["grant_type"] == "password"


def test_a_transient_failure_of_a_password_request_is_passed_on(tmp_path: Path) -> None:
    grant = _password(tmp_path, STORE)
    busy = TransientError(Peer("crm", "login.example"), "HTTP 503", code="http_503")

    async def scenario() -> Any:
        async with grant.exchange() as exchange:
            await grant.request(V2, GRAPH)
            reported = exchange.failed(busy)
        return reported, await requested(grant)  # the same password is sent again

    reported, again = run(scenario)
    assert reported is busy
    assert again.form["grant_type"] == "password"


def test_the_password_grants_version_reads_through_the_shared_clients(tmp_path: Path) -> None:
    version = run(_password(tmp_path, STORE).source_version)
    assert not any(part.startswith("unreadable") for part in version.split("/"))
    assert version.split("/")[0] == hashlib.sha256(b"ann@contoso.example").hexdigest()[:16]


def test_a_username_written_in_the_config_is_a_plain_value() -> None:
    options = PasswordOptions.model_validate(
        {"type": "password", "username": "ann@contoso.example", "password": {"env": "P"}}
    )
    assert isinstance(options.username, PlainValue)
    assert options.username.describe() == "value in the config"


@pytest.mark.parametrize(
    ("target", "scopes"),
    [
        (Target(resource="https://r.example", scopes=("api://x/read",)),
         ("api://x/read", "offline_access", "openid", "profile")),
        (Target(resource="https://apiX"),
         ("https://apiX/.default", "offline_access", "openid", "profile")),
    ],
)  # fmt: skip
def test_login_scopes_prefer_the_scopes_and_keep_the_resource_whole(
    target: Target, scopes: tuple[str, ...]
) -> None:
    assert _device(None).login_scopes(target) == scopes
