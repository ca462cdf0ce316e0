"""TokenClient against the fake Entra ID over real HTTP: dialects, client auth, failures."""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import time
from datetime import timedelta
from pathlib import Path
from typing import NoReturn
from urllib.parse import unquote

import jwt
import pytest

from tests.support import idp as faults
from tests.support.clock import FakeClock
from tests.support.idp import CLIENT_ID, CLIENT_SECRET, TENANT, FakeIdp, running_idp
from tests.support.pki import CertificateAuthority
from tests.support.requests import client_secret_request
from tokend import __version__
from tokend.oauth import (
    Endpoint,
    HttpSettings,
    PermanentError,
    TokenClient,
    TokenRequest,
    TransientError,
    http,
)
from tokend.token import Token
from tokend.transport import untrusting_context


def _request(
    idp: FakeIdp,
    *,
    version: int = 2,
    auth: str = "client_secret_post",
    secret: str = CLIENT_SECRET,
    endpoint: Endpoint | None = None,
) -> TokenRequest:
    return client_secret_request(
        endpoint or Endpoint(token_url=idp.token_url(version), allow_insecure_http=True),
        client_id=CLIENT_ID,
        secret=secret,
        auth_method=auth,
        resource="https://crm.example" if version == 1 else None,
        scopes=() if version == 1 else ("https://graph.example/.default",),
    )


def _acquire(request: TokenRequest, clock: FakeClock | None = None, **settings: float) -> Token:
    async def go() -> Token:
        client = TokenClient(HttpSettings(**settings), clock=clock or FakeClock())  # type: ignore[arg-type]
        try:
            return await client.acquire(request)
        finally:
            await client.aclose()

    return asyncio.run(go())


def _claims(idp: FakeIdp, token: Token) -> dict[str, object]:
    key = jwt.PyJWK(idp.provider.jwks()["keys"][0])
    return jwt.decode(
        token.value, key, algorithms=["RS256"], options={"verify_aud": False, "verify_exp": False}
    )  # type: ignore[no-any-return]


@pytest.mark.parametrize("auth", ["client_secret_post", "client_secret_basic"])
@pytest.mark.parametrize("version", [1, 2])
def test_dialects_and_client_auth(idp: FakeIdp, version: int, auth: str) -> None:
    clock = FakeClock()
    token = _acquire(_request(idp, version=version, auth=auth), clock)
    assert token.obtained_at == clock.now()
    assert token.expires_at == clock.now() + timedelta(hours=1)
    claims = _claims(idp, token)
    assert claims["aud"] == ("https://crm.example" if version == 1 else "https://graph.example")
    assert claims["ver"] == f"{version}.0"
    (sent,) = idp.token_requests
    assert sent.path.endswith("/oauth2/token" if version == 1 else "/oauth2/v2.0/token")
    assert sent.form["grant_type"] == "client_credentials"
    if version == 1:
        assert sent.form["resource"] == "https://crm.example"
    else:
        assert sent.form["scope"] == "https://graph.example/.default"
    if auth == "client_secret_basic":
        assert "client_secret" not in sent.form
        user, secret = base64.b64decode(sent.headers["authorization"][6:]).decode().split(":")
        assert (unquote(user), unquote(secret)) == (CLIENT_ID, CLIENT_SECRET)
    else:
        assert (sent.form["client_id"], sent.form["client_secret"]) == (CLIENT_ID, CLIENT_SECRET)


def test_discovery_finds_the_token_endpoint_once(idp: FakeIdp) -> None:
    request = _request(idp, endpoint=Endpoint(issuer=idp.issuer, allow_insecure_http=True))

    async def twice() -> list[Token]:
        client = TokenClient(clock=FakeClock())
        try:
            return [await client.acquire(request), await client.acquire(request)]
        finally:
            await client.aclose()

    tokens = asyncio.run(twice())
    assert len(tokens) == 2
    assert [r.path for r in idp.requests] == [
        f"/{TENANT}/v2.0/.well-known/openid-configuration",
        f"/{TENANT}/oauth2/v2.0/token",
        f"/{TENANT}/oauth2/v2.0/token",
    ]


def test_discovered_issuer_must_be_the_configured_one(idp: FakeIdp) -> None:
    configured = idp.issuer + "/"  # the same document is fetched, but its issuer differs
    request = _request(idp, endpoint=Endpoint(issuer=configured, allow_insecure_http=True))
    with pytest.raises(PermanentError) as caught:
        _acquire(request)
    assert f"names issuer '{idp.issuer}', not the configured '{configured}'" in str(caught.value)
    assert idp.token_requests == []


def test_missing_discovery_document_is_permanent(idp: FakeIdp) -> None:
    request = _request(
        idp, endpoint=Endpoint(issuer=idp.url + "/nowhere", allow_insecure_http=True)
    )
    with pytest.raises(PermanentError, match=r"no discovery document at .*/nowhere/\.well-known"):
        _acquire(request)


def test_wrong_secret_is_permanent_and_never_echoed(idp: FakeIdp) -> None:
    with pytest.raises(PermanentError) as caught:
        _acquire(_request(idp, secret="CANARY-wrong-secret"))
    error = caught.value
    assert error.error == "invalid_client"
    assert error.aadsts_codes == (7000215,)
    assert error.trace_id
    assert "CANARY" not in str(error) and "CANARY" not in repr(error)
    assert str(error).startswith("127.0.0.1: HTTP 401 invalid_client (AADSTS7000215)")


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (faults.too_many_requests("7"), "HTTP 429"),
        (faults.html(502), "HTTP 502 with a body that is not a JSON token response"),
        (faults.truncated_json(), "HTTP 200 with a body that is not JSON"),
        (faults.token_body({"token_type": "Bearer", "expires_in": 60}), "no access_token"),
        (faults.entra_error(503, "temporarily_unavailable", 50001), "temporarily_unavailable"),
    ],
)
def test_transient_failures(idp: FakeIdp, fault: faults.Fault, message: str) -> None:
    idp.fail(fault)
    with pytest.raises(TransientError, match=message):
        _acquire(_request(idp))


def test_retry_after_reaches_the_caller(idp: FakeIdp) -> None:
    idp.fail(faults.too_many_requests("7"))
    with pytest.raises(TransientError) as caught:
        _acquire(_request(idp))
    assert caught.value.retry_after == 7.0


def test_timeout_is_transient(idp: FakeIdp) -> None:
    idp.fail(faults.hang(1.0))
    with pytest.raises(TransientError, match="timed out"):
        _acquire(_request(idp), read_timeout=0.1)


def test_connection_refused_is_transient() -> None:
    request = client_secret_request(
        Endpoint(token_url="http://127.0.0.1:9/token", allow_insecure_http=True)
    )
    with pytest.raises(TransientError, match="ConnectError"):
        _acquire(request)


def test_expiry_counts_from_when_the_request_was_sent(idp: FakeIdp) -> None:
    """A response that takes 30 s to arrive still counts the lifetime from the send time."""
    clock = FakeClock()
    sent = clock.now()
    idp.fail(faults.meanwhile(lambda: clock.advance(30)))
    token = _acquire(_request(idp), clock)
    assert clock.now() == sent + timedelta(seconds=30)
    assert token.obtained_at == sent
    assert token.expires_at == sent + timedelta(hours=1)


def test_concurrent_requests_are_capped(idp: FakeIdp) -> None:
    """However many tokens are due at once, at most max_concurrent_requests are in flight."""
    in_flight = peak = 0

    async def slow_answer() -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)  # the identity provider being slow, not the test waiting
        in_flight -= 1

    idp.fail(*[slow_answer] * 8)

    async def burst() -> list[Token]:
        client = TokenClient(HttpSettings(max_concurrent_requests=3), clock=FakeClock())
        try:
            return await asyncio.gather(*(client.acquire(_request(idp)) for _ in range(8)))
        finally:
            await client.aclose()

    assert len(asyncio.run(burst())) == 8
    assert peak == 3


def test_the_whole_exchange_has_a_deadline(idp: FakeIdp) -> None:
    """A peer that drips one byte every 0.1 s never trips a per-read timeout; the deadline on
    the whole exchange (`http.timeout`) ends it anyway, long before the 4 s the body would take."""
    idp.fail(faults.drip(0.1, 40))
    started = time.monotonic()
    with pytest.raises(TransientError, match=r"timed out: no complete answer within 0\.5s"):
        _acquire(_request(idp), read_timeout=0.5)
    assert time.monotonic() - started < 3


def test_requests_say_who_sends_them(idp: FakeIdp) -> None:
    _acquire(_request(idp))
    (sent,) = idp.token_requests
    assert sent.headers["user-agent"] == f"tokend/{__version__}"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1", "[::ffff:127.0.0.1]"])
def test_loopback_requests_never_go_through_a_proxy(
    idp: FakeIdp, monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    """With HTTP_PROXY set and no NO_PROXY, a request to the loopback IdP (client secret and
    all) goes straight there, not to the proxy, however the address is spelled."""
    url = idp.token_url(2).replace("127.0.0.1", host, 1)
    request = _request(idp, endpoint=Endpoint(token_url=url, allow_insecure_http=True))
    with socket.socket() as proxy:
        proxy.bind(("127.0.0.1", 0))
        proxy.listen()
        proxy.setblocking(False)
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.getsockname()[1]}")
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        token = _acquire(request)
        with pytest.raises(BlockingIOError):
            proxy.accept()  # nobody connected to the proxy
    assert token.value.startswith("eyJ")


def test_an_https_identity_provider_with_the_configured_ca(tmp_path: Path) -> None:
    """Over TLS the configured CA bundle is what is trusted: a server certificate it signed is
    accepted, and the system store alone refuses it (transient: the network's fault, or a CA
    bundle to fix, not the credential's)."""
    authority = CertificateAuthority(tmp_path)
    with running_idp(tls=authority.issue("idp", "127.0.0.1", server_ips=("127.0.0.1",))) as idp:
        assert idp.url.startswith("https://")
        trusted = Endpoint(token_url=idp.token_url(2), ca_bundle=authority.cert)
        token = _acquire(_request(idp, endpoint=trusted))
        assert token.value.startswith("eyJ")
        with pytest.raises(TransientError) as refused:
            _acquire(_request(idp, endpoint=Endpoint(token_url=idp.token_url(2))))
        assert str(refused.value) == (
            "127.0.0.1: TLS: the server's certificate is not trusted (unable to get local issuer "
            "certificate); if a private CA signed it, set ca_bundle (the identity's or "
            "http.ca_bundle) to that CA's certificate"
        )


def test_plain_http_loads_no_ca_store(idp: FakeIdp, monkeypatch: pytest.MonkeyPatch) -> None:
    """A loopback `http://` provider (tokend dev, tests) costs no CA store load before the first
    token; a client for it trusts no CA, so it could not verify a TLS peer by mistake."""

    def no_ca_store(ca_bundle: object) -> NoReturn:
        raise AssertionError("a CA store was loaded for a plain-http request")

    monkeypatch.setattr(http, "ssl_context", no_ca_store)
    assert _acquire(_request(idp)).value.startswith("eyJ")
    assert untrusting_context().get_ca_certs() == []
    assert untrusting_context().verify_mode == ssl.CERT_REQUIRED
