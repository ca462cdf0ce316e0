"""How tokend talks HTTP to Vault: no redirect is followed (not even to loopback), a loopback
Vault never goes through a proxy while a remote one does, and every request says `tokend/x.y`.

A hostile "Vault" on loopback answers every request with a redirect; a recording listener stands
in for a proxy (and for the redirect target), noting every connection it gets.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.support.openbao import Bao
from tests.support.servers import serve
from tests.support.vault import a_token, sink_context
from tokend import __version__
from tokend.sinks.vault import VaultSink, VaultSinkOptions
from tokend.vault import Problem, VaultError, VaultOptions, VaultSession

SECRET_ID = "secret-id-canary-5b1e0c"


class Recorder:
    """A TCP listener on loopback that notes the first line of whatever connects, then hangs up
    (a proxy, or a redirect target, that must not be used)."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self.seen: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(2)
                try:
                    self.seen.append(connection.recv(4096).decode(errors="replace"))
                except OSError:
                    self.seen.append("")

    def close(self) -> None:
        self._socket.close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    listening = Recorder()
    yield listening
    listening.close()


class Redirector:
    """A 'Vault' that sends every request elsewhere, and records what it was sent."""

    def __init__(self, location: str, answers: dict[str, Any] | None = None) -> None:
        self.location = location
        self.answers = answers or {}
        """Paths answered honestly, with this JSON body."""
        self.requests: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        body = await request.body()
        self.requests.append({"headers": dict(request.headers), "body": body.decode()})
        if scope["path"] in self.answers:
            response: Response = JSONResponse(self.answers[scope["path"]])
        else:
            response = Response(status_code=307, headers={"Location": self.location})
        await response(scope, receive, send)


def approle_options(address: str, tmp_path: Path, **extra: Any) -> VaultOptions:
    (tmp_path / "role_id").write_text("role-id-1")
    (tmp_path / "secret_id").write_text(SECRET_ID)
    auth = {
        "method": "approle",
        "role_id": {"file": str(tmp_path / "role_id")},
        "secret_id": {"file": str(tmp_path / "secret_id")},
    }
    return VaultOptions.model_validate({"address": address, "auth": auth, **extra})


@pytest.mark.parametrize("target", ["remote", "loopback"])
def test_a_redirect_is_an_error_naming_its_target_and_is_never_followed(
    target: str, recorder: Recorder, tmp_path: Path
) -> None:
    location = {
        "remote": "http://203.0.113.1/v1/auth/approle/login?x=1",  # TEST-NET-3: never reached
        "loopback": f"{recorder.url}/v1/auth/approle/login",
    }[target]
    named = {"remote": "http://203.0.113.1", "loopback": recorder.url}[target]
    redirector = Redirector(location)
    with serve(redirector) as url:
        options = approle_options(url, tmp_path, allow_insecure_http=True, timeout="30s")
        session = VaultSession(options)
        started = time.monotonic()
        try:
            problem = session.check_login()
        finally:
            session.close_sync()
        took = time.monotonic() - started
    assert problem == (
        f"{url}/v1/auth/approle/login: Vault answered with a redirect to {named}, which tokend "
        "does not follow (set vault.address to where Vault answers itself)"
    )
    assert took < 5  # no connection attempt to 203.0.113.1 (it would hang until the timeout)
    assert recorder.seen == []  # not followed even to loopback
    assert len(redirector.requests) == 1  # the login: sent once, to the configured address only
    assert SECRET_ID not in problem


def test_a_redirect_when_reading_or_writing_is_a_permanent_sink_error() -> None:
    """A 'Vault' that lets tokend log in and finds the mount, then redirects the secret."""
    answers = {
        "/v1/auth/token/lookup-self": {"data": {"ttl": 0, "renewable": False}},
        "/v1/sys/internal/ui/mounts/secret/crm": {
            "data": {"path": "secret/", "type": "kv", "options": {"version": "2"}}
        },
    }
    redirector = Redirector("https://203.0.113.1:8200/v1/secret/data/crm", answers)
    with serve(redirector) as url:
        auth = {"method": "token", "token": "vault-token-canary"}
        options = VaultOptions.model_validate(
            {"address": url, "allow_insecure_http": True, "auth": auth}
        )

        async def main() -> VaultError:
            session = VaultSession(options)
            sink = VaultSink(VaultSinkOptions(type="vault", path="crm"), sink_context(session))
            try:
                with pytest.raises(VaultError) as caught:
                    await sink.publish(a_token("x" * 20, timedelta(hours=1)))
            finally:
                await session.close()
            return caught.value

        error = asyncio.run(main())
    assert error.problem is Problem.ADDRESS and not error.transient
    assert str(error) == (
        f"{url}/v1/secret/data/crm: Vault answered with a redirect to https://203.0.113.1:8200, "
        "which tokend does not follow (set vault.address to where Vault answers itself)"
    )


def test_requests_say_tokend_and_its_version(tmp_path: Path) -> None:
    redirector = Redirector("http://203.0.113.1/")
    with serve(redirector) as url:
        session = VaultSession(approle_options(url, tmp_path, allow_insecure_http=True))
        try:
            session.check_login()
        finally:
            session.close_sync()
    assert redirector.requests[0]["headers"]["user-agent"] == f"tokend/{__version__}"


def test_a_loopback_vault_is_never_reached_through_a_proxy(
    bao: Bao, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, recorder.url)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    auth = {"method": "token", "token": bao.root_token}
    session = VaultSession(
        VaultOptions.model_validate({"address": bao.url, "allow_insecure_http": True, "auth": auth})
    )
    try:
        assert session.check_login() is None
    finally:
        session.close_sync()
    assert recorder.seen == []


def test_a_remote_vault_honours_the_proxy_settings(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, recorder.url)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    auth = {"method": "token", "token": "a-token"}
    options = VaultOptions.model_validate(
        {"address": "https://vault.example:8200", "auth": auth, "timeout": "3s"}
    )
    session = VaultSession(options)
    try:
        problem = session.check_login()
    finally:
        session.close_sync()
    assert problem is not None  # the recorder is no proxy: it hangs up
    assert recorder.seen and recorder.seen[0].startswith("CONNECT vault.example:8200 ")
    assert "a-token" not in "".join(recorder.seen)  # a tunnel: the token never reaches the proxy
