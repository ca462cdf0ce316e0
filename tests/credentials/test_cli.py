"""The credential types through the `tokend` command as operators run it: `tokend check` finds
what would fail, and no key material, PKCS#12 password, federated token or managed-identity
header ever reaches stdout, stderr, `/status` or `/metrics`, at DEBUG, on success or failure."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2

from tests.conftest import write_config
from tests.credentials.conftest import fake, identity
from tests.support.certs import client_cert
from tests.support.federation import cluster_trust, service_account_token
from tests.support.idp import CLIENT_ID, FakeIdp
from tests.support.processes import start_tokend, tokend, wait_for
from tests.support.servers import free_port

P12_PASSWORD = "CANARY-p12-password-31c9"
HEADER = "CANARY-identity-header-8d20"


def _token(tmp_path: Path, name: str, **spec: Any) -> dict[str, Any]:
    target = spec or {"scopes": ["https://graph.example/.default"]}
    return {"identity": name, **target, "sinks": [{"type": "file", "path": str(tmp_path / name)}]}


def test_check_validates_each_credential_type(entra: FakeIdp, tmp_path: Path) -> None:
    good, other = client_cert(), client_cert("other", key_index=1)
    expired = client_cert(
        "expired", not_before=datetime.now(UTC) - timedelta(days=40), lifetime=timedelta(days=30)
    )
    good_cert, good_key = good.write(tmp_path, "good")
    _, other_key = other.write(tmp_path, "other")
    old_cert, old_key = expired.write(tmp_path, "old")
    stale = tmp_path / "stale-token"
    stale.write_text(service_account_token(datetime.now(UTC) - timedelta(hours=2)))

    def cert(path: Path, key: Path) -> dict[str, Any]:
        return {"type": "certificate", "certificate": {"file": str(path)},
                "private_key": {"file": str(key)}}  # fmt: skip

    credentials = {
        "good": cert(good_cert, good_key),
        "mismatch": cert(good_cert, other_key),
        "expired": cert(old_cert, old_key),
        "unreadable": cert(tmp_path / "missing.pem", good_key),
        "stale": {"type": "federated", "token_file": str(stale)},
        "nofile": {"type": "federated", "token_file": str(tmp_path / "nope")},
        "nocommand": {"type": "federated", "command": ["/no/such/program", "--token"]},
    }
    document = {
        "identities": {name: identity(entra, cred) for name, cred in credentials.items()},
        "tokens": {name: _token(tmp_path, name) for name in credentials},
        "listen": None,
    }
    config = write_config(tmp_path / "config.yaml", document)
    checked = tokend("check", "-c", str(config))
    assert checked.returncode == 2, checked.stderr
    lines = [line.removeprefix(f"{config}: ") for line in checked.stderr.splitlines()]
    expired_at = expired.certificate.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    stale_line = f"identities.stale.credential: token_file: the token in {stale} expired at "
    assert [line if not line.startswith(stale_line) else stale_line for line in lines] == [
        f"identities.unreadable.credential.certificate: secret file {tmp_path}/missing.pem does "
        "not exist",
        "identities.mismatch.credential: private_key: the private key does not match the "
        "certificate",
        f"identities.expired.credential: certificate CN=expired expired at {expired_at}",
        stale_line,
        f"identities.nofile.credential: token_file {tmp_path}/nope does not exist",
        "identities.nocommand.credential: command: /no/such/program is not an executable program "
        "here",
    ], checked.stderr
    assert lines[3].endswith("Z: whatever should rotate it is not doing so")

    del document["identities"]["mismatch"], document["tokens"]["mismatch"]
    only_good = {"identities": {"good": document["identities"]["good"]},
                 "tokens": {"good": document["tokens"]["good"]}, "listen": None}  # fmt: skip
    ok = tokend("check", "-c", str(write_config(tmp_path / "good.yaml", only_good)))
    assert ok.returncode == 0 and "OK: 1 identities, 1 tokens" in ok.stdout, ok.stderr


def _canary_setup(entra: FakeIdp, tmp_path: Path, port: int | None) -> tuple[Path, list[str]]:
    """A config with one identity per credential type, each holding canaries; returns the
    config and the canary strings."""
    cert, pem = client_cert(key_index=0), client_cert("pem", key_index=1)
    fake(entra).certificates[CLIENT_ID] = [cert.certificate, pem.certificate]
    fake(entra).federations[CLIENT_ID] = cluster_trust()
    fake(entra).identity_header = HEADER
    bundle = tmp_path / "app.pfx"
    bundle.write_bytes(cert.pkcs12(P12_PASSWORD.encode()))
    (tmp_path / "p12-password").write_text(P12_PASSWORD + "\n")
    pem_cert, pem_key = pem.write(tmp_path, "pem")
    federated = tmp_path / "federated-token"
    federated.write_text(service_account_token(datetime.now(UTC)))
    key_lines = pem_key.read_text().splitlines()[1:-1]
    canaries = [P12_PASSWORD, HEADER, *key_lines[2:5], federated.read_text().split(".")[2][:40]]
    identities = {
        "p12": identity(entra, {"type": "certificate", "pkcs12": {"file": str(bundle)},
                                "password": {"file": str(tmp_path / "p12-password")}}),
        "pem": identity(entra, {"type": "certificate", "certificate": {"file": str(pem_cert)},
                                "private_key": {"file": str(pem_key)}, "send_x5c": True}),
        "fed": identity(entra, {"type": "federated", "token_file": str(federated)}),
        "mi": {"credential": {"type": "managed_identity", "source": "app_service"}},
    }  # fmt: skip
    tokens = {name: _token(tmp_path, name) for name in identities}
    tokens["mi"] = _token(tmp_path, "mi", resource="https://crm.example")
    document = {
        "identities": identities,
        "tokens": tokens,
        "defaults": {"startup_spread": 0},
        "listen": f"127.0.0.1:{port}" if port else None,
    }
    return write_config(tmp_path / "config.yaml", document), canaries


def test_canaries_never_printed(entra: FakeIdp, tmp_path: Path) -> None:
    port = free_port()
    config, canaries = _canary_setup(entra, tmp_path, port)
    env = {"IDENTITY_ENDPOINT": f"{entra.url}/msi/token", "IDENTITY_HEADER": HEADER}
    outputs: list[str] = []
    checked = tokend("--log-level", "debug", "check", "-c", str(config), env=env)
    assert checked.returncode == 0, checked.stderr
    log = tmp_path / "tokend.log"
    process = start_tokend("--log-level", "debug", "run", "-c", str(config), env=env, log=log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(base), what="every token published")
        outputs += [httpx2.get(f"{base}/{path}").text for path in ("metrics", "status")]
        assert 'tokend_identity_certificate_expiry_timestamp_seconds{identity="p12"}' in outputs[0]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    outputs += [checked.stdout, checked.stderr, process.communicate()[0], log.read_text()]
    # and the failure paths: certificates the provider refuses; a wrong PKCS#12 password
    fake(entra).certificates[CLIENT_ID] = []
    refused = tokend("--log-level", "debug", "once", "-c", str(config), env=env)
    assert refused.returncode == 1 and "AADSTS700016" in refused.stderr, refused.stderr
    (tmp_path / "p12-password").write_text("CANARY-wrong-password-5b1e\n")
    canaries.append("CANARY-wrong-password-5b1e")
    unreadable = tokend("--log-level", "debug", "once", "-c", str(config), env=env)
    assert unreadable.returncode == 2, unreadable.stderr  # tokend once checks first, as run does
    assert "identities.p12.credential: pkcs12: cannot be read" in unreadable.stderr
    outputs += [refused.stdout, refused.stderr, unreadable.stdout, unreadable.stderr]
    for text in outputs:
        for canary in canaries:
            assert canary not in text, canary
    assert "Traceback" not in log.read_text()


def _ready(base: str) -> bool:
    try:
        return httpx2.get(f"{base}/readyz").status_code == 200
    except httpx2.TransportError:
        return False
