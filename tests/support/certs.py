"""Client certificates for certificate credentials: self-signed RSA or EC certificates with
their keys, as PEM files (key apart or together, optionally encrypted) or a PKCS#12 bundle."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class ClientCert:
    certificate: x509.Certificate
    key: Key

    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self, password: bytes | None = None) -> bytes:
        encryption = (
            serialization.BestAvailableEncryption(password)
            if password
            else serialization.NoEncryption()
        )
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    def write(self, directory: Path, stem: str, password: bytes | None = None) -> tuple[Path, Path]:
        """`<stem>.pem` (certificate) and `<stem>-key.pem` (key, mode 0600)."""
        cert, key = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
        cert.write_bytes(self.cert_pem())
        key.write_bytes(self.key_pem(password))
        key.chmod(0o600)
        return cert, key

    def pkcs12(self, password: bytes | None) -> bytes:
        assert isinstance(self.key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
        encryption = (
            serialization.BestAvailableEncryption(password)
            if password
            else serialization.NoEncryption()
        )
        return pkcs12.serialize_key_and_certificates(
            b"tokend", self.key, self.certificate, None, encryption
        )


@functools.cache
def _rsa_key(index: int) -> rsa.RSAPrivateKey:
    """RSA keys are slow to make: a few per session, by index."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def client_cert(
    common_name: str = "tokend test app",
    *,
    key_index: int = 0,
    ec_curve: ec.EllipticCurve | None = None,
    lifetime: timedelta = timedelta(days=365),
    not_before: datetime | None = None,
) -> ClientCert:
    """A self-signed client certificate (RSA key `key_index`, or a fresh EC key on `ec_curve`)."""
    key: Key = ec.generate_private_key(ec_curve) if ec_curve else _rsa_key(key_index)
    start = not_before or datetime.now(UTC) - timedelta(minutes=5)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + lifetime)
        .sign(key, hashes.SHA256())
    )
    return ClientCert(certificate, key)
