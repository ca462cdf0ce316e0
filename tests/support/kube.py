"""A real Kubernetes API server for tests: etcd + kube-apiserver v1.20.2 on 127.0.0.1.

The binaries are built once per machine by `scripts/kube-apiserver` (from Debian's `kubernetes`
source package; `scripts/setup --test` runs it) and cached outside the checkout. `running_kube()`
starts both on free ports in a temp dir with a CA, a server certificate for 127.0.0.1, an admin
client certificate (group `system:masters`) and a service-account signing key (the processes,
their keys and command lines: `kube_processes`); RBAC is on, and service-account tokens come
from the TokenRequest API, as in a current cluster. The REST helpers (namespaces, service
accounts, apply, tokens, kubeconfigs) are on `KubeServer`, in `kube_api`.

Without a controller manager nothing runs behind the API: namespaces are never deleted (tests
use fresh ones; `default` itself appears only a moment after /readyz), and no token Secrets are
made for service accounts (TokenRequest only). The API server caches token authentications for
10 s: a revoked token (its service account deleted and recreated) keeps working that long.

A session can use a server that is already running instead (`session_kube()`, when
$TOKEND_TEST_KUBE names its work directory; `python -m tests.support.kube_serve DIR` runs one):
scripts/mutation.py starts one for all the test runs of the `kubernetes` module's mutants.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import pytest

from tests.support.kube_api import KubeApi
from tests.support.kube_processes import (
    SERVICE_ACCOUNT_ISSUER,
    Pki,
    Process,
    apiserver_process,
    binaries_dir,
    etcd_process,
    missing_binaries,
)
from tests.support.pki import CertPair
from tests.support.processes import wait_for
from tests.support.servers import free_port

__all__ = ["SERVICE_ACCOUNT_ISSUER", "KubeServer", "require_kube", "running_kube", "session_kube"]
_READY_TIMEOUT = 90  # 5-9 s on an idle 2-core machine; much more while the suite runs beside it
SHARED = "TOKEND_TEST_KUBE"
"""The work directory of a running server (`tests.support.kube_serve`) the tests use instead of
starting their own."""


def require_kube() -> None:
    """Call at the top of a test module that needs the API server: without the binaries the
    module is skipped with one line, except under CI=true, where it fails."""
    if reason := missing_binaries():
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason, allow_module_level=True)


@dataclass
class KubeServer(KubeApi):
    """etcd + kube-apiserver. The API server can be stopped and started on its own (same port,
    same keys, same etcd): for "API server restarts mid-run" and partition tests."""

    workdir: Path
    pki: Pki
    port: int
    etcd: Process
    apiserver: Process
    owned: bool = True
    """False for a shared server another process started: a test may not stop it."""
    _admin: httpx2.Client | None = field(default=None, init=False, repr=False)
    _kinds: dict[tuple[str, str], tuple[str, bool]] = field(
        default_factory=dict, init=False, repr=False
    )

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.pki.ca

    def ssl_context(self, *, client: CertPair | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        if client is not None:
            context.load_cert_chain(client.cert, client.key)
        return context

    def admin(self) -> httpx2.Client:
        """A client with cluster-admin rights (the `system:masters` certificate); one per server."""
        if self._admin is None:
            self._admin = httpx2.Client(
                base_url=self.url,
                verify=self.ssl_context(client=self.pki.admin),
                trust_env=False,
                timeout=30,
            )
        return self._admin

    def client(self, token: str) -> httpx2.Client:
        """A client that authenticates with a bearer token (a service account's)."""
        return httpx2.Client(
            base_url=self.url,
            verify=self.ssl_context(),
            headers={"Authorization": f"Bearer {token}"},
            trust_env=False,
            timeout=30,
        )

    def start(self) -> None:
        self.etcd.start()
        self.start_apiserver()

    def start_apiserver(self) -> None:
        self.apiserver.start()
        wait_for(self._ready, timeout=_READY_TIMEOUT, what=f"kube-apiserver at {self.url}/readyz")

    def stop_apiserver(self) -> None:
        if not self.owned:
            raise AssertionError(f"the shared API server (${SHARED}) is not a test's to stop")
        self.apiserver.stop()
        if self._admin is not None:
            self._admin.close()
            self._admin = None

    def restart_apiserver(self) -> None:
        self.stop_apiserver()
        self.start_apiserver()

    @contextmanager
    def apiserver_down(self) -> Iterator[None]:
        """The API server is stopped inside the block (etcd keeps running) and ready after it."""
        self.stop_apiserver()
        try:
            yield
        finally:
            self.start_apiserver()

    def stop(self) -> None:
        try:
            self.stop_apiserver()
        finally:
            self.etcd.stop()

    def _ready(self) -> bool:
        self.etcd.check_alive()
        self.apiserver.check_alive()
        try:
            return self.admin().get("/readyz", timeout=5).status_code == 200
        except httpx2.TransportError:
            return False


@contextmanager
def running_kube(workdir: Path) -> Iterator[KubeServer]:
    """etcd + kube-apiserver until the block ends; both stop even if starting fails, and a
    failed start raises with the tail of their logs."""
    if reason := missing_binaries():
        raise AssertionError(reason)
    binaries = binaries_dir()
    pki = Pki.create(workdir / "pki")
    etcd, etcd_port = etcd_process(binaries / "etcd", workdir)
    port = free_port()
    server = KubeServer(
        workdir=workdir,
        pki=pki,
        port=port,
        etcd=etcd,
        apiserver=apiserver_process(binaries / "kube-apiserver", workdir, pki, port, etcd_port),
    )
    try:
        try:
            server.start()
        except AssertionError as exc:
            logs = f"--- etcd:\n{etcd.tail()}\n--- kube-apiserver:\n{server.apiserver.tail()}"
            raise AssertionError(f"{exc}\n{logs}") from None
        (workdir / "port").write_text(str(port))  # for tests.support.kube_serve's users
        yield server
    finally:
        server.stop()


@contextmanager
def session_kube(workdir: Path) -> Iterator[KubeServer]:
    """The API server of a test session: the running one $TOKEND_TEST_KUBE names (left
    running), else a new one in `workdir` until the block ends."""
    shared = os.environ.get(SHARED)
    if not shared:
        with running_kube(workdir) as server:
            yield server
        return
    server = _attach(Path(shared))
    try:
        yield server
    finally:
        if server._admin is not None:
            server._admin.close()


def _attach(workdir: Path) -> KubeServer:
    port = workdir / "port"
    if not port.is_file():
        raise AssertionError(f"${SHARED}: no API server runs from {workdir} (no {port})")
    server = KubeServer(
        workdir=workdir,
        pki=Pki.load(workdir / "pki"),
        port=int(port.read_text()),
        etcd=Process("etcd", [], workdir / "etcd.log"),
        apiserver=Process("kube-apiserver", [], workdir / "kube-apiserver.log"),
        owned=False,
    )
    wait_for(server._ready, timeout=10, what=f"the shared kube-apiserver at {server.url}")
    return server
