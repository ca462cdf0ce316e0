"""Passwords and refresh tokens never reach a log (at DEBUG), /status, /metrics or /readyz: a
real `tokend run` signs a user in with a canary password, rotates canary refresh tokens, and
meets an identity provider that echoes both in an error description.

The canary refresh tokens are opaque (not JWT-shaped): no redaction pattern could hide them.
"""

from __future__ import annotations

import signal
from datetime import timedelta
from pathlib import Path

import httpx2

from tests.conftest import write_config
from tests.support import idp as faults
from tests.support.delegated import (
    PASSWORD,
    RT_PREFIX,
    delegated_config,
    env,
    password_credential,
    users_idp,
)
from tests.support.idp import Fault, RecordedRequest
from tests.support.processes import start_tokend, wait_for
from tests.support.servers import free_port


def test_run_at_debug_never_shows_a_password_or_a_refresh_token(tmp_path: Path) -> None:
    port = free_port()
    with users_idp(lifetime=timedelta(seconds=2)) as idp:
        users = idp.provider.users
        document = delegated_config(
            idp,
            tmp_path,
            password_credential(),
            {"graph": {"scopes": ["https://graph.example/User.Read"]}},
            listen=f"127.0.0.1:{port}",
        )
        config = write_config(tmp_path / "config.yaml", document)
        echoed: list[str] = []

        def echo_once(request: RecordedRequest) -> Fault | None:
            """The first refresh after arming is refused by an IdP that echoes what it got."""
            presented = request.form.get("refresh_token")
            if presented is None or echoed:
                return None
            echoed.append(presented)
            idp.policy = None
            text = f"refresh token {presented} refused for password {PASSWORD}"
            return faults.entra_error(400, "invalid_grant", 70000, text)

        log = tmp_path / "tokend.log"
        process = start_tokend(
            "--log-level",
            "debug",
            "--log-format",
            "json",
            "run",
            "-c",
            str(config),
            env=env(),
            log=log,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: len(users.spent) >= 2, what="two rotations")
            idp.policy = echo_once
            wait_for(lambda: users.grants.count("password") == 2, what="the password fallback")
            wait_for(lambda: len(users.spent) >= 4, what="rotations after the fallback")
            served = [
                httpx2.get(f"{base}{path}").text for path in ("/metrics", "/status", "/readyz")
            ]
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(15)
        stdout, _ = process.communicate()
        stderr = log.read_text()
    assert '"level": "debug"' in stderr  # DEBUG really was on
    assert "its refresh token was refused as dead" in stderr  # logged, masked
    forms = [request.form for request in idp.token_requests]
    refused_at = next(i for i, form in enumerate(forms) if form.get("refresh_token") == echoed[0])
    assert forms[refused_at + 1]["grant_type"] == "password"  # the fallback, at once
    for text in (stdout, stderr, *served):
        assert PASSWORD not in text
        assert RT_PREFIX not in text
        for token in users.issued:
            assert token not in text
