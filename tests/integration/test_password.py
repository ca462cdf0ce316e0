"""The password grant and refresh-token rotation on virtual time: real HTTP to the fake Entra
ID (`tokend.devusers`), real sealed state files, a fake clock.

The fake's refresh tokens are each good once, as at a strict server: a refresh token spent twice
(a lost rotation, two refreshes racing) shows up as a refusal.
"""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import pytest
from pydantic import ConfigDict
from pydantic import dataclasses as pydantic_dataclasses

from tests.support.clock import FakeClock
from tests.support.delegated import (
    PASSWORD,
    RT_PREFIX,
    delegated_config,
    env,
    password_credential,
    stored_refresh_token,
    users_idp,
)
from tests.support.harness import Harness
from tests.support.idp import CLIENT_ID, CLIENT_SECRET, FakeIdp
from tokend.config import Config, ConfigError, validate_config
from tokend.engine import Phase
from tokend.engine.once import refresh_once
from tokend.sinks import SINKS, SinkContext, SinkOptionsBase, SinkType
from tokend.token import Token

H = timedelta(hours=1)
T = TypeVar("T")


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in env().items():
        monkeypatch.setenv(key, value)


def _run(
    config: dict[str, Any], clock: FakeClock, scenario: Callable[[Harness], Awaitable[T]]
) -> T:
    async def main() -> T:
        harness = Harness(validate_config(config), clock)
        try:
            return await scenario(harness)
        finally:
            await harness.stop()

    return asyncio.run(main())


def _grants(idp: FakeIdp) -> list[str]:
    return [request.form["grant_type"] for request in idp.token_requests]


def _files_under(directory: Path) -> list[Path]:
    return [path for path in directory.rglob("*") if path.is_file()]


def test_one_user_two_endpoints_rotate_refresh_tokens_for_a_day(tmp_path: Path) -> None:
    """A v1 and a v2 token of one user, refreshed together for a simulated day: one password
    sign-in, then every refresh spends the newest refresh token, none is ever refused, and the
    newest is the one stored, sealed."""
    clock = FakeClock()
    with users_idp(clock) as idp:
        tokens = {
            "crm": {"resource": "https://crm.example"},
            "graph": {"scopes": ["https://graph.example/User.Read"]},
        }
        config = delegated_config(idp, tmp_path, password_credential(), tokens)

        async def scenario(h: Harness) -> None:
            await h.start()
            await h.run_for(24 * H)
            for name in tokens:
                assert h.job(name).results["success"] >= 24
                assert h.job(name).results["transient_error"] == 0
                assert h.job(name).phase(clock.now()) is Phase.FRESH

        _run(config, clock, scenario)
        users = idp.provider.users
        grants = _grants(idp)
        assert grants == ["password"] + ["refresh_token"] * (len(grants) - 1)
        assert users.refused == []
        presented = [
            r.form["refresh_token"] for r in idp.token_requests if "refresh_token" in r.form
        ]
        assert presented == users.issued[:-1]  # each refresh spent the newest, and only once
        v2 = [r.form["scope"] for r in idp.token_requests if "scope" in r.form]
        assert v2 and all(
            scope.split() == ["https://graph.example/User.Read", "offline_access"] for scope in v2
        )
        assert stored_refresh_token(tmp_path / "state", idp) == users.issued[-1]
        state = _files_under(tmp_path / "state")
        for path in state:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert RT_PREFIX not in path.read_text()  # grep: no refresh token in plaintext
        assert stat.S_IMODE((tmp_path / "state" / "refresh-tokens").stat().st_mode) == 0o700


def test_concurrent_refreshes_of_one_identity_never_spend_the_same_refresh_token(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    with users_idp(clock) as idp:
        tokens = {f"api{i}": {"resource": f"https://api{i}.example"} for i in range(4)}
        config = delegated_config(idp, tmp_path, password_credential(), tokens)

        async def scenario(h: Harness) -> list[bool]:
            results = []
            for _ in range(3):  # all four at once, three times
                results += await asyncio.gather(*(refresh_once(h.job(name)) for name in tokens))
            return results

        assert all(_run(config, clock, scenario))
        users = idp.provider.users
        assert users.refused == []
        assert _grants(idp).count("password") == 1
        assert len(users.spent) == len(set(users.spent)) == 11


def test_a_dead_refresh_token_falls_back_to_the_password_in_the_same_attempt(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    with users_idp(clock, refresh_token_lifetime=2 * H) as idp:
        config = delegated_config(idp, tmp_path, password_credential())

        async def scenario(h: Harness) -> None:
            await h.start()
            await h.run_for(H)
            idp.provider.users.revoke_all()  # a password reset elsewhere
            await h.run_for(H)
            job = h.job()
            assert job.results["transient_error"] == job.results["permanent_error"] == 0
            assert job.phase(clock.now()) is Phase.FRESH

        _run(config, clock, scenario)
        users = idp.provider.users
        assert len(users.refused) == 1
        refused_at = next(
            i
            for i, r in enumerate(idp.token_requests)
            if r.form.get("refresh_token") == users.refused[0]
        )
        assert _grants(idp)[refused_at + 1] == "password"
        assert stored_refresh_token(tmp_path / "state", idp) == users.issued[-1]


def test_refresh_tokens_off_signs_in_with_the_password_each_time_and_needs_no_state(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    with users_idp(clock) as idp:
        config = delegated_config(
            idp,
            tmp_path,
            password_credential(refresh_tokens=False),
            {"graph": {"scopes": ["https://graph.example/User.Read"]}},
            state_dir=None,
            state_key=None,
        )

        async def scenario(h: Harness) -> None:
            await h.start()
            await h.run_for(3 * H)

        _run(config, clock, scenario)
        assert set(_grants(idp)) == {"password"}
        assert len(_grants(idp)) >= 3
        assert all(r.form["scope"] == "https://graph.example/User.Read" for r in idp.token_requests)


@pytest.mark.parametrize("auth_method", ["client_secret_post", "client_secret_basic"])
def test_a_confidential_client_authenticates_as_well(tmp_path: Path, auth_method: str) -> None:
    clock = FakeClock()
    with users_idp(clock) as idp:
        credential = password_credential(
            client_secret={"env": "TEST_CLIENT_SECRET"}, auth_method=auth_method
        )
        config = delegated_config(idp, tmp_path, credential, client_id=CLIENT_ID)

        async def scenario(h: Harness) -> None:
            await h.start()
            await h.run_for(2 * H)

        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("TEST_CLIENT_SECRET", CLIENT_SECRET)
            _run(config, clock, scenario)
        first, second = idp.token_requests[:2]
        assert first.form["grant_type"] == "password"
        assert second.form["grant_type"] == "refresh_token"
        for request in (first, second):
            if auth_method == "client_secret_basic":
                assert request.headers["authorization"].startswith("Basic ")
                assert "client_secret" not in request.form
            else:
                assert request.form["client_secret"] == CLIENT_SECRET
        assert idp.provider.users.refused == []


def _refusal(tmp_path: Path, **users: Any) -> tuple[str, str, Phase, FakeIdp]:
    clock = FakeClock()
    with users_idp(clock, **users) as idp:
        config = delegated_config(
            idp,
            tmp_path,
            password_credential(),
            {"graph": {"scopes": ["https://graph.example/User.Read"]}},
        )

        async def scenario(h: Harness) -> tuple[str, str, Phase]:
            assert not await h.refresh_all()
            job = h.job("graph")
            assert job.last_error is not None and not job.last_error.transient
            return str(job.last_error), job.last_error.code, job.phase(clock.now())

        return (*_run(config, clock, scenario), idp)


@pytest.mark.parametrize(
    ("users", "code", "advice"),
    [
        (
            {"mfa_required": {"alice@contoso.example"}},
            50076,
            "use type: device_login (tokend login) or a certificate",
        ),
        ({"unconsented": {"https://graph.example"}}, 65001, "grant admin consent"),
        ({"locked": {"alice@contoso.example"}}, 50053, "the account is locked"),
        ({"password_expired": {"alice@contoso.example"}}, 50055, "the password has expired"),
        ({"passwords": {"alice@contoso.example": "another"}}, 50126, "wrong username or password"),
    ],
)
def test_entra_refusals_of_a_user_are_permanent_and_say_what_to_do(
    tmp_path: Path, users: dict[str, Any], code: int, advice: str
) -> None:
    message, error_code, phase, _ = _refusal(tmp_path, **users)
    assert f"invalid_grant/{code}" == error_code
    assert f"AADSTS{code}" in message
    assert advice in message
    assert phase is Phase.FAILING
    assert PASSWORD not in message


def test_a_refused_password_is_not_sent_again_until_it_changes(tmp_path: Path) -> None:
    """Retrying a wrong password locks accounts (the helper tokend replaces did): tokend tries
    it once, then waits for the secret to change, and is back within seconds when it does."""
    clock = FakeClock()
    secret = tmp_path / "password"
    secret.write_text("wrong-password")
    with users_idp(clock) as idp:
        config = delegated_config(
            idp, tmp_path, password_credential(password={"file": str(secret)})
        )

        async def scenario(h: Harness) -> None:
            await h.start()
            await h.run_for(H)
            job = h.job()
            assert job.results["permanent_error"] >= 10  # tried every 5 minutes ...
            assert len(idp.token_requests) == 1  # ... but sent only once
            assert job.last_error is not None and job.last_error.code == "invalid_grant/50126"
            secret.write_text(PASSWORD)
            await h.run_for(timedelta(seconds=15))
            assert job.phase(clock.now()) is Phase.FRESH

        _run(config, clock, scenario)
        assert _grants(idp) == ["password", "password"]


def test_a_changed_username_never_spends_the_old_users_refresh_token(tmp_path: Path) -> None:
    clock = FakeClock()
    with users_idp(clock) as idp:
        idp.provider.users.passwords["bob@contoso.example"] = PASSWORD
        config = delegated_config(idp, tmp_path, password_credential())
        as_bob = delegated_config(
            idp, tmp_path, password_credential(username="bob@contoso.example")
        )

        async def scenario(h: Harness) -> None:
            await h.start()
            await h.run_for(H)
            await h.reload(validate_config(as_bob))
            await h.run_for(H)

        _run(config, clock, scenario)
        forms = [r.form for r in idp.token_requests]
        switched = next(
            i for i, form in enumerate(forms) if form.get("username") == "bob@contoso.example"
        )
        assert all(form["grant_type"] == "refresh_token" for form in forms[1:switched])
        assert forms[switched]["grant_type"] == "password"
        assert idp.provider.users.refused == []


def test_config_validation_of_delegated_identities(tmp_path: Path) -> None:
    with users_idp() as idp:
        no_key = delegated_config(idp, tmp_path, password_credential(), state_key=None)
        with pytest.raises(
            Exception,
            match=r"identities.user.credential: a password credential keeps the refresh tokens it is given, stored only sealed: set state_dir and state_key",
        ):
            validate_config(no_key)
        device = delegated_config(idp, tmp_path, {"type": "device_login"}, state_dir=None)
        with pytest.raises(ConfigError, match="a device_login credential keeps the refresh tokens"):
            validate_config(device)
        openid_only = delegated_config(
            idp, tmp_path, password_credential(), {"me": {"scopes": "openid offline_access"}}
        )
        with pytest.raises(
            ConfigError, match=r"tokens\.me\.scopes: name the API's delegated permissions"
        ):
            validate_config(openid_only)
        several = delegated_config(
            idp,
            tmp_path,
            password_credential(),
            {
                "me": {
                    "scopes": "https://graph.example/User.Read https://graph.example/Mail.Read offline_access"
                }
            },
        )
        assert isinstance(validate_config(several), Config)
        off = delegated_config(
            idp, tmp_path, password_credential(refresh_tokens=False), state_key=None
        )
        assert isinstance(validate_config(off), Config)
        app_only = delegated_config(
            idp,
            tmp_path,
            {"type": "client_secret", "secret": "s3cret"},
            {"me": {"scopes": "https://graph.example/User.Read"}},
        )
        with pytest.raises(
            Exception, match="app-only tokens from Entra ID v2 take exactly one scope"
        ):
            validate_config(app_only)


@pydantic_dataclasses.dataclass(
    config=ConfigDict(extra="forbid"), frozen=True, slots=True, kw_only=True
)
class ProbeOptions(SinkOptionsBase):
    type: Literal["probe"]
    state_dir: str

    def target(self) -> str:
        return "probe"


class ProbeSink:
    """Records, at each publish, which refresh token the state directory holds."""

    seen: ClassVar[list[tuple[str | None, str]]] = []
    idp: ClassVar[FakeIdp]

    def __init__(self, options: ProbeOptions, context: SinkContext) -> None:
        self.name = context.sink_name
        self._state = Path(options.state_dir)

    async def publish(self, token: Token) -> None:
        users = self.idp.provider.users
        ProbeSink.seen.append((stored_refresh_token(self._state, self.idp), users.issued[-1]))

    async def close(self) -> None:
        return None


def test_a_rotated_refresh_token_is_stored_before_its_access_token_is_published(
    tmp_path: Path,
) -> None:
    """The order that makes a kill -9 at any moment lose no refresh token."""
    clock = FakeClock()
    SINKS.register("probe", SinkType(ProbeOptions, ProbeSink))
    try:
        with users_idp(clock) as idp:
            ProbeSink.idp = idp
            config = delegated_config(idp, tmp_path, password_credential())
            probe = {"type": "probe", "state_dir": str(tmp_path / "state")}
            config["tokens"]["crm"]["sinks"] = [probe]

            async def scenario(h: Harness) -> None:
                await h.start()
                await h.run_for(6 * H)

            _run(config, clock, scenario)
    finally:
        SINKS.unregister("probe")
    assert len(ProbeSink.seen) >= 7
    assert all(stored == newest for stored, newest in ProbeSink.seen), ProbeSink.seen
