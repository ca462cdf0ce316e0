"""`type: certificate` against the fake Entra ID, which checks every assertion claim and header
the way Entra ID does (and refuses a replayed `jti`): real HTTP on loopback, virtual time."""

from __future__ import annotations

import base64
import json
import logging
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client.parser import text_string_to_metric_families

from tests.credentials.conftest import document, fake, identity, run
from tests.support.certs import ClientCert, client_cert
from tests.support.clock import EPOCH, FakeClock
from tests.support.entra import thumbprint
from tests.support.harness import Harness
from tests.support.idp import CLIENT_ID, FakeIdp
from tokend.engine import Phase
from tokend.metrics import Metrics

CRM = {"resource": "https://crm.example"}
GRAPH = {"scopes": ["https://graph.example/.default"]}


def _tokens(tmp_path: Path, **specs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: {**spec, "sinks": [{"type": "file", "path": str(tmp_path / f"{name}.token")}]}
        for name, spec in specs.items()
    }


def _pem_credential(cert: ClientCert, directory: Path, stem: str = "app") -> dict[str, Any]:
    cert_path, key_path = cert.write(directory, stem)
    return {"type": "certificate", "certificate": {"file": str(cert_path)},
            "private_key": {"file": str(key_path)}}  # fmt: skip


def test_every_assertion_passes_every_check_and_none_is_reused(
    entra: FakeIdp, tmp_path: Path
) -> None:
    cert = client_cert()
    fake(entra).certificates[CLIENT_ID] = [cert.certificate]
    config = document(
        identity(entra, _pem_credential(cert, tmp_path)), _tokens(tmp_path, crm=CRM, graph=GRAPH)
    )

    async def scenario(h: Harness) -> None:
        assert await h.refresh_all()
        h.clock.advance(timedelta(minutes=20))
        assert await h.refresh_all()  # a replayed jti would be refused: every one is new

    run(entra, config, scenario)
    accepted = fake(entra).accepted
    assert len(accepted) == 4
    assert len({a.claims["jti"] for a in accepted}) == 4
    for assertion in accepted:
        v1 = assertion.path.endswith("/oauth2/token")
        header, claims = assertion.header, assertion.claims
        assert header["alg"] == "PS256" and header["typ"] == "JWT"
        assert header["x5t#S256"] == thumbprint(cert.certificate)
        assert header.get("x5t") == (thumbprint(cert.certificate, "sha1") if v1 else None)
        assert "kid" not in header and "x5c" not in header
        assert claims["aud"] == entra.token_url(1 if v1 else 2)
        assert claims["iss"] == claims["sub"] == CLIENT_ID
        assert claims["nbf"] == claims["iat"] and claims["exp"] - claims["iat"] == 600
    assert accepted[0].claims["iat"] == int(EPOCH.timestamp())
    assert (tmp_path / "crm.token").read_text()


def _variant(name: str, cert: ClientCert, directory: Path) -> dict[str, Any]:
    cert_path, key_path = cert.write(directory, "app", password=b"pem-pass")
    password = directory / "password"
    password.write_text("pem-pass\n")
    both = directory / "both.pem"
    both.write_bytes(cert.cert_pem() + cert.key_pem())
    bundle = directory / "app.pfx"
    bundle.write_bytes(cert.pkcs12(b"p12-pass"))
    encrypted = {"certificate": {"file": str(cert_path)}, "private_key": {"file": str(key_path)},
                 "password": {"file": str(password)}}  # fmt: skip
    return {
        "encrypted PEM key, RS256": {**encrypted, "algorithm": "RS256"},
        "key and certificate in one PEM, x5c": {"certificate": {"file": str(both)},
                                                "send_x5c": True},
        "PKCS#12 file": {"pkcs12": {"file": str(bundle)}, "password": "p12-pass"},
        "PKCS#12 as base64": {"pkcs12": base64.b64encode(cert.pkcs12(None)).decode()},
    }[name] | {"type": "certificate"}  # fmt: skip


@pytest.mark.parametrize(
    "variant",
    [
        "encrypted PEM key, RS256",
        "key and certificate in one PEM, x5c",
        "PKCS#12 file",
        "PKCS#12 as base64",
    ],
)
def test_key_material_forms(entra: FakeIdp, tmp_path: Path, variant: str) -> None:
    cert = client_cert()
    fake(entra).certificates[CLIENT_ID] = [cert.certificate]
    credential = _variant(variant, cert, tmp_path)
    config = document(identity(entra, credential), _tokens(tmp_path, graph=GRAPH))

    async def scenario(h: Harness) -> None:
        assert await h.refresh_all(), h.job("graph").last_error

    run(entra, config, scenario)
    (accepted,) = fake(entra).accepted
    assert accepted.header["alg"] == credential.get("algorithm", "PS256")
    if credential.get("send_x5c"):
        der = cert.certificate.public_bytes(serialization.Encoding.DER)
        assert accepted.header["x5c"] == [base64.b64encode(der).decode()]


def test_a_renewed_certificate_is_used_without_a_restart(
    entra: FakeIdp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old, new = client_cert("old", key_index=0), client_cert("new", key_index=1)
    fake(entra).certificates[CLIENT_ID] = [old.certificate, new.certificate]
    config = document(
        identity(entra, _pem_credential(old, tmp_path)), _tokens(tmp_path, graph=GRAPH)
    )

    async def scenario(h: Harness) -> None:
        for _ in range(2):
            assert await h.refresh_all()
        new.write(tmp_path, "app")  # the operator (or cert-manager) replaces both files
        assert await h.refresh_all()

    with caplog.at_level(logging.INFO, logger="tokend.credentials"):
        run(entra, config, scenario)
    used = [a.header["x5t#S256"] for a in fake(entra).accepted]
    assert used == [thumbprint(old.certificate)] * 2 + [thumbprint(new.certificate)]
    loaded = [r.getMessage() for r in caplog.records if "using certificate" in r.getMessage()]
    assert len(loaded) == 2, loaded  # parsed again only when the bytes changed
    assert "CN=new" in loaded[1]


def test_an_unregistered_certificate_is_refused_for_good(entra: FakeIdp, tmp_path: Path) -> None:
    fake(entra).certificates[CLIENT_ID] = [client_cert(key_index=0).certificate]
    stranger = client_cert("stranger", key_index=1)
    config = document(
        identity(entra, _pem_credential(stranger, tmp_path)), _tokens(tmp_path, graph=GRAPH)
    )

    async def scenario(h: Harness) -> None:
        assert not await h.refresh_all()
        error = h.job("graph").last_error
        assert error is not None and not error.transient
        assert error.code == "invalid_client/700027"

    run(entra, config, scenario)
    assert not (tmp_path / "graph.token").exists()


def test_an_ec_key_signs_es256_for_a_generic_server(entra: FakeIdp, tmp_path: Path) -> None:
    """Generic OAuth2 servers name the key by `kid` (its RFC 7638 thumbprint), no x5t."""
    cert = client_cert(ec_curve=ec.SECP256R1())
    credential = _pem_credential(cert, tmp_path) | {"key_id": None}
    generic = identity(entra, credential, tenant=None, authority_host=None,
                       token_endpoint=entra.token_url(2))  # fmt: skip
    config = document(generic, _tokens(tmp_path, graph=GRAPH))
    fake(entra).certificates[CLIENT_ID] = [cert.certificate]

    async def scenario(h: Harness) -> None:
        assert not await h.refresh_all()  # Entra ID wants x5t#S256 and RSA: the fake refuses

    run(entra, config, scenario)
    form = entra.token_requests[0].form
    header = _header(form["client_assertion"])
    assert header["alg"] == "ES256" and "x5t#S256" not in header
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", header["kid"])


def _header(assertion: str) -> dict[str, Any]:
    part = assertion.split(".", maxsplit=1)[0]
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


def test_certificate_expiry_is_a_metric_and_a_daily_warning(
    entra: FakeIdp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    cert = client_cert(not_before=EPOCH - timedelta(days=1), lifetime=timedelta(days=11))
    fake(entra).certificates[CLIENT_ID] = [cert.certificate]
    config = document(
        identity(entra, _pem_credential(cert, tmp_path)), _tokens(tmp_path, crm=CRM, graph=GRAPH)
    )

    async def scenario(h: Harness) -> str:
        assert await h.refresh_all()
        clock.advance(timedelta(hours=1))
        assert await h.refresh_all()  # within a day: no second warning
        clock.advance(timedelta(days=1))
        assert await h.refresh_all()
        metrics = Metrics(clock)
        metrics.watch(h.engine)
        return metrics.render().decode()

    with caplog.at_level(logging.WARNING, logger="tokend.credentials"):
        scraped = run(entra, config, scenario, clock)
    (family,) = [
        f
        for f in text_string_to_metric_families(scraped)
        if f.name == "tokend_identity_certificate_expiry_timestamp_seconds"
    ]
    assert [(s.labels, s.value) for s in family.samples] == [
        ({"identity": "app"}, cert.certificate.not_valid_after_utc.timestamp())
    ]
    warnings = [r.getMessage() for r in caplog.records]
    # once a day per certificate, though each endpoint version (crm v1, graph v2) has a grant
    assert len(warnings) == 2, warnings
    assert "expires in 10 days" in warnings[0] and "identity app" in warnings[0]
    assert "expires in 8 days" in warnings[-1]  # 8 days 23 hours


def test_replacing_a_refused_certificate_fixes_it_within_seconds(
    entra: FakeIdp, tmp_path: Path
) -> None:
    """A refusal is permanent (retried at the maximum backoff), but the credential's files are
    watched meanwhile: the renewed certificate is used as soon as it is in place."""
    stale, renewed = client_cert("stale", key_index=0), client_cert("renewed", key_index=1)
    fake(entra).certificates[CLIENT_ID] = [renewed.certificate]
    config = document(
        identity(entra, _pem_credential(stale, tmp_path)), _tokens(tmp_path, graph=GRAPH)
    )

    async def scenario(h: Harness) -> None:
        await h.start()
        await h.run_for(timedelta(seconds=5))
        assert h.job("graph").phase(h.clock.now()) is Phase.FAILING
        renewed.write(tmp_path, "app")
        await h.run_for(timedelta(seconds=30))  # well within the 5-minute backoff
        assert h.job("graph").phase(h.clock.now()) is Phase.FRESH

    run(entra, config, scenario)
    used = [a.header["x5t#S256"] for a in fake(entra).accepted]
    assert used == [thumbprint(renewed.certificate)]
