"""Secrets and tokens never reach stdout, stderr, /metrics, /status or /readyz: proven with
canary values, at DEBUG level, on success and failure paths.

The canary token is opaque (not JWT-shaped), so the log redaction filter's pattern matching
cannot hide it: only code that never prints tokens passes.
"""

from __future__ import annotations

import signal
from pathlib import Path

import httpx2

from tests.conftest import write_config
from tests.support import idp as faults
from tests.support.idp import TENANT, FakeIdp
from tests.support.processes import start_tokend, tokend, wait_for
from tests.support.servers import free_port

SECRET = "CANARY-client-secret-5e1f0a"
WRONG_SECRET = "CANARY-wrong-secret-8c2d4b"
TOKEN = "CANARY-access-token-0b9e77"
CANARIES = (SECRET, WRONG_SECRET, TOKEN)


def _config(
    idp: FakeIdp,
    tmp_path: Path,
    port: int | None,
    secret: object = None,
    name: str = "config.yaml",
) -> Path:
    return write_config(
        tmp_path / name,
        {
            "identities": {
                "app": {
                    "tenant": TENANT,
                    "authority_host": idp.url,
                    "allow_insecure_http": True,
                    "client_id": "canary-client",
                    "credential": {
                        "type": "client_secret",
                        "secret": secret or {"env": "CANARY_SECRET"},
                    },
                },
            },
            "tokens": {
                "crm": {
                    "identity": "app",
                    "resource": "https://crm.example",
                    "sinks": [
                        {"type": "file", "path": str(tmp_path / "crm.token")},
                        {"type": "file", "path": str(tmp_path / "crm.env"), "format": "env"},
                        # Fails only when written (a name longer than the file system takes),
                        # so start-up checks let it through and the failure paths run.
                        {"type": "file", "path": str(tmp_path / ("n" * 256))},
                    ],
                }
            },
            "defaults": {"startup_spread": 0},
            "listen": f"127.0.0.1:{port}" if port else None,
        },
    )


def _opaque_tokens(idp: FakeIdp, count: int) -> None:
    body = {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 3600}
    idp.fail(*[faults.token_body(body)] * count)


def _assert_clean(*texts: str) -> None:
    for text in texts:
        for canary in CANARIES:
            assert canary not in text


def test_once_and_check_success_and_failure(idp: FakeIdp, tmp_path: Path) -> None:
    idp.provider.clients["canary-client"] = SECRET
    try:
        config = str(_config(idp, tmp_path, None))
        _opaque_tokens(idp, 1)
        ok = tokend("--log-level", "debug", "once", "-c", config, env={"CANARY_SECRET": SECRET})
        assert (tmp_path / "crm.token").read_text() == TOKEN  # the canary did flow end to end
        assert ok.returncode == 1  # one sink cannot be written
        failed = tokend(
            "--log-level", "debug", "once", "-c", config, env={"CANARY_SECRET": WRONG_SECRET}
        )
        assert failed.returncode == 1
        assert "invalid_client (AADSTS7000215)" in failed.stderr
        checked = tokend(
            "--log-level", "debug", "check", "-c", config, env={"CANARY_SECRET": SECRET}
        )
        inline = _config(idp, tmp_path, None, secret=SECRET, name="inline.yaml")
        inline_check = tokend("--log-level", "debug", "check", "-c", str(inline))
        assert "secret written inline" in inline_check.stderr
        _assert_clean(
            ok.stdout,
            ok.stderr,
            failed.stdout,
            failed.stderr,
            checked.stdout,
            checked.stderr,
            inline_check.stdout,
            inline_check.stderr,
        )
    finally:
        del idp.provider.clients["canary-client"]


def test_run_across_every_failure_path(idp: FakeIdp, tmp_path: Path) -> None:
    """A running daemon at DEBUG meets each kind of failure, including an identity provider that
    echoes the client secret in its error description and a malformed body carrying the token.
    What it serves is read while the token is failing (when the echoed error is on show), and
    again after recovery."""
    idp.provider.clients["canary-client"] = SECRET
    port = free_port()
    idp.fail(
        faults.token_body({"access_token": TOKEN, "token_type": "Bearer", "expires_in": 2}),
        faults.too_many_requests("0"),
        faults.html(502),
        faults.truncated_json(),
        faults.token_body({"access_token": TOKEN, "expires_in": "soon"}),
    )
    refusing = True
    echo = faults.entra_error(401, "invalid_client", 7000215, f"Invalid client secret {SECRET}")
    healthy = faults.token_body({"access_token": TOKEN, "token_type": "Bearer", "expires_in": 3600})
    idp.policy = lambda _request: echo if refusing else healthy
    config = _config(idp, tmp_path, port)
    text = config.read_text().replace(
        "startup_spread: 0", "startup_spread: 0\n  backoff: {min: 50ms, max: 100ms}"
    )
    config.write_text(text)
    log = tmp_path / "tokend.log"
    process = start_tokend(
        "--log-level",
        "debug",
        "--log-format",
        "json",
        "run",
        "-c",
        str(config),
        env={"CANARY_SECRET": SECRET},
        log=log,
    )
    base = f"http://127.0.0.1:{port}"
    paths = ("/metrics", "/status", "/readyz")
    try:
        wait_for(
            lambda: "AADSTS7000215" in (text := log.read_text()) and "no replacement" in text,
            what="the refusal, and the 2-second token's expiry during it",
        )
        while_failing = [httpx2.get(f"{base}{path}") for path in paths]
        refusing = False
        wait_for(lambda: '"recovered after' in log.read_text(), what="the recovery")
        served = [httpx2.get(f"{base}{path}").text for path in paths]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)
    try:
        stdout, _ = process.communicate()
        stderr = log.read_text()
        assert (tmp_path / "crm.token").read_text() == TOKEN
        assert '"level": "debug"' in stderr  # DEBUG really was on
        crm = while_failing[1].json()["tokens"]["crm"]
        assert crm["state"] == "expired"  # the 2-second token ran out during the failures
        assert crm["last_error_kind"] == "permanent"
        assert crm["last_error_code"] == "invalid_client/7000215"
        assert "Invalid client secret *** " in crm["last_error"]  # echoed, and masked
        assert while_failing[2].status_code == 503
        assert 'tokend_token_valid{token="crm"} 0.0' in while_failing[0].text
        assert 'tokend_token_valid{token="crm"} 1.0' in served[0]
        for code in ("HTTP 429", "HTTP 502", "not JSON", "expires_in is not a number"):
            assert code in stderr, code
        _assert_clean(stdout, stderr, *served, *(response.text for response in while_failing))
    finally:
        del idp.provider.clients["canary-client"]
