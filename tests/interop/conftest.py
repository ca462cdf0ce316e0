"""A real third-party OAuth2 server for the interop tests: oidc-provider (panva, 9.x, from npm),
run by Node on a free loopback port for the whole session (tests/interop/oidc/server.mjs).

The Node packages come from tests/interop/oidc/package-lock.json via `scripts/setup --test`. When
they are missing the tests fail (never skip): CI must run them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support.certs import ClientCert, client_cert
from tests.support.servers import free_port

OIDC_DIR = Path(__file__).parent / "oidc"
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
RESOURCE = "https://api.tokend.test"
SCOPE = "api:read"
ACCESS_TOKEN_TTL = 300


@dataclass(frozen=True)
class OidcClient:
    client_id: str
    secret: str
    auth_method: str


@dataclass(frozen=True)
class OidcServer:
    issuer: str
    log_path: Path
    clients: dict[str, OidcClient]
    jwt_keys: dict[str, ClientCert]
    """The keys (with certificates) `tokend-jwt` may sign its assertions with, by key type."""

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/token"

    @property
    def host(self) -> str:
        return self.issuer.removeprefix("http://").split(":")[0]

    def client(self, auth_method: str) -> OidcClient:
        return self.clients[auth_method]

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="session")
def oidc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcServer]:
    """oidc-provider listening on 127.0.0.1, with one client per secret auth method."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("the interop tests need Node.js 20+ on PATH (apt-get install nodejs npm)")
    if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        pytest.fail(
            f"{OIDC_DIR}/node_modules is missing: run `scripts/setup --test` "
            "(it runs `npm ci` there) before the interop tests"
        )
    clients = {
        method: OidcClient(
            client_id=f"tokend-{short}",
            # Distinctive canaries (tests grep tokend's output for them), with the characters
            # RFC 6749 §2.3.1 says to form-urlencode inside an HTTP Basic credential.
            secret=f"CANARY-{short}-secret:+/%& =?{secrets.token_hex(12)}",
            auth_method=method,
        )
        for method, short in (("client_secret_basic", "basic"), ("client_secret_post", "post"))
    }
    jwt_keys = {"RSA": client_cert("tokend-jwt"), "EC": client_cert(ec_curve=ec.SECP256R1())}
    env = {
        **os.environ,
        "OIDC_BASIC_SECRET": clients["client_secret_basic"].secret,
        "OIDC_POST_SECRET": clients["client_secret_post"].secret,
        "OIDC_RESOURCE": RESOURCE,
        "OIDC_JWT_JWKS": json.dumps({"keys": [_public_jwk(c) for c in jwt_keys.values()]}),
    }
    port = free_port()
    log_path = tmp_path_factory.mktemp("oidc-provider") / "server.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [node, "server.mjs", str(port)],
            cwd=OIDC_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
        )
    assert process.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    # The reader keeps the pipe drained for the server's whole life.
    reader = threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True)
    reader.start()
    try:
        issuer = _wait_until_ready(process, lines, log_path)
        assert issuer == f"http://127.0.0.1:{port}", issuer
        yield OidcServer(issuer=issuer, log_path=log_path, clients=clients, jwt_keys=jwt_keys)
    finally:
        _stop(process)
        reader.join(STOP_TIMEOUT)
        process.stdout.close()


def _public_jwk(cert: ClientCert) -> dict[str, str]:
    """The public key as the client registers it, named by its RFC 7638 thumbprint (the `kid`
    tokend sends unless told otherwise), computed here independently of tokend."""
    members = json.loads(
        jwt.algorithms.get_default_algorithms()[
            "RS256" if isinstance(cert.key, rsa.RSAPrivateKey) else "ES256"
        ].to_jwk(cert.key.public_key())
    )
    required = ("e", "kty", "n") if members["kty"] == "RSA" else ("crv", "kty", "x", "y")
    canonical = json.dumps({k: members[k] for k in required}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    kid = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    return {k: members[k] for k in required} | {"kid": kid, "use": "sig"}


def _wait_until_ready(
    process: subprocess.Popen[str], lines: queue.Queue[str | None], log_path: Path
) -> str:
    """The issuer from the server's `READY <issuer>` line; fails after STARTUP_TIMEOUT."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            break
        if line is None:
            process.wait(STOP_TIMEOUT)
            _fail_start(f"exited with status {process.returncode} before it was ready", log_path)
        elif line.startswith("READY "):
            return line.split(maxsplit=1)[1].strip()
    _fail_start(f"did not print READY within {STARTUP_TIMEOUT:.0f} s", log_path)
    raise AssertionError("unreachable")


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _fail_start(problem: str, log_path: Path) -> None:
    log = log_path.read_text(errors="replace") if log_path.exists() else ""
    pytest.fail(f"oidc-provider (tests/interop/oidc/server.mjs) {problem}; its log:\n{log}")


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
