"""The Vault sink, the Vault session and `{vault: ...}` secrets against a real OpenBao server.

Most tests drive the engine on virtual time (a fake clock, the virtual scheduler) while every
Vault request is real, over HTTP to `bao server -dev`. Token renewal runs on real time against
the server's own TTLs. Restarts use a server with storage on disk, which comes back sealed, as a
production Vault does; `tests/integration/test_vault_process.py` runs tokend itself through one.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import hvac.exceptions as hx
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

from tests.conftest import entra_identity, write_config
from tests.support import idp as faults
from tests.support.clock import FakeClock
from tests.support.idp import CLIENT_SECRET, FakeIdp
from tests.support.openbao import Bao, PersistentServer, dev_server, persistent_server
from tests.support.processes import tokend
from tests.support.servers import serve
from tests.support.virtual import VirtualScheduler
from tokend.config import Config
from tokend.engine import ApsScheduler, Engine
from tokend.oauth import Token, TokenClient
from tokend.sinks import SinkContext, SinkError
from tokend.sinks.file import rfc3339
from tokend.sinks.vault import VaultSink, VaultSinkOptions
from tokend.vault import VaultError, VaultOptions, VaultSession

M = timedelta(minutes=1)
H = timedelta(hours=1)
T = TypeVar("T")


# --- servers and Vault set-up ------------------------------------------------------------------


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bao]:
    with dev_server(tmp_path_factory.mktemp("bao")) as server:
        root = server.client()
        root.sys.enable_secrets_engine("kv", path="kv1", options={"version": "1"})
        root.sys.enable_auth_method("approle")
        yield server


@pytest.fixture
def persistent(tmp_path: Path) -> Iterator[PersistentServer]:
    with persistent_server(tmp_path / "bao") as server:
        server.client().sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
        yield server


@pytest.fixture
def kvpath() -> str:
    """A secret path of this test's own."""
    return f"tokend/{uuid.uuid4().hex[:10]}/crm"


def writer_policy(bao: Bao, path: str, mount: str = "secret") -> str:
    """The policy the README gives tokend for a KV v2 sink."""
    name = f"tokend-{uuid.uuid4().hex[:8]}"
    bao.client().sys.create_or_update_policy(
        name,
        f'path "{mount}/data/{path}" {{ capabilities = ["create", "read", "update"] }}\n'
        f'path "{mount}/metadata/{path}" {{ capabilities = ["create", "update"] }}\n',
    )
    return name


def token_with(bao: Bao, *policies: str, **options: Any) -> str:
    auth = bao.client().auth.token.create(policies=list(policies), **options)["auth"]
    return str(auth["client_token"])


def stored(bao: Bao, path: str, mount: str = "secret") -> dict[str, Any]:
    body = bao.client().secrets.kv.v2.read_secret_version(
        path=path, mount_point=mount, raise_on_deleted_version=True
    )
    data: dict[str, Any] = body["data"]["data"]
    return data


# --- the engine on virtual time, Vault for real --------------------------------------------------


class Harness:
    def __init__(self, config: Config, clock: FakeClock) -> None:
        self.clock = clock
        self.scheduler = VirtualScheduler(clock)
        self.client = TokenClient(clock=clock)
        self.engine = Engine(
            config,
            acquirer=self.client,
            scheduler=self.scheduler,
            durations=_NoDurations(),
            clock=clock,
        )

    @property
    def job(self) -> Any:
        return self.engine.jobs["crm"]

    def slot(self, name: str) -> Any:
        return next(slot for slot in self.job.publisher.slots if slot.name == name)

    async def run_for(self, span: timedelta) -> int:
        return await self.scheduler.run_until(self.clock.now() + span)


class _NoDurations:
    def observe(self, amount: float) -> None:
        return None


def config_for(
    idp: FakeIdp,
    bao: Bao,
    sinks: list[dict[str, Any]],
    *,
    auth: dict[str, Any] | None = None,
    secret: object = CLIENT_SECRET,
    **token_options: Any,
) -> Config:
    return Config.model_validate(config_document(idp, bao, sinks, auth, secret, **token_options))


def config_document(
    idp: FakeIdp,
    bao: Bao,
    sinks: list[dict[str, Any]],
    auth: dict[str, Any] | None = None,
    secret: object = CLIENT_SECRET,
    **token_options: Any,
) -> dict[str, Any]:
    target = token_options or {"resource": "https://crm.example"}
    return {
        "identities": {"app": entra_identity(idp, secret)},
        "tokens": {"crm": {"identity": "app", **target, "sinks": sinks}},
        "defaults": {"startup_spread": 0},
        "vault": {
            "address": bao.url,
            "allow_insecure_http": True,
            "auth": auth or {"method": "token", "token": bao.root_token},
            "timeout": "5s",
        },
        "listen": None,
    }


def run(config: Config, scenario: Callable[[Harness], Awaitable[T]]) -> T:
    async def main() -> T:
        harness = Harness(config, FakeClock())
        try:
            return await scenario(harness)
        finally:
            await harness.engine.stop()
            await harness.client.aclose()

    return asyncio.run(main())


# --- KV version 2 and 1 ----------------------------------------------------------------------------


def test_kv2_holds_the_current_token_with_metadata_and_few_versions(
    idp: FakeIdp, bao: Bao, tmp_path: Path, kvpath: str
) -> None:
    sinks = [
        {"type": "file", "path": str(tmp_path / "crm.token")},
        {"type": "vault", "path": kvpath, "max_versions": 3},
    ]

    async def scenario(h: Harness) -> Token:
        await h.engine.start()
        await h.run_for(timedelta(0))
        first = h.job.token
        assert stored(bao, kvpath) == {
            "access_token": first.value,
            "token_type": "Bearer",
            "expires_on": int(first.expires_at.timestamp()),
            "expires_at": rfc3339(first.expires_at),
            "resource": "https://crm.example",
            "refreshed_at": rfc3339(first.obtained_at),
        }
        await h.run_for(5 * H)  # a refresh every 44 to 50 minutes
        assert h.job.results["success"] >= 6
        assert h.engine.is_ready(h.clock.now())
        token: Token = h.job.token
        return token

    last = run(config_for(idp, bao, sinks), scenario)
    assert stored(bao, kvpath)["access_token"] == last.value
    assert (tmp_path / "crm.token").read_text() == last.value
    metadata = bao.client().secrets.kv.v2.read_secret_metadata(path=kvpath)["data"]
    assert metadata["max_versions"] == 3
    assert metadata["current_version"] >= 6
    assert len(metadata["versions"]) == 3  # hourly writes do not pile up
    assert metadata["custom_metadata"]["managed-by"] == "tokend"
    assert metadata["custom_metadata"]["tokend-token"] == "crm"


def test_kv1_mount_with_chosen_fields(idp: FakeIdp, bao: Bao, kvpath: str) -> None:
    sink = {
        "type": "vault",
        "mount": "kv1",
        "kv_version": 1,
        "path": kvpath,
        "fields": ["access_token", "expires_on", "scopes"],
    }
    config = config_for(idp, bao, [sink], scopes=["https://crm.example/.default"])

    async def scenario(h: Harness) -> Token:
        assert await h.engine.refresh_all()
        token: Token = h.job.token
        return token

    token = run(config, scenario)
    body = bao.client().secrets.kv.v1.read_secret(path=kvpath, mount_point="kv1")
    assert body["data"] == {
        "access_token": token.value,
        "expires_on": int(token.expires_at.timestamp()),
        "scopes": "https://crm.example/.default",
    }


def test_wrong_or_missing_mount_is_named_and_nothing_is_written(
    idp: FakeIdp, bao: Bao, tmp_path: Path, kvpath: str
) -> None:
    sinks = [
        {"type": "vault", "name": "v2-on-v1", "mount": "kv1", "path": kvpath},
        {"type": "vault", "name": "nowhere", "mount": "nowhere", "path": kvpath},
        {"type": "file", "path": str(tmp_path / "crm.token")},
    ]

    async def scenario(h: Harness) -> None:
        assert not await h.engine.refresh_all()
        assert h.slot("v2-on-v1").last_error == (
            f"{bao.url}/v1/kv1/data/{kvpath}: mount 'kv1' is KV version 1: set kv_version: 1"
        )
        assert h.slot("nowhere").last_error == (
            f"{bao.url}/v1/nowhere/data/{kvpath}: no secrets engine is mounted at 'nowhere' "
            "(check the mount)"
        )
        assert (tmp_path / "crm.token").read_text() == h.job.token.value

    run(config_for(idp, bao, sinks), scenario)
    # A KV v2 write to a v1 mount would have created a secret literally named data/PATH.
    assert bao.client().read(f"kv1/data/{kvpath}") is None


def test_https_with_the_configured_ca_bundle(tmp_path: Path) -> None:
    with dev_server(tmp_path, tls=True) as bao:
        assert bao.url.startswith("https://")
        auth = {"method": "token", "token": bao.root_token}
        trusted = VaultOptions.model_validate(
            {"address": bao.url, "ca_bundle": str(bao.ca_bundle), "auth": auth}
        )
        untrusted = VaultOptions.model_validate({"address": bao.url, "auth": auth})
        sessions = VaultSession(trusted), VaultSession(untrusted)
        try:
            assert sessions[0].check_login() is None
            assert sessions[1].check_login() == (
                f"{bao.url}/v1/auth/token/lookup-self: TLS handshake failed (check "
                "vault.ca_bundle and the server's certificate)"
            )
        finally:
            for session in sessions:
                session.close_sync()


def test_on_expiry_withdraw_deletes_the_dead_token(idp: FakeIdp, bao: Bao, kvpath: str) -> None:
    sinks = [{"type": "vault", "path": kvpath, "on_expiry": "withdraw"}]

    async def scenario(h: Harness) -> None:
        await h.engine.start()
        await h.run_for(timedelta(0))
        first = h.job.token
        idp.fail(*[faults.html(502)] * 100)  # a long identity-provider outage
        await h.run_for(first.expires_at - h.clock.now() - timedelta(seconds=1))
        assert stored(bao, kvpath)["access_token"] == first.value  # valid to the very end
        await h.run_for(timedelta(seconds=1))
        with pytest.raises(hx.InvalidPath):  # consumers now fail fast
            stored(bao, kvpath)
        idp.reset()
        await h.run_for(6 * M)
        assert stored(bao, kvpath)["access_token"] == h.job.token.value != first.value

    run(config_for(idp, bao, sinks), scenario)


# --- policies ----------------------------------------------------------------------------------


def test_a_policy_that_forbids_the_write(
    idp: FakeIdp, bao: Bao, tmp_path: Path, kvpath: str
) -> None:
    """A clear error naming the path; the file sink is written all the same; `tokend check`
    finds the problem without writing."""
    reader = f"reader-{uuid.uuid4().hex[:8]}"
    bao.client().sys.create_or_update_policy(
        reader, f'path "secret/data/{kvpath}" {{ capabilities = ["read"] }}'
    )
    token = token_with(bao, reader)
    sinks = [
        {"type": "file", "path": str(tmp_path / "crm.token")},
        {"type": "vault", "path": kvpath},
    ]
    auth = {"method": "token", "token": {"env": "TOKEND_TEST_VAULT_TOKEN"}}

    async def scenario(h: Harness) -> None:
        await h.engine.start()
        await h.run_for(timedelta(0))
        assert (tmp_path / "crm.token").read_text() == h.job.token.value
        assert h.slot("vault").last_error == (
            f"{bao.url}/v1/secret/metadata/{kvpath}: permission denied: the Vault policy of "
            "tokend's token does not allow it to update this secret's metadata (check the policy)"
        )
        assert not h.engine.is_ready(h.clock.now())
        await h.run_for(10 * M)  # retried on the sink's own backoff, not more often
        assert 6 <= h.slot("vault").failures <= 12  # 1 s, 2 s, 4 s ... 5 min

    with pytest.MonkeyPatch.context() as env:
        env.setenv("TOKEND_TEST_VAULT_TOKEN", token)
        run(config_for(idp, bao, sinks, auth=auth), scenario)
    document = config_document(idp, bao, sinks, auth)
    config = write_config(tmp_path / "config.yaml", document)
    denied = tokend("check", "-c", str(config), env={"TOKEND_TEST_VAULT_TOKEN": token})
    assert denied.returncode == 2
    assert problems(denied.stderr) == (
        f"{config}: tokens.crm.sinks.1: vault secret/{kvpath}: tokend's Vault policy lacks "
        f"create, update on secret/data/{kvpath}; create, update on secret/metadata/{kvpath} "
        "(see the README for the policy)"
    )
    writer = token_with(bao, writer_policy(bao, kvpath))
    allowed = tokend("check", "-c", str(config), env={"TOKEND_TEST_VAULT_TOKEN": writer})
    assert allowed.returncode == 0, allowed.stderr
    revoked = tokend("check", "-c", str(config), env={"TOKEND_TEST_VAULT_TOKEN": "s.revoked"})
    assert revoked.returncode == 2
    assert problems(revoked.stderr) == (
        f"{config}: vault.auth: {bao.url}/v1/auth/token/lookup-self: the Vault token from "
        "environment variable TOKEND_TEST_VAULT_TOKEN is invalid, expired or revoked "
        "(give tokend a valid token)"
    )
    for result in (denied, allowed, revoked):
        assert token not in result.stderr + result.stdout
        assert writer not in result.stderr + result.stdout
    assert bao.client().read(f"secret/data/{kvpath}") is None  # check never wrote


def problems(stderr: str) -> str:
    """`tokend check`'s problem lines (not its log lines, which start with a timestamp)."""
    return "\n".join(line for line in stderr.splitlines() if not line[:4].isdigit())


# --- monotonic publish and check-and-set -------------------------------------------------------


class RacingSession(VaultSession):
    """A session before whose first write another writer stores `interloper` (no CAS)."""

    def __init__(self, bao: Bao, path: str, interloper: dict[str, Any]) -> None:
        super().__init__(vault_options(bao))
        self._bao, self._path, self._interloper = bao, path, interloper
        self.raced = False

    async def run(self, operation: Any, *, path: str, action: str) -> Any:
        if action == "write this secret" and not self.raced:
            self.raced = True
            await asyncio.to_thread(
                self._bao.client().secrets.kv.v2.create_or_update_secret,
                path=self._path,
                secret=self._interloper,
            )
        return await super().run(operation, path=path, action=action)


def vault_options(bao: Bao, token: str | None = None) -> VaultOptions:
    return VaultOptions.model_validate(
        {
            "address": bao.url,
            "allow_insecure_http": True,
            "auth": {"method": "token", "token": token or bao.root_token},
        }
    )


def a_token(value: str, expires_in: timedelta) -> Token:
    now = datetime.now(UTC)
    return Token(value=value, token_type="Bearer", expires_at=now + expires_in, obtained_at=now)


def test_monotonic_publish_and_check_and_set_between_two_writers(bao: Bao, kvpath: str) -> None:
    options = VaultSinkOptions(type="vault", path=kvpath)
    newer_elsewhere = a_token("interloper-newer", 3 * H)
    older_elsewhere = a_token("interloper-older", 4 * H)

    def fields(token: Token) -> dict[str, Any]:
        return {"access_token": token.value, "expires_on": int(token.expires_at.timestamp())}

    async def main() -> None:
        first = VaultSession(vault_options(bao))
        racing_newer = RacingSession(bao, kvpath, fields(newer_elsewhere))
        racing_older = RacingSession(bao, kvpath, fields(older_elsewhere))
        sessions = (first, racing_newer, racing_older)
        a, b, c = (VaultSink(options, SinkContext("crm", "vault", s)) for s in sessions)
        try:
            await a.publish(a_token("a-2h", 2 * H))
            await a.publish(a_token("a-1h", 1 * H))  # never replaces a token that lives longer
            assert stored(bao, kvpath)["access_token"] == "a-2h"
            # b read version 1, then another writer stored a newer token before b's write:
            # b's check-and-set fails, b looks again and leaves the newer token alone.
            await b.publish(a_token("b-2h30", 2 * H + 30 * M))
            assert racing_newer.raced
            assert stored(bao, kvpath)["access_token"] == "interloper-newer"
            # c raced with an older token (3h vs its 5h): after its check-and-set fails, c
            # looks again and writes over it with the current version.
            await c.publish(a_token("c-5h", 5 * H))
            assert stored(bao, kvpath)["access_token"] == "c-5h"
        finally:
            for session in sessions:
                await session.close()

    asyncio.run(main())
    metadata = bao.client().secrets.kv.v2.read_secret_metadata(path=kvpath)["data"]
    assert metadata["current_version"] == 4  # a-2h, interloper-newer, interloper-older, c-5h


# --- auth: token renewal, AppRole ----------------------------------------------------------------


async def eventually(condition: Callable[[], Any], what: str, timeout: float = 10) -> Any:
    """Poll `condition` (off the loop) until it is truthy: waiting for an event, not a time."""
    deadline = time.monotonic() + timeout
    while True:
        result = await asyncio.to_thread(condition)
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


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
        await h.engine.start()
        await h.run_for(timedelta(0))
        assert stored(bao, kvpath)["access_token"] == h.job.token.value
        assert logins(caplog) == 1
        await asyncio.to_thread(
            bao.client().sys.revoke_prefix, "auth/approle/login"
        )  # every token AppRole gave out
        await h.run_for(H)  # the next refresh finds its token dead, logs in, writes
        assert h.job.results["success"] == 2
        assert stored(bao, kvpath)["access_token"] == h.job.token.value
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
        await h.engine.start()
        await h.run_for(timedelta(0))
        assert logins(caplog) == 1
        await h.run_for(41 * M)
        renewals = [at - start for at, key in h.scheduler.runs if key == "vault/token"]
        assert renewals == [40 * M]  # at two thirds of the TTL: batch tokens are not renewable
        assert logins(caplog) == 2
        await h.run_for(2 * H)
        assert stored(bao, kvpath)["access_token"] == h.job.token.value

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
        await h.engine.start()
        await h.run_for(timedelta(0))
        assert stored(bao, kvpath)["access_token"] == h.job.token.value
        jwt_file.write_text(rotated)  # the kubelet rotates projected tokens
        await asyncio.to_thread(bao.client().sys.revoke_prefix, f"auth/{mount}/login")
        await h.run_for(H)
        assert stored(bao, kvpath)["access_token"] == h.job.token.value
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


# --- secrets from Vault --------------------------------------------------------------------------


def test_client_secrets_from_vault_kv2_and_kv1(idp: FakeIdp, bao: Bao, tmp_path: Path) -> None:
    app = uuid.uuid4().hex[:8]
    root = bao.client()
    root.secrets.kv.v2.create_or_update_secret(f"apps/{app}", {"client_secret": CLIENT_SECRET})
    root.secrets.kv.v1.create_or_update_secret(
        f"apps/{app}", {"client_secret": CLIENT_SECRET}, mount_point="kv1"
    )
    sinks = [{"type": "file", "path": str(tmp_path / "crm.token")}]

    async def refresh(h: Harness) -> Any:
        ok = await h.engine.refresh_all()
        return ok, str(h.job.last_error)

    for reference in (f"secret/data/apps/{app}#client_secret", f"kv1/apps/{app}#client_secret"):
        ok, _ = run(config_for(idp, bao, sinks, secret={"vault": reference}), refresh)
        assert ok, reference
    ok, error = run(config_for(idp, bao, sinks, secret={"vault": f"secret/apps/{app}#x"}), refresh)
    assert not ok
    assert error == (
        f"config: client secret: {bao.url}/v1/secret/apps/{app}: this is a KV version 2 mount: "
        "its secrets are at MOUNT/data/PATH (kv_version: 2)"
    )
    reference = {"vault": f"secret/data/apps/{app}#nope"}
    ok, error = run(config_for(idp, bao, sinks, secret=reference), refresh)
    assert not ok
    assert error.endswith(
        f"/v1/secret/data/apps/{app}: has no field 'nope' (fields: client_secret)"
    )


# --- Vault goes away and comes back --------------------------------------------------------------


def test_vault_stopped_and_restarted_mid_run(
    idp: FakeIdp, persistent: PersistentServer, tmp_path: Path, kvpath: str
) -> None:
    """Refreshes and the file sink go on while Vault is down (the client secret read from Vault
    earlier is reused); Vault, restarted and so sealed, says so; once unsealed it gets the
    newest token within one backoff step."""
    bao = persistent
    bao.client().secrets.kv.v2.create_or_update_secret("apps/crm", {"client_secret": CLIENT_SECRET})
    sinks = [
        {"type": "file", "path": str(tmp_path / "crm.token")},
        {"type": "vault", "path": kvpath},
    ]
    config = config_for(idp, bao, sinks, secret={"vault": "secret/data/apps/crm#client_secret"})

    async def scenario(h: Harness) -> None:
        await h.engine.start()
        await h.run_for(timedelta(0))
        first = h.job.token
        assert stored(bao, kvpath)["access_token"] == first.value
        vault = h.slot("vault")

        await asyncio.to_thread(bao.stop)
        await h.run_for(H)
        assert h.job.results["success"] == 2  # refreshed, with the client secret read before
        assert (tmp_path / "crm.token").read_text() == h.job.token.value != first.value
        assert vault.failures > 0
        assert vault.last_error == (
            f"{bao.url}/v1/secret/data/{kvpath}: cannot connect to Vault "
            "(connection refused, reset or name not resolved)"
        )

        await asyncio.to_thread(bao.start)  # sealed, as after any restart
        await h.run_for(5 * M)
        assert vault.last_error == f"{bao.url}/v1/secret/data/{kvpath}: Vault is sealed (unseal it)"

        await asyncio.to_thread(bao.unseal)
        await h.run_for(5 * M)  # one maximum backoff step
        assert vault.failures == 0
        assert stored(bao, kvpath)["access_token"] == h.job.token.value
        assert h.engine.is_ready(h.clock.now())

    run(config, scenario)


def test_sink_errors_never_leak_past_sinkerror(bao: Bao, kvpath: str) -> None:
    """Whatever goes wrong in Vault, publish() raises SinkError with one line."""
    options = VaultSinkOptions(type="vault", path=kvpath)

    async def main() -> str:
        session = VaultSession(vault_options(bao, "s.not-a-token"))
        sink = VaultSink(options, SinkContext("crm", "vault", session))
        try:
            await sink.publish(a_token("x" * 20, H))
        except SinkError as exc:
            return str(exc)
        finally:
            await session.close()
        raise AssertionError("published with a bogus token")

    message = asyncio.run(main())
    assert "\n" not in message
    assert message.endswith("is invalid, expired or revoked (give tokend a valid token)")
    assert "s.not-a-token" not in message


def test_reload_keeps_or_replaces_the_vault_session(
    idp: FakeIdp, bao: Bao, tmp_path: Path, kvpath: str
) -> None:
    """Reloading the same vault: block keeps the login and every job; a changed block gets a new
    session, rebuilds the jobs that use Vault, and {vault: ...} client secrets keep working."""
    app = uuid.uuid4().hex[:8]
    bao.client().secrets.kv.v2.create_or_update_secret(
        f"apps/{app}", {"client_secret": CLIENT_SECRET}
    )
    sinks = [{"type": "vault", "path": kvpath}]
    document = config_document(
        idp, bao, sinks, secret={"vault": f"secret/data/apps/{app}#client_secret"}
    )

    async def scenario(h: Harness) -> None:
        await h.engine.start()
        await h.run_for(timedelta(0))
        job, session = h.job, h.engine._vault
        assert job.token is not None
        same = await h.engine.reload(Config.model_validate(document))
        assert same.unchanged == ["crm"] and h.engine._vault is session and h.job is job
        document["vault"]["timeout"] = "7s"
        changed = await h.engine.reload(Config.model_validate(document))
        assert changed.changed == ["crm"] and h.engine._vault is not session
        assert h.job.token is job.token  # carried over: same request
        assert await h.engine.refresh_all()  # reads the client secret through the new session
        assert stored(bao, kvpath)["access_token"] == h.job.token.value
        with pytest.raises(VaultError, match="the Vault session is closed"):
            await session.run(lambda client: None, path="x", action="anything")

    run(Config.model_validate(document), scenario)
