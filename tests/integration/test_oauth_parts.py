"""Token-client paths the end-to-end tests pass through without pinning them: a secret that
cannot be read, every way a discovery document can fail (each with its exact message and
code), lifetimes read from a JWT's `exp`, and the HTTP Basic credential's encoding."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from tests.support import idp as faults
from tests.support.clock import FakeClock
from tests.support.idp import CLIENT_ID, CLIENT_SECRET, FakeIdp
from tests.support.requests import client_secret_request
from tests.support.servers import serve
from tokend.oauth import (
    Endpoint,
    HttpRequest,
    PermanentError,
    Target,
    TokenClient,
    TokenError,
    TokenRequest,
    TransientError,
)
from tokend.oauth.dialects import endpoint_for, entra_token_url
from tokend.oauth.grants import GrantContext
from tokend.oauth.grants.client_secret import (
    ClientSecretGrant,
    ClientSecretOptions,
    basic_authorization,
)
from tokend.oauth.response import MalformedResponse, parse_token_response
from tokend.secrets import Secret, SecretError, SecretReference

SENT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class UnreadableSecretGrant:
    """A grant whose secret cannot be read (a missing file, Vault down)."""

    client_id = "client"

    def __init__(self, transient: bool) -> None:
        self.endpoint = Endpoint(token_url="https://idp.example/token")
        self._transient = transient

    async def request(self, token_url: str, target: Target) -> HttpRequest:
        raise SecretError("client secret: file /run/secret is missing", transient=self._transient)

    def absorb(self, body: Mapping[str, Any]) -> None:
        return None


def _acquire(request: TokenRequest) -> Any:
    async def go() -> Any:
        client = TokenClient(clock=FakeClock())
        try:
            return await client.acquire(request)
        finally:
            await client.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize(("transient", "kind"), [(True, TransientError), (False, PermanentError)])
def test_an_unreadable_secret_fails_the_request_before_anything_is_sent(
    transient: bool, kind: type
) -> None:
    with pytest.raises(TokenError) as caught:
        _acquire(TokenRequest("crm", UnreadableSecretGrant(transient)))  # type: ignore[arg-type]
    error = caught.value
    assert type(error) is kind
    assert str(error) == "config: client secret: file /run/secret is missing"
    assert (error.code, error.transient) == ("secret_unavailable", transient)
    assert (error.peer.token, error.peer.host) == ("crm", "config")


class DiscoveryServer:
    """Answers the discovery document with whatever the test sets; records what was asked."""

    def __init__(self) -> None:
        self.response: Response = Response(status_code=404)
        self.seen: list[tuple[str, str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        self.seen.append((request.method, request.url.path, request.headers.get("accept", "")))
        await self.response(scope, receive, send)


@pytest.fixture(scope="module")
def discovery() -> Iterator[tuple[DiscoveryServer, str]]:
    server = DiscoveryServer()
    with serve(server) as url:
        yield server, url


class NoGrant(UnreadableSecretGrant):
    def __init__(self, issuer: str) -> None:
        self.endpoint = Endpoint(issuer=issuer, allow_insecure_http=True)


def _discover(discovery: tuple[DiscoveryServer, str], response: Response) -> TokenError:
    server, url = discovery
    server.response = response
    server.seen.clear()
    with pytest.raises(TokenError) as caught:
        _acquire(TokenRequest("crm", NoGrant(f"{url}/tenantX/")))  # type: ignore[arg-type]
    assert server.seen == [("GET", "/tenantX/.well-known/openid-configuration", "application/json")]
    return caught.value


def test_discovery_failures_say_exactly_what_went_wrong(
    discovery: tuple[DiscoveryServer, str],
) -> None:
    url = discovery[1]
    document = f"{url}/tenantX/.well-known/openid-configuration"

    missing = _discover(discovery, Response(status_code=404))
    assert isinstance(missing, PermanentError)
    assert str(missing) == f"127.0.0.1: no discovery document at {document} (HTTP 404)"
    assert missing.code == "no_discovery"

    later = {"Retry-After": "Thu, 01 Jan 2026 00:00:30 GMT"}  # the fake clock's now + 30 s
    busy = _discover(discovery, JSONResponse({}, status_code=503, headers=later))
    assert isinstance(busy, TransientError)
    assert (str(busy), busy.code, busy.retry_after) == (
        "127.0.0.1: HTTP 503 no error code",
        "http_503",
        30.0,
    )
    assert busy.peer.token == "crm"

    moved = _discover(discovery, Response(status_code=300))
    assert isinstance(moved, PermanentError)
    assert moved.code == "http_300"

    other = _discover(discovery, JSONResponse({"issuer": "https://elsewhere.example"}))
    assert isinstance(other, PermanentError)
    assert other.code == "issuer_mismatch"
    assert str(other) == (
        f"127.0.0.1: discovery document {document} names issuer 'https://elsewhere.example', "
        f"not the configured '{url}/tenantX/'; they must be identical (RFC 8414 section 3.3): "
        "set issuer to the published value, or use token_endpoint"
    )
    html = _discover(discovery, Response("<html>proxy</html>", media_type="text/html"))
    assert isinstance(html, PermanentError)
    assert html.code == "issuer_mismatch"
    assert "names issuer None" in str(html)

    issuer = f"{url}/tenantX/"
    incomplete = _discover(discovery, JSONResponse({"issuer": issuer}))
    assert isinstance(incomplete, TransientError)
    assert str(incomplete) == f"127.0.0.1: no token_endpoint in discovery document {document}"
    assert incomplete.code == "discovery_incomplete"

    plain = _discover(
        discovery, JSONResponse({"issuer": issuer, "token_endpoint": "http://idp.example/t"})
    )
    assert isinstance(plain, PermanentError)
    assert str(plain) == (
        "127.0.0.1: discovered token_endpoint: 'http://idp.example/t' uses plain http; "
        "https is required except for loopback addresses"
    )
    assert plain.code == "insecure_endpoint"


def _jwt(payload: object) -> str:
    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part(payload)}.sig"


NO_EXPIRY = "response has no expires_in or expires_on, and the token is not a JWT with exp"


@pytest.mark.parametrize(
    ("payload", "outcome"),
    [
        ({"exp": int((SENT + timedelta(hours=1)).timestamp())}, SENT + timedelta(hours=1)),
        (
            {"exp": int((SENT + timedelta(hours=1)).timestamp()), "x": "ab"},
            SENT + timedelta(hours=1),
        ),
        (
            {"exp": int((SENT + timedelta(hours=1)).timestamp()), "x": "a"},
            SENT + timedelta(hours=1),
        ),
        ({"exp": int((SENT + timedelta(hours=1)).timestamp()), "x": ""}, SENT + timedelta(hours=1)),
        ({"exp": 1}, "token is already expired on arrival"),
        ({"exp": 0}, NO_EXPIRY),
        ({"exp": -5}, NO_EXPIRY),
        ({"exp": True}, NO_EXPIRY),
        ({"exp": "1900000000"}, NO_EXPIRY),
        ([1, 2], NO_EXPIRY),
        ("exp", NO_EXPIRY),
    ],
)
def test_a_lifetime_from_a_jwts_exp(payload: object, outcome: datetime | str) -> None:
    body = {"access_token": _jwt(payload), "token_type": "Bearer"}
    if isinstance(outcome, datetime):
        assert parse_token_response(body, sent_at=SENT).expires_at == outcome
    else:
        with pytest.raises(MalformedResponse) as caught:
            parse_token_response(body, sent_at=SENT)
        assert str(caught.value) == outcome


def test_basic_credentials_are_form_encoded_before_base64() -> None:
    """RFC 6749 2.3.1: id and secret are form-urlencoded first, every reserved character."""
    header = basic_authorization("app/1:x", "s/e:c ret+&=")
    assert header.startswith("Basic ")
    decoded = base64.b64decode(header.removeprefix("Basic ")).decode()
    assert decoded == "app%2F1%3Ax:s%2Fe%3Ac%20ret%2B%26%3D"


def test_a_token_in_a_redirect_is_not_taken(idp: FakeIdp) -> None:
    """Only a 2xx answer carries a token (a 300 with a token-shaped body is an error)."""
    body = {"access_token": "t" * 20, "token_type": "Bearer", "expires_in": 3600}
    idp.fail(faults.status(300, body))
    request = client_secret_request(
        Endpoint(token_url=idp.token_url(2), allow_insecure_http=True),
        client_id=CLIENT_ID,
        secret=CLIENT_SECRET,
        scopes=("https://graph.example/.default",),
    )
    with pytest.raises(PermanentError) as caught:
        _acquire(request)
    assert caught.value.code == "http_300"


BAD_CHARACTERS = (
    "access_token has characters no token has (spaces, quotes, control characters or non-ASCII)"
)
BAD_TYPE = "token_type is not an OAuth token type name (RFC 6749 11.1)"
SENT_EPOCH = int(SENT.timestamp())


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "response has no access_token"),
        ({"access_token": "a b", "expires_in": 60}, BAD_CHARACTERS),
        ({"access_token": "a", "expires_in": 60, "token_type": "Bearer x"}, BAD_TYPE),
        ({"access_token": "opaque"}, NO_EXPIRY),
        ({"access_token": "a", "expires_in": 10**11 + 1}, "expires_in is out of range"),
        (
            {"access_token": "a", "expires_in": 10**11},
            "token lifetime is implausibly long (over a year)",
        ),
        (
            {"access_token": "a", "expires_in": 366 * 86400 + 1},
            "token lifetime is implausibly long (over a year)",
        ),
        ({"access_token": "a", "expires_on": SENT_EPOCH}, "token is already expired on arrival"),
        ({"access_token": "a", "expires_in": 1.5}, "expires_in is not a number"),
    ],
)
def test_malformed_responses_say_exactly_why(body: dict[str, object], message: str) -> None:
    with pytest.raises(MalformedResponse) as caught:
        parse_token_response(body, sent_at=SENT)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("body", "lifetime"),
    [
        ({"expires_in": 1}, timedelta(seconds=1)),  # the shortest
        ({"expires_in": 3600.0}, timedelta(hours=1)),  # a whole float
        ({"expires_in": 366 * 86400}, timedelta(days=366)),  # the longest
        ({"expires_on": SENT_EPOCH + 1}, timedelta(seconds=1)),
    ],
)
def test_the_edges_of_a_usable_lifetime(body: dict[str, object], lifetime: timedelta) -> None:
    token = parse_token_response({"access_token": "a", **body}, sent_at=SENT)
    assert token.expires_at - SENT == lifetime


@pytest.mark.parametrize(
    ("authority", "target", "url"),
    [
        (
            None,
            Target(resource="https://crm.example"),
            "https://login.microsoftonline.com/t/oauth2/token",
        ),
        ("https://login.example/", Target(resource="r"), "https://login.example/t/oauth2/token"),
        ("https://login.example/X", Target(resource="r"), "https://login.example/X/t/oauth2/token"),
        (
            "https://login.example//",
            Target(scopes=("s",)),
            "https://login.example/t/oauth2/v2.0/token",
        ),
    ],
)
def test_entra_token_urls(authority: str | None, target: Target, url: str) -> None:
    assert entra_token_url("t", target, authority) == url


def test_an_endpoint_is_entra_for_a_tenant_else_the_one_configured() -> None:
    target = Target(scopes=("s",))
    entra = endpoint_for(target, tenant="t", token_endpoint="https://x.example/token")
    assert entra.token_url == "https://login.microsoftonline.com/t/oauth2/v2.0/token"
    other = endpoint_for(
        target,
        token_endpoint="http://127.0.0.1/token",
        issuer="https://issuer.example",
        allow_insecure_http=True,
        ca_bundle=Path("/etc/ca.pem"),
    )
    assert other == Endpoint(
        token_url="http://127.0.0.1/token",
        issuer="https://issuer.example",
        allow_insecure_http=True,
        ca_bundle=Path("/etc/ca.pem"),
    )
    assert endpoint_for(target, token_endpoint="https://x.example/t") == Endpoint(
        token_url="https://x.example/t"
    )  # plain http is not allowed unless asked


class FromResources(SecretReference):
    """A secret read through a shared client (as `{vault: ...}` is)."""

    def describe(self) -> str:
        return "test resource"

    def resolve(self, resources: Any = None) -> Secret:
        if resources is None:
            raise SecretError("test resource: no shared client", transient=True)
        return Secret(resources.value)


class Resources:
    value = "the secret in the store"


def test_a_secrets_version_is_read_through_the_shared_clients() -> None:
    """The cause watch compares versions: a secret in a shared store (Vault) must be read
    through the process's clients, or its version never changes."""
    options = ClientSecretOptions.model_construct(
        type="client_secret", secret=FromResources(), auth_method="client_secret_post"
    )
    endpoint = Endpoint(token_url="https://idp.example/token")
    grant = ClientSecretGrant(options, GrantContext("client", endpoint, Resources()))  # type: ignore[arg-type]
    digest = hashlib.sha256(b"the secret in the store").hexdigest()[:16]
    assert asyncio.run(grant.source_version()) == digest


def test_a_discovery_endpoint_that_cannot_be_reached_is_transient() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(TransientError) as caught:
        _acquire(TokenRequest("crm", NoGrant(f"http://127.0.0.1:{port}/t")))  # type: ignore[arg-type]
    assert str(caught.value).startswith("127.0.0.1: ConnectError")
    assert (caught.value.code, caught.value.peer.token) == ("ConnectError", "crm")


def _v2_request(idp: FakeIdp) -> TokenRequest:
    return client_secret_request(
        Endpoint(token_url=idp.token_url(2), allow_insecure_http=True),
        client_id=CLIENT_ID,
        secret=CLIENT_SECRET,
        scopes=("https://graph.example/.default",),
    )


def _padded_body(size: int) -> str:
    """A valid token response of exactly `size` bytes."""
    head = '{"access_token": "abc", "token_type": "Bearer", "expires_in": 3600, "pad": "'
    return head + "x" * (size - len(head) - 2) + '"}'


def test_a_response_of_up_to_one_mib_is_read_whole(idp: FakeIdp) -> None:
    idp.fail(faults.raw(200, _padded_body(1 << 20), "application/json"))
    assert _acquire(_v2_request(idp)).value == "abc"  # read in many chunks, joined as sent


@pytest.mark.parametrize("size", [(1 << 20) + 1, 3 << 20])
def test_a_response_over_one_mib_is_refused(idp: FakeIdp, size: int) -> None:
    idp.fail(faults.raw(200, _padded_body(size), "application/json"))
    with pytest.raises(TransientError) as caught:
        _acquire(_v2_request(idp))
    assert (str(caught.value), caught.value.code) == (
        f"{idp.url.split('//')[1].split(':')[0]}: response body larger than 1 MiB",
        "too_large",
    )


def test_the_client_secret_request_says_what_it_wants(idp: FakeIdp) -> None:
    _acquire(_v2_request(idp))
    (sent,) = idp.token_requests
    assert sent.headers["accept"] == "application/json"
    assert sent.form["grant_type"] == "client_credentials"


def test_a_granted_scope_replaces_the_requested_one_and_a_late_refresh_hint_is_dropped() -> None:
    body = {
        "access_token": "a",
        "expires_in": 3600,
        "refresh_in": 3600,  # not before expiry: no hint at all
        "scope": "read write",
    }
    token = parse_token_response(body, sent_at=SENT, scopes=("asked",))
    assert token.scopes == ("read", "write")
    assert token.refresh_on is None


def test_the_client_secret_is_read_through_the_shared_clients() -> None:
    options = ClientSecretOptions.model_construct(
        type="client_secret", secret=FromResources(), auth_method="client_secret_post"
    )
    endpoint = Endpoint(token_url="https://idp.example/token")
    grant = ClientSecretGrant(options, GrantContext("client", endpoint, Resources()))  # type: ignore[arg-type]
    sent = asyncio.run(grant.request("https://idp.example/token", Target(scopes=("s",))))
    assert sent.form["client_secret"] == "the secret in the store"
    without = ClientSecretGrant(options, GrantContext("client", endpoint))
    with pytest.raises(SecretError) as caught:
        asyncio.run(without.request("https://idp.example/token", Target(scopes=("s",))))
    assert str(caught.value) == "client secret: test resource: no shared client"
    assert (caught.value.code, caught.value.transient) == ("secret_unavailable", True)


def test_a_response_sent_in_pieces_is_read_as_sent(idp: FakeIdp) -> None:
    pieces = [b'{"access_token": "ab', b'cd", "token_type": "Bea', b'rer", "expires_in": 3600}']

    async def streamed() -> Response:
        async def body() -> AsyncIterator[bytes]:
            for piece in pieces:
                yield piece
                await asyncio.sleep(0.01)  # separate writes, so separate reads

        return StreamingResponse(body(), media_type="application/json")

    idp.fail(streamed)
    token = _acquire(_v2_request(idp))
    assert (token.value, token.token_type) == ("abcd", "Bearer")
