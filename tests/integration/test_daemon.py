"""`tokend run` as a real process: refreshes short-lived tokens, serves health and metrics,
stops cleanly on SIGTERM and SIGINT.

The identity provider here issues 3-second tokens, so the daemon's own timing (not a test sleep)
produces several refreshes in a few seconds.
"""

from __future__ import annotations

import re
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx2
import jwt
import pytest

from tests.conftest import entra_identity, write_config
from tests.support.idp import CLIENT_SECRET, FakeIdp, running_idp
from tests.support.processes import TOKEND, start_tokend, tokend, wait_for
from tests.support.servers import free_port, serve
from tokend.daemon import OPEN_FILES, _allow_many_open_files
from tokend.devidp import DevIdentityProvider


@pytest.fixture(scope="module")
def short_idp() -> Iterator[FakeIdp]:
    with running_idp(lifetime=timedelta(seconds=3)) as idp:
        yield idp


def _config(idp: FakeIdp, tmp_path: Path, port: int) -> Path:
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
            "defaults": {"jitter": 0, "startup_spread": 0},
            "listen": f"127.0.0.1:{port}",
        },
    )


def _metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric line starting {line_start!r}")


def test_run_refreshes_publishes_and_stops_cleanly(short_idp: FakeIdp, tmp_path: Path) -> None:
    port = free_port()
    process = start_tokend("run", "-c", str(_config(short_idp, tmp_path, port)))
    token_file = tmp_path / "crm.token"
    seen: list[str] = []

    def three_tokens_published() -> bool:
        if token_file.exists():
            value = token_file.read_text()
            if not seen or seen[-1] != value:
                seen.append(value)
        return len(seen) >= 3

    try:
        wait_for(three_tokens_published, what="two refreshes after the first token")
        base = f"http://127.0.0.1:{port}"
        metrics = httpx2.get(f"{base}/metrics").text
        assert _metric(metrics, 'tokend_token_refresh_total{result="success",token="crm"}') >= 3
        assert _metric(metrics, 'tokend_token_valid{token="crm"}') == 1.0
        assert (
            _metric(metrics, 'tokend_sink_publish_total{result="success",sink="file",token="crm"}')
            >= 3
        )
        assert _metric(metrics, "tokend_token_refresh_duration_seconds_count") >= 3
        assert "# HELP tokend_token_expiry_timestamp_seconds" in metrics
        assert httpx2.get(f"{base}/healthz").status_code == 200
        assert httpx2.get(f"{base}/readyz").status_code == 200
        status = httpx2.get(f"{base}/status").json()
        assert status["tokens"]["crm"]["state"] in ("fresh", "refreshing")
        assert status["tokens"]["crm"]["sinks"]["file"]["last_error"] is None
    finally:
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(15)
        stderr = process.stderr.read() if process.stderr else ""
    assert returncode == 0, stderr
    assert "received SIGTERM" in stderr and stderr.rstrip().endswith("INFO stopped")
    assert "Traceback" not in stderr
    key = jwt.PyJWK(short_idp.provider.jwks()["keys"][0])
    jwt.decode(
        token_file.read_text(),
        key,
        algorithms=["RS256"],
        options={"verify_exp": False, "verify_aud": False},
    )
    refreshed = [line for line in stderr.splitlines() if "token=crm refreshed" in line]
    assert len(refreshed) >= 3
    # 3 s tokens: the next refresh at half-life, 1.5 s after the request was sent (0 s or 1 s
    # from when the line is written, however slow the machine)
    assert all(re.search(r", next refresh in [01]s, took ", line) for line in refreshed), refreshed


def test_sigint_stops_cleanly(short_idp: FakeIdp, tmp_path: Path) -> None:
    port = free_port()
    process = start_tokend("run", "-c", str(_config(short_idp, tmp_path, port)))
    wait_for((tmp_path / "crm.token").exists, what="first token")
    process.send_signal(signal.SIGINT)
    assert process.wait(15) == 0


def test_not_ready_until_published(tmp_path: Path) -> None:
    """Readiness waits for the first publication; here the IdP never answers successfully."""
    provider = DevIdentityProvider(clients={})  # knows no client: every request is rejected
    with serve(provider.app) as url:
        provider.base_url = url
        idp = FakeIdp(provider, url=url)
        port = free_port()
        process = start_tokend("run", "-c", str(_config(idp, tmp_path, port)))
        try:
            status = wait_for(
                lambda: _status_when_failed(port), what="the first failure to show in /status"
            )
            assert status["tokens"]["crm"]["state"] == "failing"
            assert "invalid_client (AADSTS700016)" in status["tokens"]["crm"]["last_error"]
            response = httpx2.get(f"http://127.0.0.1:{port}/readyz")
            assert (response.status_code, response.text) == (503, "not ready: crm\n")
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0


def test_the_listener_answers_while_the_identity_provider_hangs(tmp_path: Path) -> None:
    """The listener serves once the first acquisitions are done or after a second, whichever
    comes first: a hanging identity provider must not keep the probes from answering (and a
    probe that connected before serving began is answered, not refused)."""
    import socket

    with socket.socket() as hanging:  # accepts connections into its backlog, never answers
        hanging.bind(("127.0.0.1", 0))
        hanging.listen()
        url = f"http://127.0.0.1:{hanging.getsockname()[1]}"
        idp = FakeIdp(DevIdentityProvider(clients={}), url=url)
        port = free_port()
        config = _config(idp, tmp_path, port)
        config.write_text(config.read_text() + "http: {timeout: 4s}\n")  # a quick stop after
        process = start_tokend("run", "-c", str(config))
        try:
            wait_for(lambda: _connects(port), what="the listener's port to be bound")
            response = httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=15)
            assert (response.status_code, response.text) == (200, "ok\n")
            status = httpx2.get(f"http://127.0.0.1:{port}/status").json()
            assert status["tokens"]["crm"]["state"] == "refreshing"  # its request still hangs
            assert not (tmp_path / "crm.token").exists()
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0


def _connects(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _status_when_failed(port: int) -> dict[str, object] | None:
    try:
        status = httpx2.get(f"http://127.0.0.1:{port}/status").json()
    except httpx2.TransportError:
        return None
    return status if status["tokens"]["crm"]["consecutive_failures"] else None


def test_busy_listen_port_is_a_clear_error(short_idp: FakeIdp, tmp_path: Path) -> None:
    """A config problem (exit 2), and one `tokend check` finds before `run` meets it."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = str(_config(short_idp, tmp_path, port))
        process = start_tokend("run", "-c", config)
        assert process.wait(15) == 2
        stderr = process.stderr.read() if process.stderr else ""
        checked = tokend("check", "-c", config)
    assert f"ERROR cannot listen on 127.0.0.1:{port}: Address already in use" in stderr
    assert "Traceback" not in stderr
    assert checked.returncode == 2
    assert checked.stderr.strip().endswith(
        f"listen: cannot listen on 127.0.0.1:{port}: Address already in use"
        " (is tokend already running with this config?)"
    )


def test_a_listen_host_that_does_not_resolve_is_a_clear_error(
    short_idp: FakeIdp, tmp_path: Path
) -> None:
    config = _config(short_idp, tmp_path, 9464)
    config.write_text(config.read_text().replace("127.0.0.1:9464", "nohost.invalid:9464"))
    ran = tokend("run", "-c", str(config), timeout=30)
    checked = tokend("check", "-c", str(config))
    assert ran.returncode == 2
    # the resolver's reason varies ("Name or service not known", or no DNS at all)
    assert re.search(r"ERROR cannot listen on nohost\.invalid:9464: \w", ran.stderr), ran.stderr
    assert "Traceback" not in ran.stderr
    assert checked.returncode == 2
    assert checked.stderr.strip().endswith("listen: cannot resolve host 'nohost.invalid'")


def test_the_open_file_limit_is_raised(short_idp: FakeIdp, tmp_path: Path) -> None:
    """systemd starts services with a soft limit of 1,024 open files, which a local endpoint's
    clients alone could use up: tokend raises it towards the hard limit at start."""
    hard = raised = 4096
    config = str(_config(short_idp, tmp_path, free_port()))
    lower = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, (256, {hard})); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", lower, TOKEND, "run", "-c", config],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for((tmp_path / "crm.token").exists, what="the first token")
        limits = Path(f"/proc/{process.pid}/limits").read_text().splitlines()
        (line,) = [line for line in limits if line.startswith("Max open files")]
        assert line.split()[3:5] == [str(raised), str(hard)]  # soft, hard
    finally:
        process.terminate()
        process.wait(20)


@pytest.mark.parametrize(
    ("limits", "asked"),
    [
        ((1024, 4096), (4096, 4096)),
        ((1024, 1 << 20), (OPEN_FILES, 1 << 20)),  # capped: the programs tokend runs inherit it
        ((1024, resource.RLIM_INFINITY), (OPEN_FILES, resource.RLIM_INFINITY)),
        ((OPEN_FILES * 2, 1 << 20), None),  # never lowered
    ],
)
def test_how_far_the_open_file_limit_is_raised(
    monkeypatch: pytest.MonkeyPatch, limits: tuple[int, int], asked: tuple[int, int] | None
) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda which: limits)
    monkeypatch.setattr(resource, "setrlimit", lambda which, value: calls.append(value))
    _allow_many_open_files()
    assert calls == ([asked] if asked else [])
