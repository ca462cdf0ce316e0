"""The minted-token self-check (`verify:` on a token): before a new token is published, its
signature is checked against the issuer's published keys, and its `aud`, `iss`, `exp`/`nbf`
and (Entra ID) `tid` against what was asked for. A token that fails is not published; the
failure is permanent and names the claim.

It hooks in at the composition root as a decorator of the acquirer of the tokens that ask for
it: the client and the engine know nothing of it. Keys come from the shared `JwksCache`.

Where the expectations come from, unless `verify:` says otherwise:
- Entra ID identities: the tenant's discovery document for the token's version (the `ver`
  claim: v1 tokens are issued by `https://sts.windows.net/{tid}/`, v2 tokens by
  `{authority}/{tid}/v2.0`), which names the issuer and the keys; `tid` must be the tenant the
  issuer names; `aud` the resource (v1) or the scope without `/.default`.
- other servers: the identity's `issuer` (or `verify.issuer`), its discovery document's
  `jwks_uri` (or `verify.jwks_uri`); `aud` the resource indicator, else `verify.audience`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from tokend.clock import Clock
from tokend.errors import TokendError
from tokend.oauth.errors import Peer, PermanentError, TransientError
from tokend.oauth.jwks import Connection, JwksCache
from tokend.oauth.verify_options import VerifyOptions, default_audiences
from tokend.redaction import redactor
from tokend.token import Token

if TYPE_CHECKING:
    from tokend.oauth.client import TokenRequest

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")


@dataclass(frozen=True, slots=True)
class Expectation:
    """What one token's minted tokens must be. Frozen and small: tokens that expect the same
    share one."""

    audiences: tuple[str, ...]
    documents: tuple[str, ...]
    """Discovery document URLs: Entra ID (v1, v2), chosen by the token's `ver`; else one."""
    issuer: str | None
    jwks_uri: str | None
    tenant: str | None
    entra: bool
    leeway: timedelta
    connection: Connection


def expectation(
    options: VerifyOptions,
    *,
    resource: str | None,
    scopes: tuple[str, ...],
    entra_authority: str | None,
    issuer: str | None,
    connection: Connection,
) -> Expectation:
    """The expectation for a token; `entra_authority` is `{authority_host}/{tenant}` for an
    Entra ID identity. `verify_problem` has made sure every needed value is there."""
    audiences = options.audience or default_audiences(resource, scopes)
    if options.issuer:
        documents: tuple[str, ...] = (_discovery(options.issuer),)
    elif entra_authority:
        documents = (_discovery(entra_authority), _discovery(f"{entra_authority}/v2.0"))
    else:
        documents = (_discovery(issuer or ""),)
    return Expectation(
        audiences=audiences,
        documents=documents,
        issuer=options.issuer,
        jwks_uri=options.jwks_uri,
        tenant=options.tenant,
        entra=entra_authority is not None,
        leeway=options.leeway,
        connection=connection,
    )


def _discovery(issuer: str) -> str:
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


class Acquirer(Protocol):
    async def acquire(self, request: TokenRequest) -> Token: ...


@dataclass(frozen=True, slots=True)
class VerifyingAcquirer:
    """Acquires through `acquirer`, then checks the token; a token that fails never leaves."""

    acquirer: Acquirer
    expectation: Expectation
    cache: JwksCache
    clock: Clock

    async def acquire(self, request: TokenRequest) -> Token:
        token = await self.acquirer.acquire(request)
        await Check(self.expectation, self.cache, self.clock, request.name).run(token.value)
        return token


@dataclass(frozen=True, slots=True)
class Check:
    """One token's self-check."""

    expect: Expectation
    cache: JwksCache
    clock: Clock
    name: str

    async def run(self, value: str) -> None:
        import jwt  # only tokens with `verify:` load PyJWT

        try:
            header = jwt.get_unverified_header(value)
            unverified = jwt.decode(value, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise self._fail(
                "?", "not_jwt", "the token is not a JWT: opaque tokens cannot be checked"
            ) from None
        document = await self._document(unverified)
        issuer = self.expect.issuer or _text(document.get("issuer"))
        host = urlsplit(issuer or self.expect.documents[0]).hostname or "?"
        await self._signature(value, header, document, host)
        self._claims(unverified, issuer, host)

    async def _document(self, claims: dict[str, Any]) -> dict[str, Any]:
        expect = self.expect
        if expect.jwks_uri and expect.issuer:
            return {"issuer": expect.issuer, "jwks_uri": expect.jwks_uri}
        url = expect.documents[-1]
        if expect.entra and len(expect.documents) == 2 and claims.get("ver") == "1.0":
            url = expect.documents[0]
        document: dict[str, Any] = await self._fetch(
            url, lambda: self.cache.document(url, expect.connection)
        )
        return document

    async def _signature(
        self, value: str, header: dict[str, Any], document: dict[str, Any], host: str
    ) -> None:
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise self._fail(host, "alg", f"alg {algorithm!r} is not an asymmetric signature")
        jwks_uri = self.expect.jwks_uri or _text(document.get("jwks_uri"))
        if not jwks_uri:
            raise self._fail(host, "jwks", "the discovery document names no jwks_uri")
        kid = header.get("kid") if isinstance(header.get("kid"), str) else None
        key = await self._fetch(
            jwks_uri, lambda: self.cache.key(jwks_uri, kid, self.expect.connection)
        )
        if key is None:
            raise self._fail(
                host, "signature", f"signed by key {kid!r}, which the issuer's JWKS does not hold"
            )
        import jwt

        try:
            jwt.decode(
                value,
                key.key,
                algorithms=[algorithm],
                options={
                    "verify_aud": False, "verify_iss": False, "verify_exp": False,
                    "verify_nbf": False, "verify_iat": False,
                },
            )  # fmt: skip
        except jwt.PyJWTError:
            raise self._fail(
                host, "signature", f"the signature does not verify with the issuer's key {kid!r}"
            ) from None

    def _claims(self, claims: dict[str, Any], issuer: str | None, host: str) -> None:
        expect = self.expect
        aud = claims.get("aud")
        given = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not set(given) & set(expect.audiences):
            raise self._fail(
                host, "aud", f"aud {_shown(aud)} is not {' or '.join(map(repr, expect.audiences))}"
            )
        if issuer is None or claims.get("iss") != issuer:
            raise self._fail(host, "iss", f"iss {_shown(claims.get('iss'))} is not {issuer!r}")
        now, leeway = self.clock.now(), expect.leeway
        expires, begins = _time(claims.get("exp")), _time(claims.get("nbf"))
        if expires is None or expires <= now - leeway:
            raise self._fail(host, "exp", f"exp {_shown(claims.get('exp'))} is not in the future")
        if begins is not None and begins > now + leeway:
            raise self._fail(host, "nbf", f"nbf {begins:%Y-%m-%dT%H:%M:%SZ} is in the future")
        tenant = expect.tenant or (_issuer_tenant(issuer) if expect.entra else None)
        if tenant is not None and claims.get("tid") != tenant:
            raise self._fail(host, "tid", f"tid {_shown(claims.get('tid'))} is not {tenant!r}")

    async def _fetch(self, url: str, fetch: Any) -> Any:
        try:
            return await fetch()
        except TokendError as exc:
            reason = f"self-check cannot fetch the issuer's keys: {exc}"
            peer = Peer(self.name, urlsplit(url).hostname or "?")
            if exc.transient:
                raise TransientError(
                    peer, reason, code="verify_unavailable", retry_after=exc.retry_after
                ) from None
            raise PermanentError(peer, reason, code="verify_unavailable") from None

    def _fail(self, host: str, claim: str, reason: str) -> PermanentError:
        reason = f"self-check failed, not published: {reason}"
        return PermanentError(Peer(self.name, host), reason, code=f"verify_{claim}")


def _issuer_tenant(issuer: str | None) -> str | None:
    """Entra ID names the tenant as the first path segment of its issuers."""
    segments = [part for part in urlsplit(issuer or "").path.split("/") if part]
    return segments[0] if segments else None


def _time(raw: Any) -> datetime | None:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 < raw < 10**11:
        return None
    return datetime.fromtimestamp(raw, UTC)


def _text(raw: Any) -> str | None:
    return raw if isinstance(raw, str) and raw else None


def _shown(value: Any) -> str:
    """A claim for a message: masked, on one line, then cut short. Claims are the issuer's
    words: a hostile one can hold a secret, which must not be cut before it is masked."""
    return redactor.shown(repr(value), 80)
