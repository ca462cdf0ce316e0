"""Issue #4's "done when": a consumer with a read-only Vault policy reads a valid token from Vault
throughout a run of the real `tokend run` process in which Vault itself goes away and comes back.

Vault here keeps its data on disk (raft storage): stopped and started again it comes back sealed,
as a production Vault does, and is unsealed by the test as an operator (or auto-unseal) would.
tokend logs in with AppRole and a 3-second token TTL, so it must renew, and after the outage, with
its token long expired, log in again. Tokens from the identity provider live 12 s, so one refresh
falls inside the outage: the file sink gets it at once, Vault as soon as it is back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.conftest import write_config
from tests.support.idp import CLIENT_ID, CLIENT_SECRET, TENANT, FakeIdp, running_idp
from tests.support.openbao import PersistentServer, persistent_server
from tests.support.processes import TOKEND, wait_for
from tests.support.servers import free_port

PATH = "apps/crm/token"


@pytest.fixture
def short_lived_idp() -> Iterator[FakeIdp]:
    with running_idp(lifetime=timedelta(seconds=12)) as idp:
        yield idp


@dataclass
class Read:
    at: float  # epoch seconds
    value: str | None  # None: Vault could not be read (down or sealed)
    expires_on: int | None = None


class Consumer(threading.Thread):
    """A program that reads the token from Vault with its own read-only token, again and again."""

    def __init__(self, bao: PersistentServer, token: str) -> None:
        super().__init__(daemon=True)
        self.bao, self.token = bao, token
        self.reads: list[Read] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.reads.append(self._read())
            self.done.wait(0.05)  # a reader's polling cadence

    def _read(self) -> Read:
        try:
            body = self.bao.client(self.token).secrets.kv.v2.read_secret_version(
                path=PATH, raise_on_deleted_version=True
            )
        except Exception:
            return Read(time.time(), None)
        data = body["data"]["data"]
        return Read(time.time(), data["access_token"], data["expires_on"])

    def latest(self) -> Read | None:
        return self.reads[-1] if self.reads else None


def set_up_vault(bao: PersistentServer, tmp_path: Path) -> tuple[dict[str, Any], str, list[str]]:
    """KV v2, tokend's AppRole with the README's writer policy, a consumer's read-only token."""
    root = bao.client()
    root.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
    root.sys.enable_auth_method("approle")
    root.sys.create_or_update_policy(
        "tokend",
        f'path "secret/data/{PATH}" {{ capabilities = ["create", "read", "update"] }}\n'
        f'path "secret/metadata/{PATH}" {{ capabilities = ["create", "update"] }}\n',
    )
    root.sys.create_or_update_policy(
        "crm-reader", f'path "secret/data/{PATH}" {{ capabilities = ["read"] }}\n'
    )
    root.auth.approle.create_or_update_approle(
        "tokend", token_policies=["tokend"], token_ttl="3s", token_max_ttl="1h"
    )
    role_id = root.auth.approle.read_role_id("tokend")["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id("tokend")["data"]["secret_id"]
    (tmp_path / "role_id").write_text(role_id)
    (tmp_path / "secret_id").write_text(secret_id)
    consumer = root.auth.token.create(policies=["crm-reader"], ttl="1h")["auth"]["client_token"]
    auth = {
        "method": "approle",
        "role_id": {"file": str(tmp_path / "role_id")},
        "secret_id": {"file": str(tmp_path / "secret_id")},
    }
    return auth, consumer, [role_id, secret_id, consumer, bao.root_token]


def test_a_read_only_consumer_reads_a_valid_token_while_vault_goes_and_comes_back(
    short_lived_idp: FakeIdp, tmp_path: Path
) -> None:
    idp = short_lived_idp
    with persistent_server(tmp_path / "bao") as bao:
        auth, consumer_token, secrets = set_up_vault(bao, tmp_path)
        port = free_port()
        config = write_config(
            tmp_path / "config.yaml",
            {
                "identities": {
                    "crm-app": {
                        "tenant": TENANT,
                        "authority_host": idp.url,
                        "allow_insecure_http": True,
                        "client_id": CLIENT_ID,
                        "credential": {"type": "client_secret", "secret": {"env": "CRM_SECRET"}},
                    }
                },
                "tokens": {
                    "crm": {
                        "identity": "crm-app",
                        "resource": "https://crm.example",
                        "sinks": [
                            {"type": "file", "path": str(tmp_path / "crm.token")},
                            {"type": "vault", "path": PATH},
                        ],
                    }
                },
                "defaults": {"startup_spread": 0, "backoff": {"min": "200ms", "max": "1s"}},
                "vault": {"address": bao.url, "allow_insecure_http": True, "auth": auth},
                "listen": f"127.0.0.1:{port}",
            },
        )
        log = tmp_path / "tokend.log"
        with log.open("w") as stderr:
            process = subprocess.Popen(
                [TOKEND, "run", "-c", str(config)],
                env={"CRM_SECRET": CLIENT_SECRET, "PATH": os.environ.get("PATH", "")},
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        consumer = Consumer(bao, consumer_token)
        token_file = tmp_path / "crm.token"
        try:
            consumer.start()
            wait_for(lambda: (r := consumer.latest()) and r.value, what="a token in Vault")

            bao.stop()
            before_outage = token_file.read_text()
            wait_for(lambda: token_file.read_text() != before_outage, what="a refresh")
            assert "cannot connect to Vault" in log.read_text()

            bao.start()  # sealed
            wait_for(lambda: "Vault is sealed (unseal it)" in log.read_text(), what="sealed")
            bao.unseal()
            wait_for(
                lambda: (r := consumer.latest()) and r.value == token_file.read_text(),
                what="Vault catching up with the newest token",
            )
            served = [
                httpx2.get(f"http://127.0.0.1:{port}{p}").text for p in ("/status", "/metrics")
            ]
        finally:
            consumer.done.set()
            consumer.join(5)
            process.send_signal(signal.SIGTERM)
            status = process.wait(15)

    assert status == 0
    vault = json.loads(served[0])["vault"]  # the daemon shows Vault's health
    assert vault["up"] is True and vault["logins"]["success"] >= 1
    assert f'tokend_vault_up{{address="{bao.url}"}} 1.0' in served[1]
    reads = consumer.reads
    good = [read for read in reads if read.value is not None]
    assert all(read.expires_on is not None and read.expires_on > read.at for read in good)
    first = next(index for index, read in enumerate(reads) if read.value)
    outage = [index for index, read in enumerate(reads) if index > first and read.value is None]
    assert outage, "the consumer never saw Vault away"
    assert any(read.value for read in reads[outage[-1] :]), "no read after the outage"
    logged = log.read_text()
    assert "vault: logged in" in logged
    tokens = {read.value for read in good if read.value}
    for secret in [*secrets, *tokens, CLIENT_SECRET]:
        assert secret not in logged
        for page in served:
            assert secret not in page
