"""The processes behind the tests' Kubernetes API server (tests/support/kube.py): where
`scripts/kube-apiserver` caches the binaries, the certificates and keys both servers use, and
the command lines of etcd and kube-apiserver, each run as a `Process` with its output in a log.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.pki import CertificateAuthority, CertPair, rsa_key_pair
from tests.support.servers import free_port

KUBE_VERSION = "1.20.2"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc"


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


@dataclass
class Pki:
    ca: Path
    server: CertPair
    admin: CertPair
    service_accounts: CertPair

    @classmethod
    def create(cls, directory: Path) -> Pki:
        directory.mkdir(parents=True, exist_ok=True)
        authority = CertificateAuthority(directory, "tokend test Kubernetes CA")
        return cls(
            ca=authority.cert,
            server=authority.issue("apiserver", "kube-apiserver", server_ips=("127.0.0.1",)),
            admin=authority.issue("admin", "tokend-test-admin", organization="system:masters"),
            service_accounts=rsa_key_pair(directory, "service-accounts"),
        )

    @classmethod
    def load(cls, directory: Path) -> Pki:
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
class Process:
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


def etcd_process(binary: Path, workdir: Path) -> tuple[Process, int]:
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
    return Process("etcd", args, workdir / "etcd.log"), client


def apiserver_process(binary: Path, workdir: Path, pki: Pki, port: int, etcd_port: int) -> Process:
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
    return Process("kube-apiserver", args, workdir / "kube-apiserver.log")
