"""Key material for certificate credentials: every form that must load, and a clear line for
each that must not, never quoting what the key material holds."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from tests.support.certs import client_cert
from tokend.oauth.grants.certificate import CertificateOptions, certificate_problems
from tokend.oauth.grants.keys import (
    KeyMaterialError,
    SigningKey,
    load_pem,
    load_pkcs12,
    public_jwk,
)

CERT = client_cert()
OTHER = client_cert("other", key_index=1)


def test_pem_forms_load_and_name_the_certificate() -> None:
    apart = load_pem(CERT.cert_pem(), CERT.key_pem(), None)
    together = load_pem(CERT.cert_pem() + CERT.key_pem(), None, None)
    encrypted = load_pem(CERT.cert_pem(), CERT.key_pem(b"pw"), b"pw")
    der = CERT.certificate.public_bytes(serialization.Encoding.DER)
    for signing in (apart, together, encrypted):
        assert signing.x5t_s256() == _b64url(hashlib.sha256(der).digest())
        assert signing.x5t() == _b64url(hashlib.sha1(der).digest())  # noqa: S324
        assert signing.x5c() == [base64.b64encode(der).decode()]
        assert signing.algorithm(None) == "PS256" and signing.algorithm("RS256") == "RS256"


def test_the_leaf_is_the_certificate_of_the_key_whatever_the_order() -> None:
    signing = load_pem(OTHER.cert_pem() + CERT.cert_pem(), CERT.key_pem(), None)
    assert signing.certificate == CERT.certificate
    assert signing.chain == (CERT.certificate, OTHER.certificate)


@pytest.mark.parametrize("encoded", [False, True])
def test_pkcs12_raw_or_base64(encoded: bool) -> None:
    bundle = CERT.pkcs12(b"p12")
    signing = load_pkcs12(base64.encodebytes(bundle) if encoded else bundle, b"p12")
    assert signing.certificate == CERT.certificate


@pytest.mark.parametrize(
    ("load", "message"),
    [
        (lambda: load_pem(b"junk", None, None), "certificate: no PEM certificate in it"),
        (lambda: load_pem(CERT.cert_pem(), None, None), "certificate: no PEM private key in it"),
        (
            lambda: load_pem(CERT.cert_pem(), OTHER.key_pem(), None),
            "private_key: the private key does not match the certificate",
        ),
        (
            lambda: load_pem(CERT.cert_pem(), CERT.key_pem(b"pw"), None),
            "private_key: the private key is encrypted: give its password",
        ),
        (
            lambda: load_pem(CERT.cert_pem(), CERT.key_pem(b"pw"), b"wrong"),
            "private_key: the private key cannot be read (damaged, or the password is wrong)",
        ),
        (
            lambda: load_pem(CERT.cert_pem(), CERT.key_pem(), b"pw"),
            "private_key: the private key is not encrypted",
        ),
        (
            lambda: load_pkcs12(CERT.pkcs12(b"p12"), b"wrong"),
            "pkcs12: cannot be read (not PKCS#12, damaged, or the password is wrong)",
        ),
        (lambda: load_pkcs12(b"%%% not base64", None), "pkcs12: neither a PKCS#12 file nor"),
    ],
)
def test_what_does_not_load_says_why(load: object, message: str) -> None:
    with pytest.raises(KeyMaterialError) as caught:
        load()  # type: ignore[operator]
    assert str(caught.value).startswith(message)
    assert "PRIVATE KEY" not in str(caught.value)


def test_small_rsa_keys_are_refused() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - refused
    weak = type(CERT)(CERT.certificate, key)
    with pytest.raises(KeyMaterialError, match="1024 bits; at least 2048"):
        load_pem(CERT.cert_pem(), weak.key_pem(), None)


@pytest.mark.parametrize(
    ("curve", "algorithm"),
    [(ec.SECP256R1(), "ES256"), (ec.SECP384R1(), "ES384"), (ec.SECP521R1(), "ES512")],
)
def test_ec_keys_sign_by_their_curve(curve: ec.EllipticCurve, algorithm: str) -> None:
    cert = client_cert(ec_curve=curve)
    signing = load_pem(cert.cert_pem(), cert.key_pem(), None)
    assert signing.algorithm(None) == algorithm
    with pytest.raises(KeyMaterialError, match="does not fit this key"):
        signing.algorithm("PS256")
    token = jwt.encode({"a": 1}, signing.key, algorithm=algorithm)
    assert jwt.decode(token, cert.certificate.public_key(), algorithms=[algorithm]) == {"a": 1}  # type: ignore[arg-type]


def test_jwk_thumbprint_is_rfc7638() -> None:
    signing = load_pem(CERT.cert_pem(), CERT.key_pem(), None)
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(CERT.key.public_key(), as_dict=True)  # type: ignore[arg-type]
    canonical = '{"e":"%s","kty":"RSA","n":"%s"}' % (jwk["e"], jwk["n"])  # noqa: UP031
    assert signing.jwk_thumbprint() == _b64url(hashlib.sha256(canonical.encode()).digest())


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()])
def test_an_ec_keys_jwk_and_thumbprint(curve: ec.EllipticCurve) -> None:
    """The RFC 7638 members of an EC key, as PyJWT writes them (x and y padded to the curve)."""
    cert = client_cert(ec_curve=curve)
    signing = load_pem(cert.cert_pem(), cert.key_pem(), None)
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(cert.key.public_key(), as_dict=True)  # type: ignore[arg-type]
    members = {name: jwk[name] for name in ("crv", "kty", "x", "y")}
    assert public_jwk(cert.key.public_key()) == members  # type: ignore[arg-type]
    canonical = '{"crv":"%s","kty":"EC","x":"%s","y":"%s"}' % (jwk["crv"], jwk["x"], jwk["y"])  # noqa: UP031
    assert signing.jwk_thumbprint() == _b64url(hashlib.sha256(canonical.encode()).digest())


def test_an_rsa_keys_jwk() -> None:
    assert public_jwk(CERT.key.public_key()) == {  # type: ignore[arg-type]
        "e": "AQAB",
        "kty": "RSA",
        "n": jwt.algorithms.RSAAlgorithm.to_jwk(CERT.key.public_key(), as_dict=True)["n"],  # type: ignore[arg-type]
    }


def test_x5c_is_the_chain_leaf_first() -> None:
    signing = load_pem(OTHER.cert_pem() + CERT.cert_pem(), CERT.key_pem(), None)
    assert signing.x5c() == [
        base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        for cert in (CERT.certificate, OTHER.certificate)
    ]


def test_repr_shows_no_key_material() -> None:
    signing = load_pem(CERT.cert_pem(), CERT.key_pem(), None)
    assert repr(signing).startswith("SigningKey(subject='CN=tokend test app', not_after=")
    assert "key=" not in repr(signing)


def test_validity_problems() -> None:
    signing = SigningKey(CERT.key, (CERT.certificate,))
    now = datetime.now(UTC)
    assert certificate_problems(signing, now) == []
    assert certificate_problems(signing, now + timedelta(days=400))[0].startswith(
        "certificate CN=tokend test app expired at "
    )
    assert "is not valid before" in certificate_problems(signing, now - timedelta(days=1))[0]


def test_preflight_reports_what_check_must_say(tmp_path: Path) -> None:
    directory = tmp_path
    cert_path, key_path = CERT.write(directory, "app")
    _, other_key = OTHER.write(directory, "other")
    expired = client_cert(not_before=datetime.now(UTC) - timedelta(days=30),
                          lifetime=timedelta(days=1))  # fmt: skip
    old_cert, old_key = expired.write(directory, "old")

    def preflight(**options: object) -> list[str]:
        return CertificateOptions.model_validate({"type": "certificate", **options}).preflight()

    assert preflight(
        certificate={"file": str(cert_path)}, private_key={"file": str(other_key)}
    ) == ["private_key: the private key does not match the certificate"]
    (line,) = preflight(certificate={"file": str(old_cert)}, private_key={"file": str(old_key)})
    assert line.startswith("certificate CN=tokend test app expired at ")
    missing = preflight(certificate={"file": str(directory / "nope.pem")})
    assert missing == []  # an unreadable secret is reported once, by `tokend check` itself
    ec_cert = client_cert(ec_curve=ec.SECP256R1())
    ec_path, ec_key = ec_cert.write(directory, "ec")
    assert preflight(
        certificate={"file": str(ec_path)}, private_key={"file": str(ec_key)}, algorithm="PS256"
    ) == ["algorithm PS256 does not fit this key (EC secp256r1: ES256)"]
    rsa_files = {"certificate": {"file": str(cert_path)}, "private_key": {"file": str(key_path)}}
    assert preflight(**rsa_files, algorithm="ES256") == [
        "algorithm ES256 needs an EC key; this key is RSA"
    ]


def test_preflight_reads_every_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`tokend check` loads the key material as the daemon will: a PKCS#12 bundle with its
    password, an encrypted PEM key, a key inside the certificate's PEM."""
    monkeypatch.setenv("CERT_PASSWORD", "pw-1")

    def preflight(**options: object) -> list[str]:
        return CertificateOptions.model_validate({"type": "certificate", **options}).preflight()

    bundle = tmp_path / "app.p12"
    bundle.write_bytes(CERT.pkcs12(b"pw-1"))
    password = {"env": "CERT_PASSWORD"}
    assert preflight(pkcs12={"file": str(bundle)}, password=password) == []
    assert preflight(pkcs12={"file": str(bundle)}) == [
        "pkcs12: cannot be read (not PKCS#12, damaged, or the password is wrong)"
    ]
    monkeypatch.setenv("CERT_PASSWORD", "pw-2")
    assert preflight(pkcs12={"file": str(bundle)}, password=password) == [
        "pkcs12: cannot be read (not PKCS#12, damaged, or the password is wrong)"
    ]
    cert_path, key_path = CERT.write(tmp_path, "enc", password=b"pw-2")
    pem = {"certificate": {"file": str(cert_path)}, "private_key": {"file": str(key_path)}}
    assert preflight(**pem, password=password) == []
    assert preflight(**pem) == ["private_key: the private key is encrypted: give its password"]
    together = tmp_path / "together.pem"
    together.write_bytes(CERT.cert_pem() + CERT.key_pem())
    assert preflight(certificate={"file": str(together)}) == []
    assert preflight(certificate={"file": str(cert_path)}) == [
        "certificate: no PEM private key in it"
    ]


def _self_signed(key: Any, name: str = "odd key") -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
    )
    hashing = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, hashing)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (ed25519.Ed25519PrivateKey.generate(), "private_key: the private key must be RSA or EC"),
        (
            ec.generate_private_key(ec.SECP256K1()),
            "private_key: EC curve secp256k1 is not P-256, P-384 or P-521",
        ),
    ],
)
def test_keys_tokend_cannot_sign_with(key: Any, message: str) -> None:
    with pytest.raises(KeyMaterialError) as caught:
        load_pem(_pem(_self_signed(key)), _key_pem(key), None)
    assert str(caught.value) == message


def test_a_pkcs12_bundle_is_checked_like_pem() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - refused
    bundle = pkcs12.serialize_key_and_certificates(
        b"weak", weak, _self_signed(weak), None, serialization.NoEncryption()
    )
    with pytest.raises(KeyMaterialError) as caught:
        load_pkcs12(bundle, None)
    assert str(caught.value) == "pkcs12: the RSA key has 1024 bits; at least 2048"
    no_key = pkcs12.serialize_key_and_certificates(
        b"cert only", None, CERT.certificate, None, serialization.NoEncryption()
    )
    with pytest.raises(KeyMaterialError) as caught:
        load_pkcs12(no_key, None)
    assert str(caught.value) == "pkcs12: the bundle must hold a private key and its certificate"


def test_base64_with_stray_characters_is_not_pkcs12() -> None:
    with pytest.raises(KeyMaterialError) as caught:
        load_pkcs12(b"MIIB!!!!", None)  # eight characters, four of them not base64
    assert str(caught.value) == "pkcs12: neither a PKCS#12 file nor its base64"


def test_the_leaf_moves_first_and_the_rest_keep_their_order() -> None:
    third = client_cert("third", ec_curve=ec.SECP256R1())
    signing = load_pem(OTHER.cert_pem() + CERT.cert_pem() + third.cert_pem(), CERT.key_pem(), None)
    assert signing.chain == (CERT.certificate, OTHER.certificate, third.certificate)


def test_rsa_keys_sign_ps256_when_asked() -> None:
    signing = load_pem(CERT.cert_pem(), CERT.key_pem(), None)
    assert signing.algorithm("PS256") == "PS256"
    with pytest.raises(KeyMaterialError) as caught:
        signing.algorithm("ES256")
    assert str(caught.value) == "algorithm ES256 needs an EC key; this key is RSA"


def test_a_coordinate_ending_in_x_keeps_its_last_character() -> None:
    """base64url without padding: only `=` is stripped (P-384 coordinates need none)."""
    key = next(
        candidate
        for scalar in range(1, 2000)
        if (candidate := ec.derive_private_key(scalar, ec.SECP384R1()))
        and _b64url(candidate.public_key().public_numbers().x.to_bytes(48, "big")).endswith("X")
    )
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    assert public_jwk(key.public_key())["x"] == jwk["x"]
    assert jwk["x"].endswith("X")


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_a_pkcs12_bundle_without_its_certificate() -> None:
    key_only = pkcs12.serialize_key_and_certificates(
        b"key only", CERT.key, None, None, serialization.NoEncryption()
    )
    with pytest.raises(KeyMaterialError) as caught:
        load_pkcs12(key_only, None)
    assert str(caught.value) == "pkcs12: the bundle must hold a private key and its certificate"
