"""Logging in to Vault for real: token renewal and revocation, AppRole re-login, Kubernetes auth
with a rotating service-account token."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.support.harness import Harness
from tests.support.idp import FakeIdp
from tests.support.openbao import Bao
from tests.support.servers import serve
from tests.support.vault import (
    H,
    M,
    config_for,
    eventually,
    run,
    stored,
    vault_options,
    writer_policy,
)
from tokend.engine import ApsScheduler
from tokend.vault import VaultSession


def test_a_short_lived_token_is_renewed_and_a_revoked_one_reported(
    bao: Bao, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tokend")
    created = bao.client().auth.token.create(
        policies=["default"], ttl="2s", renewable=True, explicit_max_ttl="1h"
    )["auth"]
    accessor = created["accessor"]

    def lookup() -> dict[str, Any]:
        data: dict[str, Any] = bao.client().auth.token.lookup_accessor(accessor)["data"]
        return data

    async def main() -> None:
        scheduler = ApsScheduler()
        scheduler.start()
        session = VaultSession(vault_options(bao, created["client_token"]), scheduler=scheduler)
        try:
            assert session.check_login() is None
            await session.run(lambda c: None, path="", action="")  # plans the renewal
            original_expiry = lookup()["expire_time"]
            renewed = await eventually(lambda: lookup().get("last_renewal_time"), "a renewal")
            # Renewed again after the original 2 s TTL: the token outlives it.
            await eventually(lambda: lookup().get("last_renewal_time") != renewed, "a 2nd renewal")
            assert lookup()["expire_time"] > original_expiry
            bao.client().auth.token.revoke_accessor(accessor)
            await eventually(
                lambda: "is invalid, expired or revoked" in caplog.text, "the revocation report"
            )
        finally:
            await session.close()
            await scheduler.stop(1)

    asyncio.run(main())
    reports = [r.getMessage() for r in caplog.records if "revoked" in r.getMessage()]
    assert reports[0] == (
        "vault: cannot keep tokend's Vault token alive: "
        f"{bao.url}/v1/auth/token/lookup-self: the Vault token from inline value is invalid, "
        "expired or revoked (give tokend a valid token)"
    )
    assert created["client_token"] not in caplog.text


def approle(bao: Bao, tmp_path: Path, policy: str, **role: Any) -> dict[str, Any]:
    """An AppRole set up through the API, its IDs in files as an operator would deliver them."""
    name = f"tokend-{uuid.uuid4().hex[:8]}"
    root = bao.client()
    root.auth.approle.create_or_update_approle(name, token_policies=[policy], **role)
    role_id = root.auth.approle.read_role_id(name)["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id(name)["data"]["secret_id"]
    (tmp_path / "role_id").write_text(role_id + "\n")
    (tmp_path / "secret_id").write_text(secret_id + "\n")
    return {
        "method": "approle",
        "role_id": {"file": str(tmp_path / "role_id")},
        "secret_id": {"file": str(tmp_path / "secret_id")},
    }


def logins(caplog: pytest.LogCaptureFixture) -> int:
    return sum("vault: logged in" in record.getMessage() for record in caplog.records)


def test_approle_logs_in_again_when_its_token_was_revoked(
    idp: FakeIdp, bao: Bao, tmp_path: Path, kvpath: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tokend")
    auth = approle(bao, tmp_path, writer_policy(bao, kvpath), token_ttl="2h")

    async def scenario(h: Harness) -> None:
        await h.start()
        await h.run_for(timedelta(0))
        assert stored(bao, kvpath)["access_token"] == h.job().token.value
        assert logins(caplog) == 1
        await asyncio.to_thread(
            bao.client().sys.revoke_prefix, "auth/approle/login"
        )  # every token AppRole gave out
        await h.run_for(H)  # the next refresh finds its token dead, logs in, writes
        assert h.job().results["success"] == 2
        assert stored(bao, kvpath)["access_token"] == h.job().token.value
        assert h.slot("vault").failures == 0
        assert logins(caplog) == 2

    run(config_for(idp, bao, [{"type": "vault", "path": kvpath}], auth=auth), scenario)
    for secret in ((tmp_path / "role_id").read_text(), (tmp_path / "secret_id").read_text()):
        assert secret.strip() not in caplog.text


def test_approle_logs_in_again_before_an_unrenewable_token_expires(
    idp: FakeIdp, bao: Bao, tmp_path: Path, kvpath: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tokend")
    auth = approle(bao, tmp_path, writer_policy(bao, kvpath), token_type="batch", token_ttl="1h")

    async def scenario(h: Harness) -> None:
        start = h.clock.now()
        await h.start()
        await h.run_for(timedelta(0))
        assert logins(caplog) == 1
        await h.run_for(41 * M)
        renewals = [at - start for at, key in h.scheduler.runs if key == "vault/token"]
        assert renewals == [40 * M]  # at two thirds of the TTL: batch tokens are not renewable
        assert logins(caplog) == 2
        await h.run_for(2 * H)
        assert stored(bao, kvpath)["access_token"] == h.job().token.value

    run(config_for(idp, bao, [{"type": "vault", "path": kvpath}], auth=auth), scenario)


class TokenReviews:
    """The one Kubernetes API call Vault's kubernetes auth makes: TokenReview. It says every
    JWT belongs to the service account apps/tokend, and records the JWTs it was asked about."""

    def __init__(self) -> None:
        self.reviewed: list[str] = []
        self.app = Starlette(
            routes=[
                Route("/apis/authentication.k8s.io/v1/tokenreviews", self.review, methods=["POST"])
            ]
        )

    async def review(self, request: Request) -> JSONResponse:
        self.reviewed.append((await request.json())["spec"]["token"])
        user = {"username": "system:serviceaccount:apps:tokend", "uid": "uid-1"}
        return JSONResponse(
            {"kind": "TokenReview", "status": {"authenticated": True, "user": user}}
        )


def service_account_jwt(key: ec.EllipticCurvePrivateKey) -> str:
    claims = {
        "iss": "kubernetes/serviceaccount",
        "sub": "system:serviceaccount:apps:tokend",
        "kubernetes.io/serviceaccount/namespace": "apps",
        "kubernetes.io/serviceaccount/service-account.name": "tokend",
        "kubernetes.io/serviceaccount/service-account.uid": "uid-1",
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key, algorithm="ES256")


def cluster_ca(key: ec.EllipticCurvePrivateKey) -> str:
    """A CA certificate for the kubernetes auth config (required; unused over plain http)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-cluster")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def test_kubernetes_login_rereads_the_service_account_token(
    idp: FakeIdp, bao: Bao, tmp_path: Path, kvpath: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tokend")
    key = ec.generate_private_key(ec.SECP256R1())
    reviews = TokenReviews()
    mount = f"k8s-{uuid.uuid4().hex[:8]}"
    jwt_file = tmp_path / "token"
    jwt_file.write_text(service_account_jwt(key))
    auth = {"method": "kubernetes", "mount": mount, "role": "tokend", "jwt_file": str(jwt_file)}
    sinks = [{"type": "vault", "path": kvpath}]

    async def scenario(h: Harness) -> None:
        await h.start()
        await h.run_for(timedelta(0))
        assert stored(bao, kvpath)["access_token"] == h.job().token.value
        jwt_file.write_text(rotated)  # the kubelet rotates projected tokens
        await asyncio.to_thread(bao.client().sys.revoke_prefix, f"auth/{mount}/login")
        await h.run_for(H)
        assert stored(bao, kvpath)["access_token"] == h.job().token.value
        assert h.slot("vault").failures == 0

    with serve(reviews.app) as kubernetes:
        root = bao.client()
        root.sys.enable_auth_method("kubernetes", path=mount)
        root.auth.kubernetes.configure(
            kubernetes_host=kubernetes,
            kubernetes_ca_cert=cluster_ca(key),
            disable_local_ca_jwt=True,
            mount_point=mount,
        )
        root.auth.kubernetes.create_role(
            "tokend",
            bound_service_account_names=["tokend"],
            bound_service_account_namespaces=["apps"],
            policies=[writer_policy(bao, kvpath)],
            mount_point=mount,
        )
        first, rotated = jwt_file.read_text(), service_account_jwt(key)
        run(config_for(idp, bao, sinks, auth=auth), scenario)
    assert reviews.reviewed == [first, rotated]
    assert logins(caplog) == 2
    assert first not in caplog.text and rotated not in caplog.text
