"""`on_publish`: consumers that keep the token in memory hear of every new one. A real consumer
process that reloads on SIGHUP; a command that hangs (killed at its timeout, refreshes go on);
what a command's environment holds and does not. Tokens live 3 s, so the daemon's own schedule
(not a test sleep) publishes a new one every 1.5 s."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import entra_identity, write_config
from tests.support.idp import CLIENT_SECRET, FakeIdp, running_idp
from tests.support.processes import start_tokend, wait_for
from tests.support.servers import free_port

CONSUMER = """
import os, signal, sys, time
token_file, seen = sys.argv[1], sys.argv[2]
def reload(signum, frame):
    with open(seen, "a") as out:
        out.write(open(token_file).read() + "\\n")
signal.signal(signal.SIGHUP, reload)
open(sys.argv[3], "w").write(str(os.getpid()))
while True:
    time.sleep(3600)
"""


@pytest.fixture(scope="module")
def short_idp() -> Iterator[FakeIdp]:
    with running_idp(lifetime=timedelta(seconds=3)) as idp:
        yield idp


def _config(idp: FakeIdp, tmp_path: Path, on_publish: dict[str, Any], **extra: Any) -> Path:
    return write_config(
        tmp_path / "config.yaml",
        {
            "identities": {"app": entra_identity(idp, {"env": "APP_SECRET"})},
            "tokens": {
                "crm": {
                    "identity": "app",
                    "resource": "https://crm.example",
                    "sinks": [
                        {
                            "type": "file",
                            "path": str(tmp_path / "crm.token"),
                            "on_publish": on_publish,
                        }
                    ],
                }
            },
            "defaults": {"startup_spread": 0},
            **extra,
        },
    )


def _counter(text: str, name: str, **labels: str) -> float:
    """The value of counter `name` (without `_total`) with `labels`, from /metrics."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{name}_total" and labels.items() <= sample.labels.items():
                return sample.value
    raise AssertionError(f"no {name} with {labels}")


def _processes_with(marker: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(entry.name)
            except OSError:
                continue  # gone meanwhile
    return found


def test_a_consumer_that_reloads_on_sighup_sees_every_new_token(
    short_idp: FakeIdp, tmp_path: Path
) -> None:
    pid_file, seen = tmp_path / "consumer.pid", tmp_path / "seen.txt"
    consumer = subprocess.Popen(
        [sys.executable, "-c", CONSUMER, str(tmp_path / "crm.token"), str(seen), str(pid_file)]
    )
    port = free_port()
    config = _config(
        short_idp,
        tmp_path,
        {"signal": {"pid_file": str(pid_file), "name": "HUP"}},
        listen=f"127.0.0.1:{port}",
    )
    try:
        wait_for(pid_file.exists, what="the consumer's pid file")
        process = start_tokend("run", "-c", str(config), env={"APP_SECRET": CLIENT_SECRET})
        try:
            wait_for(lambda: seen.exists() and len(seen.read_text().split()) >= 4, what="4 tokens")
            metrics = httpx2.get(f"http://127.0.0.1:{port}/metrics").text
            notified = _counter(metrics, "tokend_notifier_runs", token="crm", result="success")
            written = _counter(metrics, "tokend_sink_publish", token="crm", result="success")
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(20) == 0
    finally:
        consumer.kill()
        consumer.wait()
    values = seen.read_text().split()
    assert len(values) == len(set(values))  # every signal brought a new token...
    assert (
        len(values) >= notified - 1 >= 3
    )  # ...and (but a last one in flight) every publish a signal
    assert written >= notified
    assert values[-1] == (tmp_path / "crm.token").read_text() or len(values) == notified - 1


def test_a_hanging_command_is_killed_at_its_timeout_and_refreshes_go_on(
    short_idp: FakeIdp, tmp_path: Path
) -> None:
    marker = f"tokend-test-hang-{tmp_path.name}"
    log = tmp_path / "tokend.log"
    config = _config(
        short_idp,
        tmp_path,
        {"command": [sys.executable, "-c", "import time; time.sleep(30)", marker], "timeout": "1s"},
        listen=None,
    )
    process = start_tokend("run", "-c", str(config), env={"APP_SECRET": CLIENT_SECRET}, log=log)
    try:
        wait_for(lambda: log.read_text().count("killed after 1s (timeout)") >= 2, what="2 kills")
        wait_for(lambda: log.read_text().count("refreshed:") >= 4, what="refreshes going on")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    assert _processes_with(marker) == []  # every hanging command was killed


@pytest.mark.parametrize("with_token", [False, True])
def test_a_command_gets_its_own_small_environment(
    short_idp: FakeIdp, tmp_path: Path, with_token: bool
) -> None:
    """Never tokend's environment (it holds {env:} secrets); the token only with env: true."""
    dumped = tmp_path / "env.txt"
    on_publish = {"command": ["/bin/sh", "-c", f"env > {dumped}"], "env": with_token}
    config = _config(short_idp, tmp_path, on_publish, listen=None)
    process = start_tokend("run", "-c", str(config), env={"APP_SECRET": CLIENT_SECRET})
    try:
        wait_for(lambda: dumped.exists() and "TOKEND_EXPIRES_ON" in dumped.read_text(), what="env")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    env = dict(line.split("=", 1) for line in dumped.read_text().splitlines() if "=" in line)
    assert env["TOKEND_TOKEN"] == "crm" and env["TOKEND_SINK"] == "file"
    assert int(env["TOKEND_EXPIRES_ON"]) > 0
    if with_token:
        claims = jwt.decode(env["TOKEND_ACCESS_TOKEN"], options={"verify_signature": False})
        assert claims["aud"] == "https://crm.example"
        assert env["TOKEND_TOKEN_TYPE"] == "Bearer"
    else:
        assert "TOKEND_ACCESS_TOKEN" not in env and "TOKEND_TOKEN_TYPE" not in env
    assert CLIENT_SECRET not in dumped.read_text() and "APP_SECRET" not in env
