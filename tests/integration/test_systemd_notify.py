"""`tokend run` under a service manager: a Unix datagram socket stands in for systemd's
`$NOTIFY_SOCKET`, as systemd would listen, and receives what tokend says: READY only once the
token is published, STATUS lines, RELOADING (with MONOTONIC_USEC) and READY around SIGHUP,
STOPPING on SIGTERM, and WATCHDOG pings from the event loop."""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import entra_identity, write_config
from tests.support import idp as faults
from tests.support.idp import CLIENT_SECRET, FakeIdp
from tests.support.processes import start_tokend, wait_for


class FakeSystemd:
    """Collects sd_notify datagrams, one message (a list of `KEY=value` fields) each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.setblocking(False)
        self.messages: list[list[str]] = []

    def received(self) -> list[list[str]]:
        while True:
            try:
                self.messages.append(self._socket.recv(4096).decode().split("\n"))
            except BlockingIOError:
                return self.messages

    def first(self, field: str, after: int = 0) -> int | None:
        """Index of the first message from `after` on that has `field` (e.g. `READY=1`)."""
        messages = self.received()
        return next((i for i in range(after, len(messages)) if field in messages[i]), None)

    def close(self) -> None:
        self._socket.close()


def _config(idp: FakeIdp, tmp_path: Path, **extra: str) -> Path:
    """Token `crm` into `tmp_path/crm.token`; no listener."""
    return write_config(
        tmp_path / "config.yaml",
        {
            "identities": {"app": entra_identity(idp, CLIENT_SECRET)},
            "tokens": {
                "crm": {
                    "identity": "app",
                    "resource": "https://crm.example",
                    "sinks": [{"type": "file", "path": str(tmp_path / "crm.token")}],
                }
            },
            "defaults": {"startup_spread": 0},
            "listen": None,
            **extra,
        },
    )


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(tmp_path / "notify.sock")
    yield fake
    fake.close()


def test_ready_status_reloading_stopping_and_watchdog(
    idp: FakeIdp, tmp_path: Path, systemd: FakeSystemd
) -> None:
    token = tmp_path / "crm.token"
    config = _config(idp, tmp_path)
    idp.fail(faults.html(502))  # the first attempt fails: no READY before the token is published
    env = {"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "200000"}
    process = start_tokend("run", "-c", str(config), env=env, log=tmp_path / "tokend.log")
    try:
        ready = wait_for(lambda: systemd.first("READY=1"), what="READY=1")
        assert token.exists()  # published before READY, not after
        starting = systemd.messages[:ready]
        assert any(
            field.startswith("STATUS=starting: 0/1 tokens valid") for m in starting for field in m
        )
        assert "STATUS=1/1 tokens valid, next refresh in" in systemd.messages[ready][1]
        wait_for(lambda: systemd.first("WATCHDOG=1", after=ready), what="a watchdog ping")

        process.send_signal(signal.SIGHUP)
        reloading = wait_for(lambda: systemd.first("RELOADING=1", after=ready), what="RELOADING=1")
        assert any(field.startswith("MONOTONIC_USEC=") for field in systemd.messages[reloading])
        wait_for(lambda: systemd.first("READY=1", after=reloading), what="READY=1 after reload")

        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
        stopping = systemd.first("STOPPING=1", after=reloading)
        assert stopping is not None
        assert systemd.first("WATCHDOG=1", after=stopping + 1) is None  # no ping after STOPPING
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_without_systemd_nothing_is_sent(
    idp: FakeIdp, tmp_path: Path, systemd: FakeSystemd
) -> None:
    """Not under systemd (no $NOTIFY_SOCKET): tokend runs as usual and sends nothing."""
    token = tmp_path / "crm.token"
    config = write_config(
        tmp_path / "config.yaml",
        {
            "identities": {"app": entra_identity(idp, CLIENT_SECRET)},
            "tokens": {
                "crm": {
                    "identity": "app",
                    "resource": "https://crm.example",
                    "sinks": [{"type": "file", "path": str(token)}],
                }
            },
            "listen": None,
        },
    )
    process = start_tokend("run", "-c", str(config), env={"NOTIFY_SOCKET": ""})
    try:
        wait_for(token.exists, what="the token file")
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert systemd.received() == []


def test_systemd_ready_started_is_ready_before_any_token(
    idp: FakeIdp, tmp_path: Path, systemd: FakeSystemd
) -> None:
    """`systemd_ready: started`: READY as soon as tokend runs, though the identity provider
    has not answered once (units ordered after tokend need not wait for the first token)."""
    token = tmp_path / "crm.token"
    config = _config(idp, tmp_path, systemd_ready="started")
    idp.policy = lambda request: faults.html(502)  # never a token
    env = {"NOTIFY_SOCKET": str(systemd.path)}
    process = start_tokend("run", "-c", str(config), env=env, log=tmp_path / "tokend.log")
    try:
        wait_for(lambda: systemd.first("READY=1") is not None, what="READY=1")
        assert not token.exists()
        assert systemd.messages[0][0] == "READY=1"  # the first thing said, no "starting:" before
        assert systemd.messages[0][1].startswith("STATUS=0/1 tokens valid")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
