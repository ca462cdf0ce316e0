"""Key material for signed client assertions: a private key and its certificate chain, read
from PEM or PKCS#12, checked to belong together, and the JWT headers that name them.

Nothing here ever puts key material into a message: errors say what is wrong with which input
(`certificate`, `private_key`, `pkcs12`), never what it holds, and `repr` shows only the
certificate's subject and expiry.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

if TYPE_CHECKING:
    from tokend.oauth.grants.certificate import Algorithm

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class KeyMaterialError(ValueError):
    """The key material cannot be used. The text names the input, never its content."""


_EC_ALGORITHMS: dict[str, Algorithm] = {
    "secp256r1": "ES256",
    "secp384r1": "ES384",
    "secp521r1": "ES512",
}
_EC_JWK_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_MIN_RSA_BITS = 2048


@dataclass(frozen=True, slots=True, repr=False)
class SigningKey:
    """A private key and the certificate chain that goes with it (leaf first)."""

    key: PrivateKey = field(repr=False)
    chain: tuple[x509.Certificate, ...]

    @property
    def certificate(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    @property
    def not_before(self) -> datetime:
        return self.certificate.not_valid_before_utc

    @property
    def subject(self) -> str:
        return self.certificate.subject.rfc4514_string()

    def x5t_s256(self) -> str:
        """base64url(SHA-256 of the DER certificate): Entra ID's `x5t#S256`."""
        return _b64url(self.certificate.fingerprint(hashes.SHA256()))

    def x5t(self) -> str:
        """base64url(SHA-1 of the DER certificate): the older `x5t` (Entra ID v1)."""
        return _b64url(self.certificate.fingerprint(hashes.SHA1()))  # noqa: S303 - a name, not security

    def x5c(self) -> list[str]:
        """The chain as `x5c` wants it: standard base64 of each DER certificate, leaf first."""
        return [
            base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")
            for cert in self.chain
        ]

    def jwk_thumbprint(self) -> str:
        """RFC 7638 thumbprint of the public key: the usual `kid` of a generic OAuth2 client."""
        members = public_jwk(self.key.public_key())
        canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
        return _b64url(hashlib.sha256(canonical.encode()).digest())

    def algorithm(self, wanted: Algorithm | None) -> Algorithm:
        """The JWS algorithm to sign with: `wanted` if the key can, else the key's default
        (PS256 for RSA, ES256/384/512 by the EC curve)."""
        if isinstance(self.key, rsa.RSAPrivateKey):
            if wanted in (None, "PS256", "RS256"):
                return wanted or "PS256"
            raise KeyMaterialError(f"algorithm {wanted} needs an EC key; this key is RSA")
        natural = _EC_ALGORITHMS[self.key.curve.name]
        if wanted in (None, natural):
            return natural
        raise KeyMaterialError(
            f"algorithm {wanted} does not fit this key (EC {self.key.curve.name}: {natural})"
        )

    def __repr__(self) -> str:
        return f"SigningKey(subject={self.subject!r}, not_after={self.not_after.isoformat()})"


def public_jwk(public: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The required members of a public key's JWK (RFC 7638 section 3.2)."""
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        return {"e": _b64url_int(numbers.e), "kty": "RSA", "n": _b64url_int(numbers.n)}
    point = public.public_numbers()
    size = (public.curve.key_size + 7) // 8
    return {
        "crv": _EC_JWK_CURVES[public.curve.name],
        "kty": "EC",
        "x": _b64url(point.x.to_bytes(size, "big")),
        "y": _b64url(point.y.to_bytes(size, "big")),
    }


def load_pem(certificate: bytes, private_key: bytes | None, password: bytes | None) -> SigningKey:
    """A certificate chain (PEM) and its private key (PEM: in `private_key`, or in the
    certificate's PEM when `private_key` is None)."""
    try:
        chain = tuple(x509.load_pem_x509_certificates(certificate))
    except ValueError:
        raise KeyMaterialError("certificate: no PEM certificate in it") from None
    source, what = (private_key, "private_key") if private_key else (certificate, "certificate")
    if b"PRIVATE KEY-----" not in source:
        raise KeyMaterialError(f"{what}: no PEM private key in it")
    try:
        key = serialization.load_pem_private_key(source, password=password)
    except TypeError:
        problem = "is encrypted: give its password" if password is None else "is not encrypted"
        raise KeyMaterialError(f"{what}: the private key {problem}") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyMaterialError(
            f"{what}: the private key cannot be read (damaged, or the password is wrong)"
        ) from None
    return _checked(key, chain, what)


def load_pkcs12(data: bytes, password: bytes | None) -> SigningKey:
    """A PKCS#12 bundle (.pfx/.p12), raw or base64 (as Key Vault and KV stores keep it)."""
    der = data if data[:1] == b"\x30" else _unbase64(data)
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(der, password)
    except ValueError:
        raise KeyMaterialError(
            "pkcs12: cannot be read (not PKCS#12, damaged, or the password is wrong)"
        ) from None
    if key is None or cert is None:
        raise KeyMaterialError("pkcs12: the bundle must hold a private key and its certificate")
    return _checked(key, (cert, *extra), "pkcs12")


def _checked(key: object, chain: tuple[x509.Certificate, ...], what: str) -> SigningKey:
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise KeyMaterialError(f"{what}: the private key must be RSA or EC")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < _MIN_RSA_BITS:
        raise KeyMaterialError(f"{what}: the RSA key has {key.key_size} bits; at least 2048")
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name not in _EC_ALGORITHMS:
        raise KeyMaterialError(f"{what}: EC curve {key.curve.name} is not P-256, P-384 or P-521")
    public = _public_der(key.public_key())
    for index, cert in enumerate(chain):
        if _public_der(cert.public_key()) == public:
            return SigningKey(key, (cert, *chain[:index], *chain[index + 1 :]))
    raise KeyMaterialError(f"{what}: the private key does not match the certificate")


def _public_der(public: object) -> bytes:
    if not isinstance(public, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        return b""  # a certificate for another kind of key matches no key tokend signs with
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _unbase64(data: bytes) -> bytes:
    try:
        return base64.b64decode(b"".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise KeyMaterialError("pkcs12: neither a PKCS#12 file nor its base64") from None


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64url_int(number: int) -> str:
    return _b64url(number.to_bytes((number.bit_length() + 7) // 8, "big"))
