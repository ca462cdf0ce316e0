"""Delegated identities in tests: a fake Entra ID with users, and configs that sign them in.

The fake Entra ID is tokend's development identity provider (`tokend.devusers` serves the
password, refresh-token and device code grants) over real HTTP on loopback, with its own clock
so virtual time moves refresh-token and device-code lifetimes too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from tests.support.clock import FakeClock
from tests.support.idp import TENANT, FakeIdp, running_idp
from tokend.oauth.grants.signin import REFRESH_TOKENS_DIRECTORY
from tokend.seal import Sealer

USER = "alice@contoso.example"
PASSWORD = "CANARY-password-7d1c9a"
PUBLIC_CLIENT = "public-app"
STATE_KEY = "state-key-for-tests-0123456789abcdef"
RT_PREFIX = "CANARY-rt-"


@contextmanager
def users_idp(
    clock: FakeClock | None = None, lifetime: timedelta = timedelta(hours=1), **users: Any
) -> Iterator[FakeIdp]:
    """The fake Entra ID knowing `USER` (password `PASSWORD`) and the public client; its
    refresh tokens start with a canary prefix (opaque: no redaction pattern can hide them)."""
    options: dict[str, Any] = {"clock": clock} if clock is not None else {}
    with running_idp(lifetime=lifetime, **options) as idp:
        directory = idp.provider.users
        directory.passwords[USER] = PASSWORD
        directory.public_clients.add(PUBLIC_CLIENT)
        directory.refresh_token_prefix = RT_PREFIX
        for key, value in users.items():
            setattr(directory, key, value)
        yield idp


def password_credential(**extra: Any) -> dict[str, Any]:
    return {"type": "password", "username": USER, "password": {"env": "TEST_PASSWORD"}, **extra}


def delegated_config(
    idp: FakeIdp,
    tmp_path: Path,
    credential: dict[str, Any],
    tokens: dict[str, dict[str, Any]] | None = None,
    *,
    client_id: str = PUBLIC_CLIENT,
    **top: Any,
) -> dict[str, Any]:
    """A config document: identity `user` with `credential`, a token `crm` (v1) unless
    `tokens` says otherwise (each gets a file sink named after it), state sealed in tmp_path."""
    tokens = tokens or {"crm": {"resource": "https://crm.example"}}
    return {
        "identities": {
            "user": {
                "tenant": TENANT,
                "authority_host": idp.url,
                "allow_insecure_http": True,
                "client_id": client_id,
                "credential": credential,
            }
        },
        "tokens": {
            name: {
                "identity": "user",
                "sinks": [{"type": "file", "path": str(tmp_path / f"{name}.token")}],
                **spec,
            }
            for name, spec in tokens.items()
        },
        "state_dir": str(tmp_path / "state"),
        "state_key": {"env": "TEST_STATE_KEY"},
        "defaults": {"startup_spread": 0},
        "listen": None,
        **top,
    }


def stored_refresh_token(state_dir: Path, idp: FakeIdp, identity: str = "user") -> str | None:
    """Open the sealed refresh token file the way tokend does (same key, same binding)."""
    path = state_dir / REFRESH_TOKENS_DIRECTORY / f"{identity}.json"
    if not path.exists():
        return None
    document = json.loads(path.read_text())
    binding = f"tokend refresh token\n{identity}\n{idp.url}/{TENANT}\n{PUBLIC_CLIENT}"
    plain = Sealer(STATE_KEY).open(document["sealed"], binding)
    return str(json.loads(plain)["refresh_token"])


def env() -> dict[str, str]:
    return {"TEST_PASSWORD": PASSWORD, "TEST_STATE_KEY": STATE_KEY}
