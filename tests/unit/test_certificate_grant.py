"""The certificate grant on its own, on a fake clock: the exact request and client assertion per
kind of server, key material read through shared clients and re-parsed only when it changes,
and the expiry warning (when, how often, and its whole line)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.certs import ClientCert, client_cert
from tests.support.clock import FakeClock
from tokend.oauth.dialects import Endpoint, Target
from tokend.oauth.grants import certificate
from tokend.oauth.grants.base import CredentialState, GrantContext
from tokend.oauth.grants.certificate import (
    ASSERTION_TYPE,
    CertificateGrant,
    CertificateOptions,
    certificate_problems,
)
from tokend.secrets import Secret, SecretError, SecretReference

TOKEN_URL = "https://login.example/tenant/oauth2/v2.0/token"
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CERT = client_cert(not_before=START - timedelta(days=1), lifetime=timedelta(days=400))


@pytest.fixture(autouse=True)
def _no_earlier_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(certificate, "_last_warned", {})


def _files(tmp_path: Path, cert: ClientCert = CERT, stem: str = "app") -> dict[str, Any]:
    cert_path, key_path = cert.write(tmp_path, stem)
    return {"certificate": {"file": str(cert_path)}, "private_key": {"file": str(key_path)}}


def _grant(
    options: dict[str, Any],
    *,
    clock: FakeClock | None = None,
    version: int | None = 2,
    identity: str = "app",
    resources: Any = None,
) -> CertificateGrant:
    parsed = CertificateOptions.model_validate({"type": "certificate", **options})
    context = GrantContext(
        client_id="client-1",
        endpoint=Endpoint(token_url=TOKEN_URL),
        resources=resources,
        identity=identity,
        clock=clock or FakeClock(START),
        entra_version=version,  # type: ignore[arg-type]
    )
    return CertificateGrant(parsed, context)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_the_request_and_its_assertion_for_entra_v2(tmp_path: Path) -> None:
    grant = _grant(_files(tmp_path))
    request = asyncio.run(grant.request(TOKEN_URL, Target(scopes=("api://crm/.default",))))
    assert (request.method, request.url) == ("POST", TOKEN_URL)
    assert request.headers == {"Accept": "application/json"}
    assertion = request.form.pop("client_assertion")
    assert request.form == {
        "grant_type": "client_credentials",
        "client_id": "client-1",
        "client_assertion_type": ASSERTION_TYPE,
        "scope": "api://crm/.default",
    }
    header = jwt.get_unverified_header(assertion)
    der = CERT.certificate.public_bytes(serialization.Encoding.DER)
    assert header == {
        "alg": "PS256",
        "typ": "JWT",
        "x5t#S256": _b64url(hashlib.sha256(der).digest()),
    }
    claims = jwt.decode(assertion, CERT.certificate.public_key(), algorithms=["PS256"],  # type: ignore[arg-type]
                        audience=TOKEN_URL, options={"verify_exp": False, "verify_nbf": False,
                                                     "verify_iat": False})  # fmt: skip
    now = int(START.timestamp())
    jti = claims.pop("jti")
    assert uuid.UUID(jti).version == 4
    assert claims == {
        "aud": TOKEN_URL,
        "iss": "client-1",
        "sub": "client-1",
        "nbf": now,
        "iat": now,
        "exp": now + 600,
    }
    second = asyncio.run(grant.request(TOKEN_URL, Target(scopes=("s",))))
    assert (
        jwt.decode(second.form["client_assertion"], options={"verify_signature": False})["jti"]
        != jti
    )


def test_entra_v1_also_names_the_sha1_thumbprint(tmp_path: Path) -> None:
    grant = _grant(_files(tmp_path), version=1)
    request = asyncio.run(grant.request(TOKEN_URL, Target(resource="https://crm.example")))
    header = jwt.get_unverified_header(request.form["client_assertion"])
    der = CERT.certificate.public_bytes(serialization.Encoding.DER)
    assert header["x5t"] == _b64url(hashlib.sha1(der).digest())  # noqa: S324 - a name
    assert set(header) == {"alg", "typ", "x5t#S256", "x5t"}
    assert request.form["resource"] == "https://crm.example"


def test_other_servers_get_a_kid_and_x5c_when_asked(tmp_path: Path) -> None:
    files = _files(tmp_path)
    plain = _grant(files, version=None)
    header = jwt.get_unverified_header(
        asyncio.run(plain.request(TOKEN_URL, Target())).form["client_assertion"]
    )
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(CERT.key.public_key(), as_dict=True)  # type: ignore[arg-type]
    canonical = '{"e":"%s","kty":"RSA","n":"%s"}' % (jwk["e"], jwk["n"])  # noqa: UP031
    assert header == {
        "alg": "PS256",
        "typ": "JWT",
        "kid": _b64url(hashlib.sha256(canonical.encode()).digest()),
    }
    named = _grant({**files, "key_id": "key-7", "send_x5c": True, "algorithm": "RS256"},
                   version=None)  # fmt: skip
    header = jwt.get_unverified_header(
        asyncio.run(named.request(TOKEN_URL, Target())).form["client_assertion"]
    )
    der = CERT.certificate.public_bytes(serialization.Encoding.DER)
    assert header == {
        "alg": "RS256",
        "typ": "JWT",
        "kid": "key-7",
        "x5c": [base64.b64encode(der).decode()],
    }


class _FromResources(SecretReference):
    """Key material read through a shared client (as `{vault: ...}` is)."""

    value: str = ""

    def describe(self) -> str:
        return "test store"

    def resolve(self, resources: Any = None) -> Secret:
        if resources is None:
            raise SecretError("test store: no shared client", transient=True)
        return Secret(getattr(resources, self.value))


class _Store:
    def __init__(self, cert: ClientCert, password: str | None = None) -> None:
        self.cert = cert.cert_pem().decode()
        self.key = cert.key_pem(password.encode() if password else None).decode()
        self.password = password or ""


def test_key_material_is_read_through_the_shared_clients() -> None:
    options = CertificateOptions.model_construct(
        type="certificate",
        certificate=_FromResources(value="cert"),
        private_key=_FromResources(value="key"),
        pkcs12=None,
        password=_FromResources(value="password"),
        algorithm=None,
        send_x5c=False,
        key_id=None,
    )
    store = _Store(CERT, password="pw-9")
    context = GrantContext("client-1", Endpoint(token_url=TOKEN_URL), store,  # type: ignore[arg-type]
                           identity="app", clock=FakeClock(START), entra_version=2)  # fmt: skip
    grant = CertificateGrant(options, context)
    request = asyncio.run(grant.request(TOKEN_URL, Target()))
    assert jwt.decode(request.form["client_assertion"], options={"verify_signature": False})
    without = CertificateGrant(options, GrantContext("client-1", Endpoint(token_url=TOKEN_URL)))
    with pytest.raises(SecretError) as caught:
        asyncio.run(without.request(TOKEN_URL, Target()))
    assert str(caught.value) == "certificate credential: test store: no shared client"
    assert caught.value.transient is True
    assert asyncio.run(without.source_version()) == "unreadable:secret_unavailable"


def test_unreadable_or_unusable_key_material_says_which(tmp_path: Path) -> None:
    files = _files(tmp_path)
    missing = {**files, "private_key": {"file": str(tmp_path / "gone.pem")}}
    with pytest.raises(SecretError) as caught:
        asyncio.run(_grant(missing).request(TOKEN_URL, Target()))
    assert str(caught.value).startswith("certificate credential: ")
    assert str(tmp_path / "gone.pem") in str(caught.value)
    assert caught.value.transient is False
    p256 = client_cert(ec_curve=ec.SECP256R1())
    wrong = {**_files(tmp_path, p256, "ec"), "algorithm": "PS256"}
    with pytest.raises(SecretError) as caught:
        asyncio.run(_grant(wrong).request(TOKEN_URL, Target()))
    assert str(caught.value) == (
        "certificate credential: algorithm PS256 does not fit this key (EC secp256r1: ES256)"
    )


def test_key_material_is_parsed_again_only_when_it_changed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = _files(tmp_path)
    grant = _grant(files)
    assert grant.credential_state() == CredentialState("app", None)
    with caplog.at_level(logging.INFO, logger="tokend.credentials"):
        first = asyncio.run(grant.source_version())
        asyncio.run(grant.request(TOKEN_URL, Target()))
        asyncio.run(grant.request(TOKEN_URL, Target()))
        assert asyncio.run(grant.source_version()) == first
        assert len(first) == 16 and int(first, 16) >= 0
        renewed = client_cert(not_before=START, lifetime=timedelta(days=30), key_index=1)
        _files(tmp_path, renewed)  # the same file names, new content
        asyncio.run(grant.request(TOKEN_URL, Target()))
        assert asyncio.run(grant.source_version()) != first
    expiries = [_day(CERT.certificate.not_valid_after_utc), _day(START + timedelta(days=30))]
    assert [r.getMessage() for r in caplog.records] == [
        f"identity app: using certificate CN=tokend test app (expires {expiry})"
        for expiry in expiries
    ]
    assert grant.credential_state() == CredentialState(
        "app", renewed.certificate.not_valid_after_utc
    )


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


WARNING = (
    "identity {identity}: certificate CN=tokend test app {when} ({day}): renew it and update its"
    " secret reference; tokend picks the new one up without a restart"
)


@pytest.mark.parametrize(
    ("left", "when"),
    [
        (timedelta(days=14), "expires in 14 days"),
        (timedelta(days=2), "expires in 2 days"),
        (timedelta(days=1, hours=23), "expires in 47h00m"),
        (timedelta(hours=5, seconds=7), "expires in 5h00m"),
        (timedelta(0), "has expired"),
        (-timedelta(days=3), "has expired"),
    ],
)
def test_the_expiry_warning_says_how_long_is_left(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, left: timedelta, when: str
) -> None:
    not_after = CERT.certificate.not_valid_after_utc
    clock = FakeClock(not_after - left)
    grant = _grant(_files(tmp_path), clock=clock)
    with caplog.at_level(logging.WARNING, logger="tokend.credentials"):
        asyncio.run(grant.request(TOKEN_URL, Target()))
    assert _warnings(caplog) == [WARNING.format(identity="app", when=when, day=_day(not_after))]


def test_no_warning_more_than_14_days_before(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    not_after = CERT.certificate.not_valid_after_utc
    clock = FakeClock(not_after - timedelta(days=14, seconds=1))
    with caplog.at_level(logging.WARNING, logger="tokend.credentials"):
        asyncio.run(_grant(_files(tmp_path), clock=clock).request(TOKEN_URL, Target()))
    assert _warnings(caplog) == []


def test_one_warning_a_day_per_identity(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    not_after = CERT.certificate.not_valid_after_utc
    clock = FakeClock(not_after - timedelta(days=10))
    files = _files(tmp_path)
    grants = [_grant(files, clock=clock, version=v) for v in (1, 2)]  # one identity, 2 grants
    other = _grant(files, clock=clock, identity="other")
    with caplog.at_level(logging.WARNING, logger="tokend.credentials"):
        for grant in (*grants, other):
            asyncio.run(grant.request(TOKEN_URL, Target()))
        clock.advance(timedelta(days=1) - timedelta(microseconds=1))
        asyncio.run(grants[0].request(TOKEN_URL, Target()))
        assert len(_warnings(caplog)) == 2  # app and other, once each
        clock.advance(timedelta(microseconds=1))
        asyncio.run(grants[1].request(TOKEN_URL, Target()))
    assert [line.split(":")[0] for line in _warnings(caplog)] == [
        "identity app",
        "identity other",
        "identity app",
    ]


def test_certificate_validity_to_the_second() -> None:
    from tokend.oauth.grants.keys import SigningKey

    signing = SigningKey(CERT.key, (CERT.certificate,))  # type: ignore[arg-type]
    not_after = CERT.certificate.not_valid_after_utc
    not_before = CERT.certificate.not_valid_before_utc
    assert certificate_problems(signing, not_after) == [
        f"certificate CN=tokend test app expired at {_day(not_after)}"
    ]
    assert certificate_problems(signing, not_after - timedelta(microseconds=1)) == []
    assert certificate_problems(signing, not_before) == []
    assert certificate_problems(signing, not_before - timedelta(microseconds=1)) == [
        f"certificate CN=tokend test app is not valid before {_day(not_before)}"
    ]
    assert (
        repr(_grant({"certificate": {"file": "/x.pem"}}))
        == "CertificateGrant(client_id='client-1')"
    )


class _Vault:
    """Key material in a store reached through shared clients (as Vault is)."""

    def __init__(self, **values: str) -> None:
        self.values = values


class _InVault(SecretReference):
    key: str = ""

    def describe(self) -> str:
        return "test store"

    def resolve(self, resources: Any = None) -> Secret:
        if not isinstance(resources, _Vault):
            raise SecretError("test store: no shared client", transient=True)
        return Secret(resources.values[self.key])


def _stored_options(**refs: str) -> CertificateOptions:
    return CertificateOptions.model_construct(
        type="certificate",
        certificate=_InVault(key=refs["certificate"]) if "certificate" in refs else None,
        private_key=_InVault(key=refs["private_key"]) if "private_key" in refs else None,
        pkcs12=_InVault(key=refs["pkcs12"]) if "pkcs12" in refs else None,
        password=_InVault(key=refs["password"]) if "password" in refs else None,
        algorithm=None,
        send_x5c=False,
        key_id=None,
    )


def test_check_reads_stored_key_material_through_the_shared_clients() -> None:
    expired = client_cert(not_before=START - timedelta(days=40), lifetime=timedelta(days=10))
    store = _Vault(
        cert=expired.cert_pem().decode(),
        key=expired.key_pem(b"pw-3").decode(),
        pw="pw-3",
        bundle=base64.b64encode(expired.pkcs12(b"pw-3")).decode(),
    )
    line = (
        f"certificate CN=tokend test app expired at {_day(expired.certificate.not_valid_after_utc)}"
    )
    pem = _stored_options(certificate="cert", private_key="key", password="pw")
    bundle = _stored_options(pkcs12="bundle", password="pw")
    for options in (pem, bundle):
        assert options.preflight(store) == [line]  # type: ignore[arg-type]
        assert options.preflight() == []  # unreadable: reported on its own line by check
