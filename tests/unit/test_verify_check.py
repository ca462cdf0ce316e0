"""The minted-token self-check (`verify:`) on its own: tokens signed here, keys and discovery
documents from a stub cache that records what it is asked. Each refusal is checked whole:
its code, the host it names and its one line; each edge of a time claim to the second."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.clock import EPOCH, FakeClock
from tokend.errors import TokendError
from tokend.oauth.errors import Peer, PermanentError, TokenError, TransientError
from tokend.oauth.jwks import Connection, JwksError
from tokend.oauth.verify import Check, Expectation, VerifyingAcquirer, expectation
from tokend.oauth.verify_options import VerifyOptions, default_audiences, verify_problem
from tokend.redaction import Redactor
from tokend.token import Token

AUTHORITY = "https://login.example/tenant-1"
V1_DOC = f"{AUTHORITY}/.well-known/openid-configuration"
V2_DOC = f"{AUTHORITY}/v2.0/.well-known/openid-configuration"
V1_ISSUER = "https://sts.example/tenant-1/"
V2_ISSUER = f"{AUTHORITY}/v2.0"
KEYS = "https://keys.example/discovery/keys"
NOW = int(EPOCH.timestamp())
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
CONNECTION = Connection(allow_insecure_http=True)


@dataclass
class StubCache:
    """What a JwksCache answers, and the lookups asked of it."""

    documents: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys: dict[str | None, Any] = field(default_factory=dict)
    failure: TokendError | None = None
    asked: list[tuple[Any, ...]] = field(default_factory=list)

    async def document(self, url: str, connection: Connection) -> dict[str, Any]:
        self.asked.append(("document", url, connection))
        if self.failure is not None:
            raise self.failure
        return self.documents[url]

    async def key(self, jwks_uri: str, kid: str | None, connection: Connection) -> Any:
        self.asked.append(("key", jwks_uri, kid, connection))
        if self.failure is not None and not self.documents:
            raise self.failure
        return self.keys.get(kid)


def pyjwk(private: rsa.RSAPrivateKey, kid: str | None) -> jwt.PyJWK:
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return jwt.PyJWK({**jwk, **({"kid": kid} if kid else {})})


def entra_cache() -> StubCache:
    return StubCache(
        documents={
            V1_DOC: {"issuer": V1_ISSUER, "jwks_uri": KEYS},
            V2_DOC: {"issuer": V2_ISSUER, "jwks_uri": KEYS},
        },
        keys={"k1": pyjwk(KEY, "k1")},
    )


ENTRA = Expectation(
    audiences=("api://crm", "https://crm.example"),
    documents=(V1_DOC, V2_DOC),
    issuer=None,
    jwks_uri=None,
    tenant=None,
    entra=True,
    leeway=timedelta(seconds=60),
    connection=CONNECTION,
)


def claims(**overrides: Any) -> dict[str, Any]:
    base = {
        "aud": "api://crm",
        "iss": V2_ISSUER,
        "tid": "tenant-1",
        "ver": "2.0",
        "exp": NOW + 3600,
        "nbf": NOW - 60,
    }
    return {key: value for key, value in (base | overrides).items() if value is not None}


def signed(payload: dict[str, Any], *, kid: Any = "k1", key: Any = KEY, alg: str = "RS256") -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def check(
    value: str, cache: StubCache | None = None, expect: Expectation = ENTRA, now: int = NOW
) -> StubCache:
    cache = cache or entra_cache()
    clock = FakeClock(EPOCH + timedelta(seconds=now - NOW))
    asyncio.run(Check(expect, cache, clock, "crm").run(value))  # type: ignore[arg-type]
    return cache


def refusal(value: str, cache: StubCache | None = None, **kwargs: Any) -> TokenError:
    with pytest.raises(TokenError) as caught:
        check(value, cache, **kwargs)
    return caught.value


def test_a_v2_token_passes_after_the_v2_document_and_its_key() -> None:
    cache = check(signed(claims()))
    assert cache.asked == [("document", V2_DOC, CONNECTION), ("key", KEYS, "k1", CONNECTION)]


def test_a_v1_token_is_checked_against_the_v1_document() -> None:
    cache = check(signed(claims(ver="1.0", iss=V1_ISSUER, aud="https://crm.example")))
    assert cache.asked[0] == ("document", V1_DOC, CONNECTION)


def test_a_token_without_a_kid_asks_for_the_only_key() -> None:
    cache = entra_cache()
    cache.keys = {None: pyjwk(KEY, None)}
    check(signed(claims(), kid=None), cache)
    assert cache.asked[-1] == ("key", KEYS, None, CONNECTION)


def _refused(error: TokenError, code: str, host: str, reason: str) -> None:
    assert isinstance(error, PermanentError)
    assert error.code == code
    assert error.peer == Peer("crm", host)
    assert str(error) == f"{host}: self-check failed, not published: {reason}"


def test_an_opaque_token_cannot_be_checked() -> None:
    cache = entra_cache()
    error = refusal("opaque-access-token", cache)
    _refused(
        error, "verify_not_jwt", "?", "the token is not a JWT: opaque tokens cannot be checked"
    )
    assert cache.asked == []


def test_a_symmetric_signature_is_refused() -> None:
    token = jwt.encode(claims(), "a-shared-secret-of-32-bytes-or-more!", algorithm="HS256")
    _refused(
        refusal(token), "verify_alg", "login.example", "alg 'HS256' is not an asymmetric signature"
    )


def test_a_document_without_jwks_uri() -> None:
    cache = entra_cache()
    cache.documents[V2_DOC] = {"issuer": V2_ISSUER, "jwks_uri": ""}
    _refused(
        refusal(signed(claims()), cache),
        "verify_jwks",
        "login.example",
        "the discovery document names no jwks_uri",
    )


def test_a_key_the_set_does_not_hold() -> None:
    _refused(
        refusal(signed(claims(), kid="k9")),
        "verify_signature",
        "login.example",
        "signed by key 'k9', which the issuer's JWKS does not hold",
    )


def test_a_signature_by_another_key() -> None:
    _refused(
        refusal(signed(claims(), key=OTHER_KEY)),
        "verify_signature",
        "login.example",
        "the signature does not verify with the issuer's key 'k1'",
    )


@pytest.mark.parametrize(
    ("aud", "accepted"),
    [
        ("api://crm", True),
        (["other", "https://crm.example"], True),
        ("api://other", False),
        (["x", "y"], False),
        (5, False),
        (None, False),
    ],
)
def test_the_audience(aud: Any, accepted: bool) -> None:
    token = signed(claims(aud=aud))
    if accepted:
        check(token)
        return
    shown = repr(aud)
    _refused(
        refusal(token),
        "verify_aud",
        "login.example",
        f"aud {shown} is not 'api://crm' or 'https://crm.example'",
    )


def test_the_issuer() -> None:
    _refused(
        refusal(signed(claims(iss="https://evil.example/"))),
        "verify_iss",
        "login.example",
        f"iss 'https://evil.example/' is not {V2_ISSUER!r}",
    )


def test_a_document_naming_no_issuer_passes_nothing() -> None:
    cache = entra_cache()
    cache.documents[V2_DOC] = {"jwks_uri": KEYS}
    _refused(
        refusal(signed(claims()), cache),
        "verify_iss",
        "login.example",  # the host of the document asked
        f"iss {V2_ISSUER!r} is not None",
    )


@pytest.mark.parametrize(
    ("exp", "passes"),
    [(NOW - 59, True), (NOW - 60, False), (NOW - 61, False), (NOW + 1.5, True)],
)
def test_exp_within_the_leeway(exp: float, passes: bool) -> None:
    token = signed(claims(exp=exp))
    if passes:
        check(token)
    else:
        _refused(refusal(token), "verify_exp", "login.example", f"exp {exp!r} is not in the future")


@pytest.mark.parametrize("exp", [None, True, 0, 10**11, "soon"])
def test_an_exp_that_is_not_a_time(exp: Any) -> None:
    _refused(
        refusal(signed(claims(exp=exp))),
        "verify_exp",
        "login.example",
        f"exp {exp!r} is not in the future",
    )


@pytest.mark.parametrize(("nbf", "passes"), [(NOW + 60, True), (NOW + 61, False), (None, True)])
def test_nbf_within_the_leeway(nbf: int | None, passes: bool) -> None:
    token = signed(claims(nbf=nbf))
    if passes:
        check(token)
    else:
        _refused(
            refusal(token),
            "verify_nbf",
            "login.example",
            "nbf 2026-01-01T00:01:01Z is in the future",
        )


def test_the_tenant_is_the_issuers_first_path_segment() -> None:
    _refused(
        refusal(signed(claims(tid="tenant-2"))),
        "verify_tid",
        "login.example",
        "tid 'tenant-2' is not 'tenant-1'",
    )
    _refused(
        refusal(signed(claims(tid=None))),
        "verify_tid",
        "login.example",
        "tid None is not 'tenant-1'",
    )
    named = replace(ENTRA, tenant="tenant-2")
    check(signed(claims(tid="tenant-2")), expect=named)


def test_no_tenant_check_for_other_servers() -> None:
    cache = StubCache(
        documents={"https://idp.example/realm/.well-known/openid-configuration": {
            "issuer": "https://idp.example/realm", "jwks_uri": KEYS}},
        keys={"k1": pyjwk(KEY, "k1")},
    )  # fmt: skip
    other = replace(
        ENTRA,
        documents=("https://idp.example/realm/.well-known/openid-configuration",),
        entra=False,
    )
    token = signed(claims(iss="https://idp.example/realm", tid=None, ver=None))
    check(token, cache, expect=other)  # no tid, and the issuer's path names no tenant here


def test_a_configured_issuer_and_jwks_uri_need_no_document() -> None:
    cache = StubCache(keys={"k1": pyjwk(KEY, "k1")})
    given = replace(ENTRA, issuer=V2_ISSUER, jwks_uri=KEYS)
    check(signed(claims()), cache, expect=given)
    assert cache.asked == [("key", KEYS, "k1", CONNECTION)]
    only_keys = replace(ENTRA, jwks_uri="https://other.example/keys")
    cache = entra_cache()
    cache.keys = {"k1": pyjwk(KEY, "k1")}
    check(signed(claims()), cache, expect=only_keys)
    assert cache.asked == [
        ("document", V2_DOC, CONNECTION),
        ("key", "https://other.example/keys", "k1", CONNECTION),
    ]


def test_keys_that_cannot_be_fetched_yet_are_a_transient_failure() -> None:
    cache = StubCache(failure=JwksError(KEYS, "HTTP 503", transient=True, retry_after=42.0))
    given = replace(ENTRA, issuer=V2_ISSUER, jwks_uri=KEYS)
    error = refusal(signed(claims()), cache, expect=given)
    assert isinstance(error, TransientError)
    assert error.code == "verify_unavailable" and error.retry_after == 42.0
    assert error.peer == Peer("crm", "keys.example")
    assert str(error) == (
        f"keys.example: self-check cannot fetch the issuer's keys: {KEYS}: HTTP 503"
    )


def test_a_document_that_does_not_exist_is_a_permanent_failure() -> None:
    cache = entra_cache()
    cache.failure = JwksError(V2_DOC, "HTTP 404", transient=False)
    error = refusal(signed(claims()), cache)
    assert isinstance(error, PermanentError) and not isinstance(error, TransientError)
    assert error.code == "verify_unavailable"
    assert str(error) == (
        f"login.example: self-check cannot fetch the issuer's keys: {V2_DOC}: HTTP 404"
    )


def test_a_long_claim_is_cut_and_a_secret_in_it_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    redactor = Redactor()
    monkeypatch.setattr("tokend.oauth.verify.redactor", redactor)
    redactor.add_secret("hunter2-hunter2-secret")
    long = "https://" + "a" * 100
    error = refusal(signed(claims(iss=long)))
    assert f"iss {repr(long)[:77]}... is not" in str(error)
    error = refusal(signed(claims(aud="x-hunter2-hunter2-secret")))
    assert "hunter2-hunter2-secret" not in str(error) and "aud 'x-" in str(error)
    straddling = "a" * 60 + "hunter2-hunter2-secret"  # the cut falls inside the secret
    error = refusal(signed(claims(aud=straddling)))
    assert "hunter2" not in str(error) and f"aud '{'a' * 60}***' is not" in str(error)
    edge = "b" * 78  # repr: 80 characters, shown whole
    assert f"iss {edge!r} is not" in str(refusal(signed(claims(iss=edge))))
    over = "b" * 79  # repr: 81 characters, cut
    assert f"iss {repr(over)[:77]}... is not" in str(refusal(signed(claims(iss=over))))


def test_the_verifying_acquirer_checks_what_it_passes_on() -> None:
    token = Token(value=signed(claims()), token_type="Bearer", expires_at=EPOCH, obtained_at=EPOCH)

    class Acquirer:
        async def acquire(self, request: Any) -> Token:
            return token

    @dataclass
    class Request:
        name: str = "crm"

    cache = entra_cache()
    verifying = VerifyingAcquirer(Acquirer(), ENTRA, cache, FakeClock())  # type: ignore[arg-type]
    assert asyncio.run(verifying.acquire(Request())) is token  # type: ignore[arg-type]
    assert len(cache.asked) == 2
    bad = VerifyingAcquirer(Acquirer(), replace(ENTRA, audiences=("x",)), cache, FakeClock())  # type: ignore[arg-type]
    with pytest.raises(PermanentError, match="aud 'api://crm' is not 'x'") as caught:
        asyncio.run(bad.acquire(Request()))  # type: ignore[arg-type]
    assert caught.value.peer == Peer("crm", "login.example")


# --- what a verify: block expects


def test_entra_expectations() -> None:
    options = VerifyOptions()
    got = expectation(
        options, resource=None, scopes=("api://crm/.default",), entra_authority=AUTHORITY,
        issuer=None, connection=CONNECTION,
    )  # fmt: skip
    assert got == replace(ENTRA, audiences=("api://crm",))


def test_expectations_of_other_servers_and_of_every_option() -> None:
    plain = expectation(
        VerifyOptions(), resource="https://api.example", scopes=(), entra_authority=None,
        issuer="https://idp.example/", connection=CONNECTION,
    )  # fmt: skip
    assert plain.documents == ("https://idp.example/.well-known/openid-configuration",)
    assert plain.audiences == ("https://api.example",) and not plain.entra
    options = VerifyOptions(
        audience=("a", "b"),
        issuer="https://given.example",
        jwks_uri="https://given.example/keys",
        tenant="t",
        leeway=timedelta(seconds=5),
    )
    given = expectation(
        options, resource="https://api.example", scopes=(), entra_authority=AUTHORITY,
        issuer="https://idp.example", connection=CONNECTION,
    )  # fmt: skip
    assert given == Expectation(
        audiences=("a", "b"),
        documents=("https://given.example/.well-known/openid-configuration",),
        issuer="https://given.example",
        jwks_uri="https://given.example/keys",
        tenant="t",
        entra=True,
        leeway=timedelta(seconds=5),
        connection=CONNECTION,
    )


@pytest.mark.parametrize(
    ("resource", "scopes", "audiences"),
    [
        ("https://r", ("s/.default",), ("https://r",)),
        (None, ("api://x/.default",), ("api://x",)),
        (None, ("api://x/.default", "api://y/.default"), ()),
        (None, ("api://x/read",), ()),
        ("", (), ()),
    ],
)
def test_default_audiences(
    resource: str | None, scopes: tuple[str, ...], audiences: tuple[str, ...]
) -> None:
    assert default_audiences(resource, scopes) == audiences


@pytest.mark.parametrize(
    ("options", "issuer", "entra", "problem"),
    [
        (VerifyOptions(), None, True, None),
        (VerifyOptions(), "https://idp.example", False, None),
        (VerifyOptions(issuer="https://i.example"), None, False, None),
        (
            VerifyOptions(),
            None,
            False,
            "issuer: required: the identity names no tenant or issuer to find it from",
        ),
    ],
)
def test_verify_problem_issuer(
    options: VerifyOptions, issuer: str | None, entra: bool, problem: str | None
) -> None:
    found = verify_problem(options, resource="https://r", scopes=(), entra=entra, issuer=issuer)
    assert found == problem


def test_verify_problem_audience() -> None:
    line = "audience: required when the token names no resource and not one .default scope"
    assert (
        verify_problem(VerifyOptions(), resource=None, scopes=("x",), entra=True, issuer=None)
        == line
    )
    given = VerifyOptions(audience=("x",))
    assert verify_problem(given, resource=None, scopes=("x",), entra=True, issuer=None) is None


OTHER_DOC = "https://idp.example/.well-known/openid-configuration"
OTHER = replace(ENTRA, documents=(OTHER_DOC,), entra=False)


def _other(document: dict[str, Any]) -> StubCache:
    return StubCache(documents={OTHER_DOC: document}, keys={"k1": pyjwk(KEY, "k1")})


def test_an_issuer_that_is_not_text_or_empty_is_no_issuer() -> None:
    token = signed(claims(iss="https://idp.example", tid=None))
    for issuer in (42, "", None):
        error = refusal(token, _other({"issuer": issuer, "jwks_uri": KEYS}), expect=OTHER)
        _refused(
            error, "verify_iss", "idp.example", "iss 'https://idp.example' is not None"
        )  # the host of the one document asked


def test_an_issuer_that_is_not_a_url_names_no_host() -> None:
    cache = _other({"issuer": "urn:example:issuer", "jwks_uri": KEYS})
    error = refusal(signed(claims(iss="urn:other", tid=None)), cache, expect=OTHER)
    _refused(error, "verify_iss", "?", "iss 'urn:other' is not 'urn:example:issuer'")


def test_keys_at_an_address_without_a_host() -> None:
    cache = StubCache(failure=JwksError("urn:keys", "not an http(s) URL", transient=False))
    given = replace(ENTRA, issuer=V2_ISSUER, jwks_uri="urn:keys")
    error = refusal(signed(claims()), cache, expect=given)
    assert error.peer == Peer("crm", "?")


def test_an_entra_issuer_without_a_tenant_checks_no_tid() -> None:
    cache = entra_cache()
    cache.documents[V2_DOC] = {"issuer": "https://sts.example/", "jwks_uri": KEYS}
    check(signed(claims(iss="https://sts.example/", tid="whatever")), cache)


def test_iat_is_not_checked_by_the_signature_check() -> None:
    """PyJWT would refuse an `iat` in the future; tokend checks exp and nbf only (with leeway
    and its own clock)."""
    check(signed(claims(iat=4_102_444_800)))  # 2100-01-01


def test_a_discovery_url_keeps_the_issuers_path() -> None:
    got = expectation(
        VerifyOptions(), resource="https://api.example", scopes=(), entra_authority=None,
        issuer="https://idp.example/realmX/", connection=CONNECTION,
    )  # fmt: skip
    assert got.documents == ("https://idp.example/realmX/.well-known/openid-configuration",)
