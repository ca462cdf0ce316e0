"""The endpoint's listeners in a real `tokend run`: a Unix socket with its mode and a secret
generated at start (written 0600 for clients, never logged), TLS, and the address checks of
`tokend check` and `tokend run`."""

from __future__ import annotations

import signal
import socket
import ssl
import stat
from pathlib import Path

import httpx2
import yaml

from tests.conftest import entra_identity, write_config
from tests.support.idp import CLIENT_SECRET, FakeIdp
from tests.support.pki import CertificateAuthority
from tests.support.processes import start_tokend, tokend, wait_for
from tests.support.servers import free_port

PARAMS = {"api-version": "2019-08-01", "resource": "https://crm.example"}


def _config(idp: FakeIdp, tmp_path: Path, endpoint: dict[str, object], metrics: int) -> Path:
    return write_config(
        tmp_path / "config.yaml",
        {
            "identities": {"app": entra_identity(idp, {"env": "APP_SECRET"})},
            "tokens": {
                "crm": {
                    "identity": "app",
                    "resource": "https://crm.example",
                    "sinks": [{"type": "file", "path": str(tmp_path / "crm.token")}],
                }
            },
            "defaults": {"startup_spread": 0},
            "listen": f"127.0.0.1:{metrics}",
            "endpoint": endpoint,
        },
    )


def _ready(port: int) -> bool:
    try:
        return httpx2.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx2.TransportError:
        return False


def test_unix_socket_with_a_generated_secret(idp: FakeIdp, tmp_path: Path) -> None:
    sock, env_file, metrics = tmp_path / "ep.sock", tmp_path / "endpoint.env", free_port()
    endpoint = {"listen": f"unix:{sock}", "socket_mode": "0600", "env_file": str(env_file)}
    config = _config(idp, tmp_path, endpoint, metrics)
    log = tmp_path / "tokend.log"
    process = start_tokend(
        "--log-level", "debug", "run", "-c", str(config), env={"APP_SECRET": CLIENT_SECRET}, log=log
    )
    try:
        wait_for(lambda: _ready(metrics), what="tokend ready")
        assert stat.S_ISSOCK(sock.stat().st_mode) and sock.stat().st_mode & 0o777 == 0o600
        assert env_file.stat().st_mode & 0o777 == 0o600
        header = next(
            line.split("=", 1)[1].strip("'")
            for line in env_file.read_text().splitlines()
            if line.startswith("IDENTITY_HEADER=")
        )
        assert len(header) >= 40  # 32 random bytes
        with httpx2.Client(transport=httpx2.HTTPTransport(uds=str(sock))) as client:
            answer = client.get(
                "http://localhost/msi/token", params=PARAMS, headers={"X-IDENTITY-HEADER": header}
            )
            assert answer.json()["access_token"] == (tmp_path / "crm.token").read_text()
            refused = client.get("http://localhost/msi/token", params=PARAMS)
            assert refused.status_code == 401
        printed = tokend("endpoint", "env", "-c", str(config))
        assert printed.returncode == 0, printed.stderr
        assert f"export IDENTITY_HEADER='{header}'" in printed.stdout
        assert f"# a Unix socket: curl --unix-socket {sock}" in printed.stdout
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    assert not sock.exists()  # removed at stop
    text = log.read_text()
    assert "local token endpoint on unix:" in text
    assert header not in text


def test_tls(idp: FakeIdp, tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path)
    pair = ca.issue("endpoint", "127.0.0.1", server_ips=("127.0.0.1",))
    port, metrics = free_port(), free_port()
    endpoint = {
        "listen": f"127.0.0.1:{port}",
        "allow_remote": True,
        "tls": {"certificate": str(pair.cert), "key": str(pair.key)},
        "header_secret": {"env": "HEADER"},
    }
    config = _config(idp, tmp_path, endpoint, metrics)
    env = {"APP_SECRET": CLIENT_SECRET, "HEADER": "tls-header-secret"}
    process = start_tokend("run", "-c", str(config), env=env, log=tmp_path / "tokend.log")
    try:
        wait_for(lambda: _ready(metrics), what="tokend ready")
        headers = {"X-IDENTITY-HEADER": "tls-header-secret"}
        with httpx2.Client(verify=ssl.create_default_context(cafile=str(ca.cert))) as client:
            answer = client.get(
                f"https://127.0.0.1:{port}/msi/token", params=PARAMS, headers=headers
            )
        assert answer.json()["access_token"] == (tmp_path / "crm.token").read_text()
        try:
            plain = httpx2.get(f"http://127.0.0.1:{port}/msi/token", params=PARAMS, headers=headers)
        except httpx2.TransportError:
            pass
        else:
            assert plain.status_code >= 400  # never a token in the clear
        printed = tokend("endpoint", "env", "-c", str(config), env=env)
        assert f"export IDENTITY_ENDPOINT='https://127.0.0.1:{port}/msi/token'" in printed.stdout
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0


def test_busy_or_unusable_addresses(idp: FakeIdp, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        endpoint = {"listen": f"127.0.0.1:{port}", "header_secret": {"env": "HEADER"}}
        config = _config(idp, tmp_path, endpoint, free_port())
        env = {"APP_SECRET": CLIENT_SECRET, "HEADER": "h-secret"}
        checked = tokend("check", "-c", str(config), env=env)
        assert checked.returncode == 2
        assert (
            f"endpoint.listen: cannot listen on 127.0.0.1:{port}: Address already in use"
            in checked.stderr
        )
        ran = tokend("run", "-c", str(config), env=env, timeout=30)
        assert ran.returncode == 2
        assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in ran.stderr
    not_socket = tmp_path / "file.sock"
    not_socket.write_text("")
    endpoint = {"listen": f"unix:{not_socket}", "header_secret": {"env": "HEADER"}}
    ran = tokend(
        "run", "-c", str(_config(idp, tmp_path, endpoint, free_port())), env=env, timeout=30
    )
    assert ran.returncode == 2 and "a file that is not a socket is there" in ran.stderr
    assert not_socket.read_text() == ""  # left alone


def test_a_start_that_cannot_bind_leaves_the_running_ones_env_file(
    idp: FakeIdp, tmp_path: Path
) -> None:
    """Another tokend serves the address and wrote the env file its clients read: a second start
    fails (exit 2) without replacing that file's header secret with one nobody serves."""
    env_file = tmp_path / "endpoint.env"
    env_file.write_text("IDENTITY_HEADER='the-running-ones'\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        endpoint = {"listen": f"127.0.0.1:{busy.getsockname()[1]}", "env_file": str(env_file)}
        config = _config(idp, tmp_path, endpoint, free_port())
        ran = tokend("run", "-c", str(config), env={"APP_SECRET": CLIENT_SECRET}, timeout=30)
    assert ran.returncode == 2 and "Address already in use" in ran.stderr
    assert env_file.read_text() == "IDENTITY_HEADER='the-running-ones'\n"


def test_check_says_when_compat_has_no_password_identity(idp: FakeIdp, tmp_path: Path) -> None:
    """The requesttoken compatibility route signs users in with a password: an identity with a
    client secret cannot serve it, and `tokend check` says so before anything starts."""
    endpoint = {"listen": f"127.0.0.1:{free_port()}", "protocols": [], "compat": "requesttoken"}
    config = _config(idp, tmp_path, endpoint, free_port())
    checked = tokend("check", "-c", str(config), env={"APP_SECRET": CLIENT_SECRET})
    assert checked.returncode == 2
    assert (
        "endpoint.compat: requesttoken needs an identity whose credential has a username and "
        "a password (type: password)"
    ) in checked.stderr


def test_a_reload_serves_the_tokens_it_adds(idp: FakeIdp, tmp_path: Path) -> None:
    port, metrics = free_port(), free_port()
    endpoint = {"listen": f"127.0.0.1:{port}", "header_secret": {"env": "HEADER"}}
    config = _config(idp, tmp_path, endpoint, metrics)
    env = {"APP_SECRET": CLIENT_SECRET, "HEADER": "reload-header"}
    process = start_tokend("run", "-c", str(config), env=env, log=tmp_path / "tokend.log")
    url, headers = f"http://127.0.0.1:{port}/msi/token", {"X-IDENTITY-HEADER": "reload-header"}
    graph = {**PARAMS, "resource": "https://graph.example"}
    try:
        wait_for(lambda: _ready(metrics), what="tokend ready")
        assert httpx2.get(url, params=graph, headers=headers).status_code == 400
        document = yaml.safe_load(config.read_text())
        document["tokens"]["graph"] = {
            "identity": "app",
            "scopes": ["https://graph.example/.default"],
            "sinks": [{"type": "file", "path": str(tmp_path / "graph.token")}],
        }
        config.write_text(yaml.safe_dump(document))
        process.send_signal(signal.SIGHUP)
        answer = wait_for(
            lambda: (r := httpx2.get(url, params=graph, headers=headers)).status_code == 200 and r,
            what="the added token served",
        )
        written = tmp_path / "graph.token"
        wait_for(written.exists, what="the added token's file")  # sinks are written apart
        assert answer.json()["access_token"] == written.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0


def test_an_env_file_that_cannot_be_written_stops_the_start(idp: FakeIdp, tmp_path: Path) -> None:
    """Not a daemon whose endpoint died quietly at start (it used to report it at the stop):
    `tokend run` exits 2 with one line. Under /proc, where `check` sees a directory it may
    write in (as root) and yet nothing can be created."""
    endpoint = {"env_file": "/proc/tokend-test-endpoint.env"}
    config = _config(idp, tmp_path, endpoint, free_port())
    process = start_tokend(
        "run", "-c", str(config), env={"APP_SECRET": CLIENT_SECRET}, log=tmp_path / "tokend.log"
    )
    try:
        assert process.wait(20) == 2
    finally:
        if process.poll() is None:
            process.kill()
    text = (tmp_path / "tokend.log").read_text()
    assert "Traceback" not in text
    assert "env_file" in text and "/proc/tokend-test-endpoint.env" in text, text
