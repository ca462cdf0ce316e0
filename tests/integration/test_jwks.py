"""The JWKS cache against a real HTTP server on loopback, on a fake clock: what it asks for and
how often, which keys of a set it keeps, when it fetches again, and one exact error per way a
fetch can fail."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.clock import FakeClock
from tests.support.pki import CertificateAuthority
from tests.support.servers import free_port, serve
from tokend.oauth.jwks import Connection, JwksCache, JwksError, JwksOptions
from tokend.resources import Environment

T = TypeVar("T")
LOOPBACK = Connection(allow_insecure_http=True)


def rsa_jwk(kid: str | None, **extra: str) -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    jwk: dict[str, Any] = RSAAlgorithm.to_jwk(key, as_dict=True)
    return {**jwk, **({"kid": kid} if kid else {}), **extra}


def ec_jwk(kid: str) -> dict[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return {**ECAlgorithm.to_jwk(key, as_dict=True), "kid": kid}


@dataclass
class KeyServer:
    """Answers GET /keys with `status` and `body`; records each request's path and Accept."""

    url: str = ""
    status: int = 200
    body: Any = field(default_factory=lambda: {"keys": []})
    delay: float = 0.0
    seen: list[tuple[str, str, str | None]] = field(default_factory=list)
    active: int = 0
    most: int = 0

    async def answer(self, request: Request) -> Response:
        self.seen.append((request.method, request.url.path, request.headers.get("accept")))
        self.active += 1
        self.most = max(self.most, self.active)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.active -= 1
        raw = self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()
        return Response(raw, status_code=self.status, media_type="application/json")

    @property
    def keys_url(self) -> str:
        return f"{self.url}/keys"


@pytest.fixture
def server() -> Iterator[KeyServer]:
    keys = KeyServer()
    app = Starlette(routes=[Route("/{path:path}", keys.answer, methods=["GET", "POST"])])
    with serve(app) as url:
        keys.url = url
        yield keys


def run(cache: JwksCache, scenario: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        try:
            return await scenario()
        finally:
            await cache.close()

    return asyncio.run(main())


def cache_on(clock: FakeClock, **options: Any) -> JwksCache:
    return JwksCache(JwksOptions.model_validate(options), Environment(clock=clock))


def test_a_key_set_is_fetched_once_and_only_signing_keys_are_kept(server: KeyServer) -> None:
    a, b = rsa_jwk("a"), ec_jwk("b")
    server.body = {
        "keys": ["not a key", a, rsa_jwk("enc", use="enc"), {"kty": "RSA", "kid": "broken"},
                 b, {"kty": "nope", "kid": "unknown-type"}, 7, rsa_jwk("sig", use="sig")],
    }  # fmt: skip
    clock = FakeClock()
    cache = cache_on(clock)

    async def scenario() -> list[Any]:
        found = [await cache.key(server.keys_url, kid, LOOPBACK) for kid in ("a", "b", "sig")]
        for kid in ("enc", "broken"):
            clock.advance(timedelta(minutes=2))  # past refetch_interval: an unknown kid fetches
            found.append(await cache.key(server.keys_url, kid, LOOPBACK))
        return found

    a_key, b_key, sig, enc, broken = run(cache, scenario)
    assert (a_key.key_id, b_key.key_id, sig.key_id) == ("a", "b", "sig")
    assert a_key.key_type == "RSA" and b_key.key_type == "EC"
    assert enc is None and broken is None
    assert server.seen == [("GET", "/keys", "application/json")] * 3


def test_an_unknown_key_is_fetched_again_at_most_once_per_interval(server: KeyServer) -> None:
    server.body = {"keys": [rsa_jwk("old")]}
    clock = FakeClock()
    cache = cache_on(clock, refetch_interval="90s")

    async def scenario() -> None:
        assert (await cache.key(server.keys_url, "old", LOOPBACK)) is not None
        clock.advance(20)
        with pytest.raises(JwksError) as caught:
            await cache.key(server.keys_url, "new", LOOPBACK)
        assert str(caught.value) == (
            f"{server.keys_url}: key 'new' is not in the set fetched 20s ago; it is fetched"
            " again at most every 90s"
        )
        assert caught.value.transient and caught.value.retry_after == 70.0
        assert caught.value.code == "jwks_unavailable"
        assert len(server.seen) == 1
        server.body = {"keys": [rsa_jwk("old"), rsa_jwk("new")]}
        clock.advance(70)  # the interval has passed, to the microsecond
        new = await cache.key(server.keys_url, "new", LOOPBACK)
        assert new is not None and new.key_id == "new"
        assert len(server.seen) == 2
        clock.advance(timedelta(seconds=90) - timedelta(microseconds=1))
        with pytest.raises(JwksError, match="key 'newer' is not in the set fetched 90s ago"):
            await cache.key(server.keys_url, "newer", LOOPBACK)
        clock.advance(timedelta(microseconds=1))
        assert await cache.key(server.keys_url, "newer", LOOPBACK) is None  # fetched: not there
        assert len(server.seen) == 3

    run(cache, scenario)


def test_without_a_kid_only_a_set_of_one_key_answers(server: KeyServer) -> None:
    only = rsa_jwk(None)
    server.body = {"keys": [only]}
    clock = FakeClock()
    cache = cache_on(clock)

    async def scenario() -> None:
        key = await cache.key(server.keys_url, None, LOOPBACK)
        assert key is not None and key.key_id is None
        server.body = {"keys": [rsa_jwk("x"), rsa_jwk("y")]}
        clock.advance(timedelta(hours=24))  # max_age: fetched again on the next lookup
        with pytest.raises(JwksError, match=r"key None is not in the set fetched 0s ago"):
            await cache.key(server.keys_url, None, LOOPBACK)
        assert len(server.seen) == 2

    run(cache, scenario)


def test_documents_are_fetched_again_after_max_age(server: KeyServer) -> None:
    server.body = {"issuer": "https://idp.example/", "jwks_uri": "https://idp.example/keys"}
    clock = FakeClock()
    cache = cache_on(clock, max_age="1h")

    async def scenario() -> None:
        assert await cache.document(server.keys_url, LOOPBACK) == server.body
        clock.advance(timedelta(hours=1) - timedelta(microseconds=1))
        await cache.document(server.keys_url, LOOPBACK)
        assert len(server.seen) == 1
        server.body = {"issuer": "https://idp.example/v2"}
        clock.advance(timedelta(microseconds=1))
        assert await cache.document(server.keys_url, LOOPBACK) == server.body
        assert len(server.seen) == 2

    run(cache, scenario)


def test_concurrent_lookups_share_one_fetch(server: KeyServer) -> None:
    server.body = {"keys": [rsa_jwk("a")]}
    server.delay = 0.2
    cache = cache_on(FakeClock())

    async def scenario() -> list[Any]:
        lookups = [cache.key(server.keys_url, "a", LOOPBACK) for _ in range(3)]
        return list(await asyncio.gather(*lookups))

    keys = run(cache, scenario)
    assert [key.key_id for key in keys] == ["a", "a", "a"]
    assert len(server.seen) == 1


def test_a_fetch_is_logged_at_debug(server: KeyServer, caplog: pytest.LogCaptureFixture) -> None:
    cache = cache_on(FakeClock())
    with caplog.at_level(logging.DEBUG, logger="tokend.jwks"):
        run(cache, lambda: cache.document(server.keys_url, LOOPBACK))
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("tokend.jwks", f"fetched {server.keys_url}")
    ]


@pytest.mark.parametrize(
    ("status", "body", "reason", "transient"),
    [
        (404, {}, "HTTP 404", False),
        (499, {}, "HTTP 499", False),
        (300, {}, "HTTP 300", False),
        (429, {}, "HTTP 429", True),
        (500, {}, "HTTP 500", True),
        (503, {}, "HTTP 503", True),
        (200, b"<html>", "HTTP 200 with a body that is not a JSON object", True),
        (299, ["a", "list"], "HTTP 299 with a body that is not a JSON object", True),
        (200, b"[" * 100_000, "HTTP 200 with a body that is not a JSON object", True),
    ],
)
def test_a_failed_fetch_says_exactly_why(
    server: KeyServer, status: int, body: Any, reason: str, transient: bool
) -> None:
    server.status, server.body = status, body
    cache = cache_on(FakeClock())
    with pytest.raises(JwksError) as caught:
        run(cache, lambda: cache.document(server.keys_url, LOOPBACK))
    assert str(caught.value) == f"{server.keys_url}: {reason}"
    assert caught.value.transient is transient
    assert caught.value.retry_after is None


def test_a_failed_fetch_is_not_kept(server: KeyServer) -> None:
    server.status = 503
    cache = cache_on(FakeClock())

    async def scenario() -> dict[str, Any]:
        with pytest.raises(JwksError):
            await cache.document(server.keys_url, LOOPBACK)
        server.status, server.body = 200, {"issuer": "back"}
        return await cache.document(server.keys_url, LOOPBACK)

    assert run(cache, scenario) == {"issuer": "back"}


@pytest.mark.parametrize(
    ("url", "connection", "reason"),
    [
        ("http://idp.example/keys", LOOPBACK,
         "'http://idp.example/keys' uses plain http; https is required except for loopback"
         " addresses"),
        ("http://127.0.0.1:9/keys", Connection(),
         "'http://127.0.0.1:9/keys' uses plain http; set allow_insecure_http: true to allow it"
         " on loopback"),
        ("ftp://idp.example/keys", LOOPBACK, "'ftp://idp.example/keys' is not an http(s) URL"),
    ],
)  # fmt: skip
def test_a_url_that_may_not_be_used_is_refused_for_good(
    url: str, connection: Connection, reason: str
) -> None:
    cache = cache_on(FakeClock())
    with pytest.raises(JwksError) as caught:
        run(cache, lambda: cache.key(url, "a", connection))
    assert str(caught.value) == f"{url}: {reason}"
    assert caught.value.transient is False


def test_nothing_listening_is_transient() -> None:
    url = f"http://127.0.0.1:{free_port()}/keys"
    cache = cache_on(FakeClock())
    with pytest.raises(JwksError) as caught:
        run(cache, lambda: cache.document(url, LOOPBACK))
    assert str(caught.value).startswith(f"{url}: ")
    assert "connect" in str(caught.value).lower()
    assert caught.value.transient


def test_a_server_slower_than_the_timeout(server: KeyServer) -> None:
    server.delay = 1.0
    cache = cache_on(FakeClock(), timeout="200ms")
    with pytest.raises(JwksError) as caught:
        run(cache, lambda: cache.document(server.keys_url, LOOPBACK))
    assert str(caught.value) == (f"{server.keys_url}: timed out: no complete answer within 0.2s")
    assert caught.value.transient


def test_closing_a_cache_that_never_fetched() -> None:
    cache = cache_on(FakeClock())
    asyncio.run(cache.close())
    cache.close_sync()
    asyncio.run(cache.close())  # still nothing to close


def test_fetches_of_different_urls_run_at_once_up_to_four(server: KeyServer) -> None:
    server.delay = 0.6
    cache = cache_on(FakeClock())
    urls = [f"{server.url}/keys/{n}" for n in range(6)]
    started = time.monotonic()

    async def scenario() -> None:
        await asyncio.gather(*(cache.document(url, LOOPBACK) for url in urls))

    run(cache, scenario)
    assert server.most == 4  # the cache's connection cap
    assert time.monotonic() - started < 2.4  # 2 rounds, not 6 fetches one after another


def test_keys_from_an_issuer_with_a_private_ca(tmp_path: Path) -> None:
    authority = CertificateAuthority(tmp_path, "private CA")
    keys = KeyServer(body={"keys": [rsa_jwk("a")]})
    app = Starlette(routes=[Route("/{path:path}", keys.answer)])
    with serve(app, tls=authority.issue("idp", "idp", server_ips=("127.0.0.1",))) as url:
        cache = cache_on(FakeClock())
        key = run(
            cache, lambda: cache.key(f"{url}/keys", "a", Connection(ca_bundle=authority.cert))
        )
        assert key is not None and key.key_id == "a"
        cache = cache_on(FakeClock())
        with pytest.raises(JwksError, match="TLS: the server's certificate is not trusted"):
            run(cache, lambda: cache.key(f"{url}/keys", "a", Connection()))
