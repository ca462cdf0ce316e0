"""A real Kubernetes API server for tests: etcd + kube-apiserver v1.20.2 on 127.0.0.1.

The binaries are built once per machine by `scripts/kube-apiserver` (from Debian's `kubernetes`
source package; `scripts/setup --test` runs it) and cached outside the checkout. `running_kube()`
starts both on free ports in a temp dir with a CA, a server certificate for 127.0.0.1, an admin
client certificate (group `system:masters`) and a service-account signing key; RBAC is on, and
service-account tokens come from the TokenRequest API, as in a current cluster. The REST helpers
(namespaces, service accounts, apply, tokens, kubeconfigs) are on `KubeServer`, in `kube_api`.

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
import signal
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import pytest

from tests.support.kube_api import KubeApi
from tests.support.pki import CertificateAuthority, CertPair, rsa_key_pair
from tests.support.processes import wait_for
from tests.support.servers import free_port

KUBE_VERSION = "1.20.2"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc"
_READY_TIMEOUT = 90  # 5-9 s on an idle 2-core machine; much more while the suite runs beside it
SHARED = "TOKEND_TEST_KUBE"
"""The work directory of a running server (`tests.support.kube_serve`) the tests use instead of
starting their own."""


def binaries_dir() -> Path:
    """Where `scripts/kube-apiserver` caches kube-apiserver and etcd (same rule as the script)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "tokend" / f"kube-apiserver-{KUBE_VERSION}"


def missing_binaries() -> str | None:
    """None when both binaries are built, else one line saying how to get them."""
    if (binaries_dir() / "complete").is_file():
        return None
    return (
        f"no kube-apiserver {KUBE_VERSION} in {binaries_dir()}: run scripts/kube-apiserver "
        "(as root, or with golang-go, rsync and make installed; about 5 minutes, cached)"
    )


def require_kube() -> None:
    """Call at the top of a test module that needs the API server: without the binaries the
    module is skipped with one line, except under CI=true, where it fails."""
    if reason := missing_binaries():
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason, allow_module_level=True)


@dataclass
class _Pki:
    ca: Path
    server: CertPair
    admin: CertPair
    service_accounts: CertPair

    @classmethod
    def create(cls, directory: Path) -> _Pki:
        directory.mkdir(parents=True, exist_ok=True)
        authority = CertificateAuthority(directory, "tokend test Kubernetes CA")
        return cls(
            ca=authority.cert,
            server=authority.issue("apiserver", "kube-apiserver", server_ips=("127.0.0.1",)),
            admin=authority.issue("admin", "tokend-test-admin", organization="system:masters"),
            service_accounts=rsa_key_pair(directory, "service-accounts"),
        )

    @classmethod
    def load(cls, directory: Path) -> _Pki:
        """The files `create` wrote there (for a server another process started)."""

        def pair(stem: str, public: str = ".pem") -> CertPair:
            return CertPair(cert=directory / f"{stem}{public}", key=directory / f"{stem}-key.pem")

        return cls(
            ca=directory / "ca.pem",
            server=pair("apiserver"),
            admin=pair("admin"),
            service_accounts=pair("service-accounts", ".pub"),
        )


@dataclass
class _Process:
    """One server process, its output appended to `log`."""

    name: str
    args: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.popen is None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(15)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)
        self.popen = None

    def check_alive(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 25) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class KubeServer(KubeApi):
    """etcd + kube-apiserver. The API server can be stopped and started on its own (same port,
    same keys, same etcd): for "API server restarts mid-run" and partition tests."""

    workdir: Path
    pki: _Pki
    port: int
    etcd: _Process
    apiserver: _Process
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


def _etcd(binary: Path, workdir: Path) -> tuple[_Process, int]:
    client, peer = free_port(), free_port()
    args = [
        str(binary),
        "--name=t",
        f"--data-dir={workdir / 'etcd'}",
        f"--listen-client-urls=http://127.0.0.1:{client}",
        f"--advertise-client-urls=http://127.0.0.1:{client}",
        f"--listen-peer-urls=http://127.0.0.1:{peer}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
        f"--initial-cluster=t=http://127.0.0.1:{peer}",
    ]
    return _Process("etcd", args, workdir / "etcd.log"), client


def _apiserver(binary: Path, workdir: Path, pki: _Pki, port: int, etcd_port: int) -> _Process:
    args = [
        str(binary),
        f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={port}",
        "--insecure-port=0",
        f"--cert-dir={workdir / 'apiserver-certs'}",
        f"--tls-cert-file={pki.server.cert}",
        f"--tls-private-key-file={pki.server.key}",
        f"--client-ca-file={pki.ca}",
        "--authorization-mode=RBAC",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-signing-key-file={pki.service_accounts.key}",
        f"--service-account-key-file={pki.service_accounts.cert}",
        f"--api-audiences={SERVICE_ACCOUNT_ISSUER}",
        "--service-cluster-ip-range=10.96.0.0/24",
        "--endpoint-reconciler-type=none",
    ]
    return _Process("kube-apiserver", args, workdir / "kube-apiserver.log")


@contextmanager
def running_kube(workdir: Path) -> Iterator[KubeServer]:
    """etcd + kube-apiserver until the block ends; both stop even if starting fails, and a
    failed start raises with the tail of their logs."""
    if reason := missing_binaries():
        raise AssertionError(reason)
    binaries = binaries_dir()
    pki = _Pki.create(workdir / "pki")
    etcd, etcd_port = _etcd(binaries / "etcd", workdir)
    port = free_port()
    server = KubeServer(
        workdir=workdir,
        pki=pki,
        port=port,
        etcd=etcd,
        apiserver=_apiserver(binaries / "kube-apiserver", workdir, pki, port, etcd_port),
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
        pki=_Pki.load(workdir / "pki"),
        port=int(port.read_text()),
        etcd=_Process("etcd", [], workdir / "etcd.log"),
        apiserver=_Process("kube-apiserver", [], workdir / "kube-apiserver.log"),
        owned=False,
    )
    wait_for(server._ready, timeout=10, what=f"the shared kube-apiserver at {server.url}")
    return server
