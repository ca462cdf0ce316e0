"""`tokend login` (the device code flow, RFC 8628) and `type: device_login` identities: real
HTTP to the fake Entra ID, virtual time for the polling and for the daemon.

The login runs in a thread with an event loop of its own, as another process would: what the
daemon sees of it is the sealed file it writes.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import pytest

from tests.conftest import write_config
from tests.support.clock import FakeClock
from tests.support.delegated import (
    PASSWORD,
    RT_PREFIX,
    USER,
    delegated_config,
    env,
    password_credential,
    stored_refresh_token,
    users_idp,
)
from tests.support.harness import Harness
from tests.support.idp import FakeIdp
from tests.support.processes import start_tokend, tokend
from tokend.config import Config, validate_config
from tokend.engine import Phase
from tokend.login import EXIT_FAILED, EXIT_OK, EXIT_USAGE, login

H = timedelta(hours=1)
_CODE = re.compile(r"enter the code ([A-Z0-9-]+)")
DEVICE = {"type": "device_login"}
GRAPH = {"graph": {"scopes": ["https://graph.example/User.Read"]}}


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in env().items():
        monkeypatch.setenv(key, value)


class User:
    """Sleeps on the login's behalf (moving the clock) and, at the `approve_at`-th wait, signs
    in at the verification page with the code the login printed."""

    def __init__(self, idp: FakeIdp, clock: FakeClock, out: io.StringIO, approve_at: int | None):
        self.idp, self.clock, self.out, self.approve_at = idp, clock, out, approve_at
        self.waits: list[float] = []
        self.decline = False

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.clock.advance(seconds)
        if len(self.waits) == self.approve_at:
            match = _CODE.search(self.out.getvalue())
            assert match is not None, self.out.getvalue()
            users = self.idp.provider.users
            users.decline(match[1]) if self.decline else users.approve(match[1], USER)


def _login(
    config: Config, idp: FakeIdp, clock: FakeClock, approve_at: int | None = 3, name: str = "graph"
) -> tuple[int, str, User]:
    out = io.StringIO()
    user = User(idp, clock, out, approve_at)
    status = asyncio.run(login(config, name, out, clock=clock, sleep=user.sleep))
    return status, out.getvalue(), user


def test_login_polls_through_pending_and_slow_down_then_stores_the_refresh_token(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    with users_idp(clock, device_code_interval=1, device_code_spacing=6) as idp:
        config = validate_config(delegated_config(idp, tmp_path, DEVICE, GRAPH))
        status, out, user = _login(config, idp, clock, approve_at=4)
        assert status == EXIT_OK
        # 1 s as announced; the second poll is too soon for this server: slow_down, +5 s.
        assert user.waits == [1, 1, 6, 6]  # pending, slow_down, pending, signed in
        assert f"open {idp.url}/devicelogin" in out
        assert f"Signed in as {USER}." in out
        users = idp.provider.users
        assert users.grants == ["urn:ietf:params:oauth:grant-type:device_code"]
        assert stored_refresh_token(tmp_path / "state", idp) == users.issued[-1]
        asked = next(r for r in idp.requests if r.path.endswith("/devicecode")).form["scope"]
        assert asked.split() == [
            "https://graph.example/User.Read",
            "offline_access",
            "openid",
            "profile",
        ]
        assert users.issued[-1] not in out


def test_login_gives_up_when_the_code_expires(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    with users_idp(
        clock, device_code_interval=5, device_code_lifetime=timedelta(seconds=60)
    ) as idp:
        config = validate_config(delegated_config(idp, tmp_path, DEVICE, GRAPH))
        with caplog.at_level(logging.ERROR):
            status, _, user = _login(config, idp, clock, approve_at=None)
        assert status == EXIT_FAILED
        assert sum(user.waits) < 60 <= sum(user.waits) + 5
        assert "nobody signed in before the code expired: run tokend login again" in caplog.text
        assert not (tmp_path / "state" / "refresh-tokens" / "user.json").exists()


def test_a_declined_login_stores_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    with users_idp(clock, device_code_interval=1) as idp:
        config = validate_config(delegated_config(idp, tmp_path, DEVICE, GRAPH))
        out = io.StringIO()
        user = User(idp, clock, out, approve_at=2)
        user.decline = True
        with caplog.at_level(logging.ERROR):
            status = asyncio.run(login(config, "graph", out, clock=clock, sleep=user.sleep))
        assert status == EXIT_FAILED
        assert "the sign-in was declined" in caplog.text
        assert stored_refresh_token(tmp_path / "state", idp) is None


def test_login_is_for_device_login_identities_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    with users_idp(clock) as idp:
        config = validate_config(delegated_config(idp, tmp_path, password_credential(), GRAPH))
        with caplog.at_level(logging.ERROR):
            assert _login(config, idp, clock)[0] == EXIT_USAGE
            assert _login(config, idp, clock, name="nope")[0] == EXIT_USAGE
        assert "whose credential is password: tokend login is for type: device_login" in caplog.text
        assert "no token 'nope' in the config (known: graph)" in caplog.text
        assert idp.requests == []


def _daemon(
    config: Config, clock: FakeClock, scenario: Callable[[Harness], Awaitable[None]]
) -> None:
    async def main() -> None:
        harness = Harness(config, clock)
        try:
            await scenario(harness)
        finally:
            await harness.stop()

    asyncio.run(main())


def test_a_running_daemon_picks_up_a_login_and_asks_for_another_when_it_dies(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    with users_idp(clock, device_code_interval=1) as idp:
        config = validate_config(delegated_config(idp, tmp_path, DEVICE, GRAPH))
        users = idp.provider.users

        async def login_elsewhere() -> None:
            status, _, _ = await asyncio.to_thread(_login, config, idp, clock, 2)
            assert status == EXIT_OK

        async def scenario(h: Harness) -> None:
            await h.start()
            job = h.job("graph")
            await h.run_for(timedelta(seconds=1))
            assert job.phase(clock.now()) is Phase.FAILING
            assert job.last_error is not None and job.last_error.code == "login_required"
            assert (
                "identity 'user': no refresh token is stored for it: sign in with `tokend login graph`"
                in str(job.last_error)
            )
            await login_elsewhere()
            await h.run_for(timedelta(seconds=15))  # no restart, no reload
            assert job.phase(clock.now()) is Phase.FRESH
            await h.run_for(6 * H)
            assert job.phase(clock.now()) is Phase.FRESH
            users.revoke_all()  # e.g. the user's password was reset
            await h.run_for(H)
            assert job.last_error is not None and job.last_error.code == "login_required"
            message = str(job.last_error)  # (after the refusal, at the tries that follow)
            assert "its refresh token was refused as dead (invalid_grant/70000)" in message
            assert "sign in with `tokend login graph`" in str(job.last_error)
            assert stored_refresh_token(tmp_path / "state", idp) is None
            await login_elsewhere()
            await h.run_for(timedelta(seconds=15))
            assert job.phase(clock.now()) is Phase.FRESH

        _daemon(config, clock, scenario)
        assert users.grants.count("refresh_token") >= 7
        assert len(users.refused) == 1  # the revoked one, presented once
        presented = [
            r.form["refresh_token"] for r in idp.token_requests if "refresh_token" in r.form
        ]
        assert len(presented) == len(set(presented))


def test_tokend_login_then_tokend_once(tmp_path: Path) -> None:
    """The commands as an operator runs them: the login prints where to sign in, the user signs
    in (here: the test, at the fake's verification page), and `tokend once` then publishes."""
    with users_idp(device_code_interval=1) as idp:
        config = write_config(
            tmp_path / "config.yaml", delegated_config(idp, tmp_path, DEVICE, GRAPH)
        )
        process = start_tokend(
            "--log-level", "debug", "login", "graph", "-c", str(config), env=env()
        )
        assert process.stdout is not None
        first = process.stdout.readline()
        second = process.stdout.readline()
        match = _CODE.search(second)
        assert match is not None, first + second
        idp.provider.users.approve(match[1], USER)
        rest, errors = process.communicate(timeout=30)
        assert process.returncode == 0, errors
        assert f"Signed in as {USER}" in rest
        once = tokend("--log-level", "debug", "once", "-c", str(config), env=env())
        assert once.returncode == 0, once.stderr
        assert (tmp_path / "graph.token").read_text().startswith("eyJ")
        assert [r.form["grant_type"] for r in idp.token_requests][-1] == "refresh_token"
        for text in (first, second, rest, errors, once.stdout, once.stderr):
            assert RT_PREFIX not in text
            assert PASSWORD not in text
