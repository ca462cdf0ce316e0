"""A hostile identity provider echoes what tokend sent and holds, in every field of its errors:
the client secret, its base64 and URL encodings, the HTTP Basic credential, the access token tokend
got from it earlier (opaque, not JWT-shaped), a secret straddling the cut of a long description,
and a secret the IdP cut short itself. Read while the token is failing, at DEBUG: no full or
partial canary (8 characters or more) in the log, /status, `tokend status`, /metrics or /readyz."""

from __future__ import annotations

import base64
import json
import secrets
import signal
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import httpx2
import pytest
from starlette.responses import JSONResponse, Response

from tests.conftest import write_config
from tests.support import idp as faults
from tests.support.idp import TENANT, FakeIdp, RecordedRequest, running_idp
from tests.support.processes import start_tokend, tokend, wait_for
from tests.support.servers import free_port

CLIENT = "hostile-client"
SECRET = secrets.token_urlsafe(24)
TOKEN = "opq" + secrets.token_urlsafe(30)  # opaque: no JWT shape to give it away
WINDOW = 8


def _echoes() -> list[str]:
    basic = base64.b64encode(f"{CLIENT}:{SECRET}".encode()).decode()
    return [
        SECRET,
        base64.b64encode(SECRET.encode()).decode(),
        base64.urlsafe_b64encode(SECRET.encode()).decode().rstrip("="),
        quote(SECRET, safe=""),
        basic,
        TOKEN,
    ]


@pytest.fixture(scope="module")
def hostile() -> Iterator[FakeIdp]:
    with running_idp(lifetime=timedelta(seconds=3)) as server:
        yield server


def _hostile_error(status: int, error: str) -> faults.Fault:
    echoes = " ".join(_echoes())

    async def respond() -> Response:
        description = "x" * 150 + SECRET + " then " + echoes
        body = {
            "error": f"{error} {SECRET}",
            "error_description": description,
            "error_codes": [7000215],
            "trace_id": SECRET + TOKEN,
            "correlation_id": "id-" + SECRET[:20],  # the IdP cut its own echo short
            "timestamp": echoes,
        }
        headers = {"WWW-Authenticate": f"Basic realm={SECRET}", "X-Echo": TOKEN}
        return JSONResponse(body, status_code=status, headers=headers)

    return respond


def _windows(text: str) -> set[str]:
    return {text[i : i + WINDOW] for i in range(len(text) - WINDOW + 1)}


CANARY_WINDOWS = set().union(*(_windows(canary) for canary in (SECRET, TOKEN)))


def _leaks(text: str) -> set[str]:
    return {window for window in CANARY_WINDOWS if window in text}


def test_nothing_an_idp_echoes_is_shown(hostile: FakeIdp, tmp_path: Path) -> None:
    hostile.provider.clients[CLIENT] = SECRET
    served = {"count": 0}

    def policy(request: RecordedRequest) -> faults.Fault | None:
        served["count"] += 1
        if served["count"] == 1:  # tokend gets (and holds) the opaque canary token first
            return faults.token_body(
                {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 4}
            )
        if served["count"] % 2:
            return _hostile_error(500, "server_error")  # transient: the retry path
        return _hostile_error(401, "invalid_client")  # permanent: the operator path

    hostile.policy = policy
    port = free_port()
    config = write_config(
        tmp_path / "c.yaml",
        {
            "identities": {
                "app": {
                    "tenant": TENANT,
                    "authority_host": hostile.url,
                    "allow_insecure_http": True,
                    "client_id": CLIENT,
                    "credential": {
                        "type": "client_secret",
                        "secret": {"env": "HOSTILE_SECRET"},
                        "auth_method": "client_secret_basic",
                    },
                }
            },
            "tokens": {
                "crm": {
                    "identity": "app",
                    "resource": "https://crm.example",
                    "sinks": [{"type": "file", "path": str(tmp_path / "crm.token")}],
                }
            },
            "defaults": {"startup_spread": 0, "backoff": {"min": "200ms", "max": "1s"}},
            "listen": f"127.0.0.1:{port}",
        },
    )
    log = tmp_path / "tokend.log"
    env = {"HOSTILE_SECRET": SECRET}
    process = start_tokend("--log-level", "debug", "run", "-c", str(config), env=env, log=log)
    base = f"http://127.0.0.1:{port}"
    shown: list[str] = []
    try:
        wait_for(lambda: served["count"] >= 6, what="several hostile answers")

        def failing_status() -> str | None:
            text = httpx2.get(f"{base}/status").text
            return text if json.loads(text)["tokens"]["crm"]["last_error"] else None

        shown.append(wait_for(failing_status, what="a failing /status"))
        shown.append(httpx2.get(f"{base}/metrics").text)
        shown.append(httpx2.get(f"{base}/readyz").text)
        for args in (["status", "--url", base], ["status", "--json", "--url", base]):
            result = tokend(*args)
            shown += [result.stdout, result.stderr]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
        del hostile.provider.clients[CLIENT]
    shown.append(log.read_text())
    assert json.loads(shown[0])["tokens"]["crm"]["last_error"]  # read while failing,
    assert "invalid_client" in log.read_text() and "server_error" in log.read_text()  # both ways
    assert (tmp_path / "crm.token").read_text() == TOKEN  # and tokend did hold the canary
    for text in shown:
        assert _leaks(text) == set(), text[:2000]
