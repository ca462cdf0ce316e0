"""`type: certificate`: the client credentials grant with a signed client assertion (RFC 7523),
the credential Microsoft recommends over client secrets.

Each request carries a fresh JWT signed with the private key: `aud` the token endpoint,
`iss` = `sub` = client_id, a new random `jti`, `nbf`/`iat` now and `exp` ten minutes on. For
Entra ID the header names the certificate by `x5t#S256` (and also `x5t` on the v1 endpoint); for
any other OAuth2 server (`private_key_jwt`) by `kid`, the key's RFC 7638 thumbprint unless
`key_id` says otherwise. `send_x5c: true` adds the chain (Entra ID's subject name + issuer
authentication).

The key material is read through its secret references at every request and parsed again only
when its bytes changed, so a renewed certificate is used without a restart. The certificate's own
expiry is reported to readers (`credential_state()`), and logged as a warning, at most once a
day, from 14 days before it.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import model_validator

from tokend.clock import SYSTEM_CLOCK, format_span
from tokend.oauth.dialects import Target
from tokend.oauth.grants.base import (
    CREDENTIALS,
    CredentialOptions,
    CredentialState,
    CredentialType,
    GrantContext,
    HttpRequest,
)
from tokend.secrets import BinarySecretRef, SecretError, SecretRef

if TYPE_CHECKING:
    from tokend.oauth.grants.keys import SigningKey
    from tokend.resources import Resources

# The key material is parsed (`tokend.oauth.grants.keys`, cryptography) and signed (PyJWT) only
# where a certificate identity is used: configs without one load neither.

Algorithm = Literal["PS256", "RS256", "ES256", "ES384", "ES512"]


log = logging.getLogger("tokend.credentials")

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = timedelta(minutes=10)
EXPIRY_WARNING = timedelta(days=14)
_WARN_EVERY = timedelta(days=1)
_last_warned: dict[tuple[str, str], datetime] = {}
"""When each identity's certificate was last warned about, by (identity, thumbprint): one
warning a day, however many grants (one per endpoint version) and reloads share it."""


class CertificateOptions(CredentialOptions):
    type: Literal["certificate"]
    certificate: SecretRef | None = None
    """PEM: the certificate (and any intermediates); may hold the private key too."""
    private_key: SecretRef | None = None
    """PEM private key, when it is not in `certificate`."""
    pkcs12: BinarySecretRef | None = None
    """A PKCS#12 bundle (.pfx/.p12) with key and certificate: a file, or its base64."""
    password: SecretRef | None = None
    """Of the PKCS#12 bundle, or of an encrypted PEM private key."""
    algorithm: Algorithm | None = None
    """Default: PS256 for RSA keys, ES256/ES384/ES512 for EC keys (by curve)."""
    send_x5c: bool = False
    key_id: str | None = None
    """`kid` for OAuth2 servers other than Entra ID (default: the key's RFC 7638 thumbprint)."""

    @model_validator(mode="after")
    def _one_source(self) -> CertificateOptions:
        if (self.certificate is None) == (self.pkcs12 is None):
            raise ValueError("give exactly one of certificate (PEM) or pkcs12")
        if self.private_key is not None and self.pkcs12 is not None:
            raise ValueError("private_key goes with certificate; a pkcs12 bundle holds its own")
        return self

    def load(self, resources: Resources | None = None) -> SigningKey:
        """Read and parse the key material now (blocking). Raises `SecretError` or
        `KeyMaterialError`."""
        from tokend.oauth.grants.keys import load_pem, load_pkcs12

        password = self.password.resolve(resources).reveal().encode() if self.password else None
        if self.pkcs12 is not None:
            return load_pkcs12(self.pkcs12.resolve_bytes(resources), password)
        assert self.certificate is not None  # noqa: S101 - the validator made sure
        key = self.private_key.resolve_bytes(resources) if self.private_key else None
        return load_pem(self.certificate.resolve_bytes(resources), key, password)

    def preflight(self, resources: Resources | None = None) -> list[str]:
        from tokend.oauth.grants.keys import KeyMaterialError

        try:
            signing = self.load(resources)
            signing.algorithm(self.algorithm)
        except SecretError:
            return []  # the secret reference itself is reported on its own line
        except KeyMaterialError as exc:
            return [str(exc)]
        return certificate_problems(signing, SYSTEM_CLOCK.now())


def certificate_problems(signing: SigningKey, now: datetime) -> list[str]:
    if signing.not_after <= now:
        return [f"certificate {signing.subject} expired at {_day(signing.not_after)}"]
    if signing.not_before > now:
        return [f"certificate {signing.subject} is not valid before {_day(signing.not_before)}"]
    return []


class CertificateGrant:
    __slots__ = (
        "_clock", "_digest", "_identity", "_options", "_resources", "_signing", "_version",
        "client_id", "endpoint",
    )  # fmt: skip

    def __init__(self, options: CertificateOptions, context: GrantContext) -> None:
        self.client_id = context.client_id
        self.endpoint = context.endpoint
        self._options = options
        self._resources = context.resources
        self._clock = context.clock
        self._identity = context.identity
        self._version = context.entra_version
        self._digest = b""
        self._signing: SigningKey | None = None

    async def request(self, token_url: str, target: Target) -> HttpRequest:
        signing = await self._current()
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self._assertion(signing, token_url),
        }
        headers = {"Accept": "application/json"}
        return HttpRequest("POST", token_url, form=form | target.fields(), headers=headers)

    def absorb(self, body: Mapping[str, Any]) -> None:
        return None

    def credential_state(self) -> CredentialState:
        signing = self._signing
        return CredentialState(self._identity, signing.not_after if signing else None)

    def _assertion(self, signing: SigningKey, token_url: str) -> str:
        now = int(self._clock.now().timestamp())
        claims = {
            "aud": token_url,
            "iss": self.client_id,
            "sub": self.client_id,
            "jti": str(uuid.uuid4()),
            "nbf": now,
            "iat": now,
            "exp": now + int(ASSERTION_LIFETIME.total_seconds()),
        }
        options = self._options
        headers: dict[str, Any] = {"typ": "JWT"}
        if self._version is not None:
            headers["x5t#S256"] = signing.x5t_s256()
            if self._version == 1:
                headers["x5t"] = signing.x5t()
        else:
            headers["kid"] = options.key_id or signing.jwk_thumbprint()
        if options.send_x5c:
            headers["x5c"] = signing.x5c()
        algorithm = signing.algorithm(options.algorithm)
        import jwt

        return jwt.encode(claims, signing.key, algorithm=algorithm, headers=headers)

    async def source_version(self) -> str:
        try:
            return _digest(await self._read())[:8].hex()
        except SecretError as exc:
            return f"unreadable:{exc.code}"

    async def _read(self) -> list[bytes]:
        """The key material's bytes as they are now: certificate, key, bundle, [password]."""
        options, resources = self._options, self._resources
        try:
            parts = [
                await ref.read_bytes(resources) if ref is not None else b""
                for ref in (options.certificate, options.private_key, options.pkcs12)
            ]
            if options.password is not None:  # text: a trailing newline is not part of it
                parts.append((await options.password.read(resources)).reveal().encode())
        except SecretError as exc:
            raise SecretError(f"certificate credential: {exc}", transient=exc.transient) from None
        return parts

    async def _current(self) -> SigningKey:
        """The key material as it is now: re-parsed only when its bytes changed."""
        parts = await self._read()
        digest = _digest(parts)
        if self._signing is None or digest != self._digest:
            self._signing = self._parse(parts)
            self._digest = digest
            log.info(
                "identity %s: using certificate %s (expires %s)",
                self._identity,
                self._signing.subject,
                _day(self._signing.not_after),
            )
        self._warn_if_expiring(self._signing)
        return self._signing

    def _parse(self, parts: list[bytes]) -> SigningKey:
        from tokend.oauth.grants.keys import KeyMaterialError, load_pem, load_pkcs12

        certificate, private_key, bundle, *password = parts
        secret = password[0] if password else None
        try:
            if self._options.pkcs12 is not None:
                signing = load_pkcs12(bundle, secret)
            else:
                signing = load_pem(certificate, private_key or None, secret)
            signing.algorithm(self._options.algorithm)
        except KeyMaterialError as exc:
            raise SecretError(f"certificate credential: {exc}") from None
        return signing

    def _warn_if_expiring(self, signing: SigningKey) -> None:
        now = self._clock.now()
        left = signing.not_after - now
        if left > EXPIRY_WARNING:
            return
        key = (self._identity, signing.x5t_s256())
        if key in _last_warned and now - _last_warned[key] < _WARN_EVERY:
            return
        _last_warned[key] = now
        span = f"{left.days} days" if left.days >= 2 else format_span(left)
        when = f"expires in {span}" if left > timedelta(0) else "has expired"
        log.warning(
            "identity %s: certificate %s %s (%s): renew it and update its secret reference; "
            "tokend picks the new one up without a restart",
            self._identity,
            signing.subject,
            when,
            _day(signing.not_after),
        )

    def __repr__(self) -> str:
        return f"CertificateGrant(client_id={self.client_id!r})"


def _digest(parts: list[bytes]) -> bytes:
    return hashlib.sha256(b"".join(hashlib.sha256(part).digest() for part in parts)).digest()


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


CREDENTIALS.register("certificate", CredentialType(CertificateOptions, CertificateGrant))
