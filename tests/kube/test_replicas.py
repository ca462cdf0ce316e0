"""`tokend run` processes against a real API server, as tokend's service account bound to exactly
the shipped Role: leader election between replicas (exactly one writes; `kill -9` of the leader
and another takes over; a leader cut off from the API server stops leading at its renew
deadline, before anyone could take the Lease; nothing is lost when the API server comes back),
and a rotated service-account token file is picked up. Canary: neither the service-account
token nor the Secret's token ever appears in a log.

Short lease settings (3 s / 2 s / 0.5 s) and 4-second tokens keep it quick.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.conftest import entra_identity, write_config
from tests.kube.conftest import Account
from tests.support.idp import CLIENT_SECRET, FakeIdp, running_idp
from tests.support.kube import KubeServer, require_kube
from tests.support.processes import start_tokend, wait_for
from tests.support.servers import free_port

require_kube()

SECRET = "crm-token"
LEASE = {"name": "tokend", "lease_duration": "3s", "renew_deadline": "2s", "retry_period": "500ms"}
LEASE_DURATION, RENEW_DEADLINE, RETRY = 3.0, 2.0, 0.5


@pytest.fixture(scope="module")
def short_idp() -> Iterator[FakeIdp]:
    with running_idp(lifetime=timedelta(seconds=4)) as idp:
        yield idp


@dataclass
class Replica:
    name: str
    process: subprocess.Popen[str]
    port: int
    log: Path
    token_file: Path

    def metrics(self) -> dict[str, float]:
        try:
            text = httpx2.get(f"http://127.0.0.1:{self.port}/metrics", timeout=2).text
        except httpx2.TransportError:
            return {}
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                values[key] = float(value)
        return values

    def leading(self) -> bool:
        return self.metrics().get("tokend_leader") == 1.0

    def secret_publishes(self) -> float:
        key = 'tokend_sink_publish_total{result="success",sink="kubernetes",token="crm"}'
        return self.metrics().get(key, 0.0)

    def ready(self) -> bool:
        try:
            return httpx2.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200
        except httpx2.TransportError:
            return False

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def replica_config(
    tmp_path: Path,
    idp: FakeIdp,
    name: str,
    port: int,
    kubernetes: dict[str, Any],
    *,
    lease: bool = True,
) -> Path:
    (tmp_path / "client-secret").write_text(CLIENT_SECRET)
    identity = entra_identity(idp, {"file": str(tmp_path / "client-secret")})
    document: dict[str, Any] = {
        "identities": {"app": identity},
        "tokens": {
            "crm": {
                "identity": "app",
                "resource": "https://crm.example",
                "sinks": [{"type": "kubernetes", "secret": SECRET}],
            },
            "local": {  # pod-local: every replica writes it
                "identity": "app",
                "resource": "https://local.example",
                "sinks": [{"type": "file", "path": str(tmp_path / f"{name}.token")}],
            },
        },
        "defaults": {"jitter": 0, "startup_spread": 0, "backoff": {"min": "100ms", "max": "1s"}},
        "listen": f"127.0.0.1:{port}",
        "kubernetes": kubernetes,
    }
    if lease:
        document["leader_election"] = LEASE
    return write_config(tmp_path / f"{name}.yaml", document)


def start_replica(
    tmp_path: Path,
    idp: FakeIdp,
    name: str,
    kubernetes: dict[str, Any],
    env: dict[str, str] | None = None,
    *,
    lease: bool = True,
) -> Replica:
    port = free_port()
    config = replica_config(tmp_path, idp, name, port, kubernetes, lease=lease)
    log = tmp_path / f"{name}.log"
    process = start_tokend("run", "-c", str(config), env={"POD_NAME": name, **(env or {})}, log=log)
    return Replica(name, process, port, log, tmp_path / f"{name}.token")


def kubeconfig_for(kube: KubeServer, account: Account, tmp_path: Path) -> dict[str, Any]:
    path = kube.write_kubeconfig(
        tmp_path / "kubeconfig", token=account.token, namespace=account.namespace
    )
    return {"kubeconfig": str(path)}


def secret_state(kube: KubeServer, namespace: str) -> tuple[str, int, str] | None:
    """(writer, expires_on, access token) of the Secret, None while there is none."""
    secret = kube.get("v1", "Secret", SECRET, namespace)
    if secret is None or not secret.get("data"):
        return None
    annotations = secret["metadata"]["annotations"]
    token = base64.b64decode(secret["data"]["access_token"]).decode()
    return annotations["tokend.io/writer"], int(annotations["tokend.io/expires-on"]), token


def the_leader(replicas: list[Replica]) -> Replica | None:
    leaders = [replica for replica in replicas if replica.leading()]
    assert len(leaders) <= 1, f"several leaders: {[r.name for r in leaders]}"
    return leaders[0] if leaders else None


def assert_no_secrets_in_logs(replicas: list[Replica], *secrets: str) -> None:
    for replica in replicas:
        text = replica.stderr()
        assert "Traceback" not in text, text
        for secret in secrets:
            assert secret not in text


@pytest.fixture
def replicas() -> Iterator[list[Replica]]:
    started: list[Replica] = []
    yield started
    for replica in started:
        replica.stop()


def test_one_of_three_writes_and_another_takes_over_after_kill_9(
    kube: KubeServer,
    short_idp: FakeIdp,
    tokend_account: Account,
    tmp_path: Path,
    replicas: list[Replica],
) -> None:
    ns, kubernetes = tokend_account.namespace, kubeconfig_for(kube, tokend_account, tmp_path)
    replicas += [start_replica(tmp_path, short_idp, f"r{i}", kubernetes) for i in range(3)]
    leader = wait_for(lambda: the_leader(replicas), timeout=20, what="a leader")
    first = wait_for(lambda: secret_state(kube, ns), what="the Secret")
    assert first[0] == leader.name
    later = wait_for(
        lambda: (s := secret_state(kube, ns)) and s[1] > first[1] and s, what="a refresh"
    )
    assert later[0] == leader.name
    followers = [replica for replica in replicas if replica is not leader]
    for follower in followers:
        assert follower.metrics()["tokend_leader"] == 0.0
        assert follower.secret_publishes() == 0.0  # and its token is not reported as invalid:
        assert 'tokend_token_valid{token="crm"}' not in follower.metrics()
        assert follower.ready()  # followers stay ready
        assert follower.token_file.exists()  # pod-local tokens run on every replica
    assert leader.secret_publishes() >= 2

    leader.process.kill()  # SIGKILL: no release of the Lease
    killed = time.monotonic()
    leader.process.wait(5)
    successor = wait_for(lambda: the_leader(followers), timeout=10, what="a successor")
    took = time.monotonic() - killed
    # Takeover once the Lease has not been renewed for lease_duration, as the follower observed
    # it (at most one retry period after the renewal), at its next try.
    assert took < LEASE_DURATION + 3 * RETRY, took
    wait_for(lambda: (s := secret_state(kube, ns)) and s[0] == successor.name, what="a new writer")
    assert the_leader(followers) is successor
    other = next(f for f in followers if f is not successor)
    assert other.secret_publishes() == 0.0
    token = secret_state(kube, ns)
    assert token is not None
    assert_no_secrets_in_logs(replicas, tokend_account.token, token[2], first[2])


def test_a_cut_off_leader_stops_at_its_renew_deadline_and_nothing_is_lost(
    kube: KubeServer,
    short_idp: FakeIdp,
    tokend_account: Account,
    tmp_path: Path,
    replicas: list[Replica],
) -> None:
    ns, kubernetes = tokend_account.namespace, kubeconfig_for(kube, tokend_account, tmp_path)
    replicas += [start_replica(tmp_path, short_idp, f"p{i}", kubernetes) for i in range(2)]
    leader = wait_for(lambda: the_leader(replicas), timeout=20, what="a leader")
    before = wait_for(lambda: secret_state(kube, ns), what="the Secret")
    with kube.apiserver_down():
        down = time.monotonic()  # the last renewal was sent before this
        wait_for(lambda: not leader.leading(), timeout=10, what="the leader to stop")
        stopped = time.monotonic() - down
        assert stopped <= RENEW_DEADLINE + RETRY, stopped
        assert stopped < LEASE_DURATION  # before the Lease could have been taken
        assert the_leader(replicas) is None
        assert all(replica.ready() for replica in replicas)
    wait_for(lambda: the_leader(replicas), timeout=20, what="a leader after the outage")
    after = wait_for(
        lambda: (s := secret_state(kube, ns)) and s[1] > before[1] and s,
        timeout=20,
        what="a newer token",
    )
    assert "not renewed for 2s: stopped leading" in leader.stderr()
    assert all(replica.process.poll() is None for replica in replicas)
    assert_no_secrets_in_logs(replicas, tokend_account.token, before[2], after[2])


def test_a_rotated_service_account_token_file_is_picked_up(
    kube: KubeServer,
    short_idp: FakeIdp,
    tokend_account: Account,
    tmp_path: Path,
    replicas: list[Replica],
) -> None:
    """In-cluster: token, CA and namespace from the service-account directory; the token in it
    is not (yet) valid at start, as after a revocation, and is then replaced by the kubelet."""
    ns = tokend_account.namespace
    directory = kube.write_service_account_dir(tmp_path / "sa", ns, "not-a-valid-token")
    kubernetes = {"service_account_dir": str(directory)}
    replica = start_replica(
        tmp_path, short_idp, "solo", kubernetes, kube.in_cluster_env(), lease=False
    )
    replicas.append(replica)
    wait_for(lambda: "HTTP 401" in replica.stderr(), what="a refusal of the invalid token")
    assert secret_state(kube, ns) is None
    kube.write_service_account_dir(directory, ns, tokend_account.token)
    state = wait_for(lambda: secret_state(kube, ns), what="the Secret, with the new token")
    assert state[0] == "solo"
    recovered = re.compile(r"sink kubernetes: recovered after \d+ failed attempts")
    wait_for(lambda: recovered.search(replica.stderr()), what="the recovery logged")
    assert_no_secrets_in_logs(replicas, tokend_account.token, state[2])
    assert os.environ.get("KUBERNETES_SERVICE_HOST") is None  # only the child had it
