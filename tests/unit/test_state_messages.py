"""What the state store says, exactly, for each stored file it will not use (the operator reads
these lines to learn why a restart asked the identity provider after all), and the round trip
of every field it stores."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.idp import FakeIdp
from tokend.engine.state import StateStore
from tokend.seal import Sealer
from tokend.sealed import state_dir_problem
from tokend.token import Token

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FP = "f" * 64


def _token(**changes: Any) -> Token:
    fields: dict[str, Any] = {
        "value": "v-0123456789",
        "token_type": "pop",
        "expires_at": NOW + timedelta(hours=1),
        "obtained_at": NOW - timedelta(minutes=1),
        "refresh_on": NOW + timedelta(minutes=30),
        "resource": "https://crm.example",
        "scopes": ("a", "b"),
    }
    return Token(**(fields | changes))


def _messages(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str, str | None]]:
    return [(r.levelno, r.getMessage(), getattr(r, "token", None)) for r in caplog.records]


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state", Sealer("a key"))


def test_every_field_survives_the_round_trip(store: StateStore) -> None:
    for token in (_token(), _token(refresh_on=None, resource=None, scopes=())):
        store.save("crm", FP, token)
        assert store.load("crm", FP, NOW) == token


def _rewrite(store: StateStore, change: dict[str, Any]) -> Path:
    """Store a plain (unsealed) document with `change` applied to it."""
    path = store.directory / "crm.json"
    StateStore(store.directory).save("crm", FP, _token())
    document = json.loads(path.read_text())
    for key, value in change.items():
        if key.startswith("token."):
            document["token"][key.removeprefix("token.")] = value
        else:
            document[key] = value
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize(
    ("change", "level", "message"),
    [
        ({"fingerprint": "0" * 64}, logging.INFO, "stored token discarded: its config changed"),
        (
            {"format": 7},
            logging.WARNING,
            "stored state {path} unreadable (ValueError); ignoring it",
        ),
        (
            {"token.expires_at": "2026-03-01T13:00:00"},
            logging.WARNING,
            "stored state {path} unreadable (ValueError); ignoring it",
        ),
        (
            {"token.obtained_at": "2026-03-01T11:00:00"},
            logging.WARNING,
            "stored state {path} unreadable (ValueError); ignoring it",
        ),
        (
            {"token.expires_at": (NOW + timedelta(hours=25)).isoformat()},
            logging.WARNING,
            "stored state {path} ignored: its times are implausible",
        ),
        (
            {"token.obtained_at": (NOW + timedelta(hours=25)).isoformat()},
            logging.WARNING,
            "stored state {path} ignored: its times are implausible",
        ),
    ],
)
def test_why_a_stored_token_is_not_used(
    store: StateStore,
    caplog: pytest.LogCaptureFixture,
    change: dict[str, Any],
    level: int,
    message: str,
) -> None:
    path = _rewrite(store, change)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tokend.state"):
        assert store.load("crm", FP, NOW) is None
    assert _messages(caplog) == [(level, message.format(path=path), "crm")]


def test_a_stored_token_with_its_refresh_hint_in_the_past_is_still_used(
    store: StateStore,
) -> None:
    """Only the expiry decides: a token with hours left is resumed whatever else it carries."""
    store.save("crm", FP, _token(refresh_on=NOW - timedelta(seconds=1)))
    loaded = store.load("crm", FP, NOW)
    assert loaded is not None and loaded.refresh_on == NOW - timedelta(seconds=1)


def test_a_file_others_can_read_is_ignored_with_the_reason(
    store: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.save("crm", FP, _token())
    path = store.directory / "crm.json"
    path.chmod(0o644)
    with caplog.at_level(logging.INFO, logger="tokend.state"):
        assert store.load("crm", FP, NOW) is None
    assert _messages(caplog) == [
        (
            logging.WARNING,
            f"stored state {path} ignored: mode 0644 lets other users have it read or written",
            "crm",
        )
    ]


def test_sealed_state_without_a_key_is_not_opened(
    store: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.save("crm", FP, _token())
    with caplog.at_level(logging.INFO, logger="tokend.state"):
        assert StateStore(store.directory).load("crm", FP, NOW) is None
    path = store.directory / "crm.json"
    assert _messages(caplog)[-1] == (
        logging.WARNING,
        f"stored state {path} does not open with this state_key (tampered, or sealed with "
        "another key); ignoring it",
        "crm",
    )


def test_unencrypted_state_is_said_once_per_directory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="tokend.state"):
        StateStore(tmp_path / "plain")
        StateStore(tmp_path / "plain")
    assert _messages(caplog) == [
        (
            logging.WARNING,
            f"state in {tmp_path / 'plain'} is stored unencrypted: set state_key (a secret "
            "reference) to seal it",
            None,
        )
    ]


def test_a_state_dir_that_cannot_be_created_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Root may write anywhere, so a parent not writable by this user is simulated."""
    wanted = tmp_path / "a" / "b"
    asked: list[tuple[str, int]] = []

    def access(path: object, mode: int) -> bool:
        asked.append((os.fspath(path), mode))  # type: ignore[arg-type]
        return False

    monkeypatch.setattr(os, "access", access)
    assert state_dir_problem(wanted) == (
        f"{wanted} cannot be created: {tmp_path} is not writable by this user"
    )
    assert asked == [(str(tmp_path), os.W_OK | os.X_OK)]
    monkeypatch.setattr(os, "access", lambda path, mode: True)
    assert state_dir_problem(wanted) is None


def test_the_fingerprint_covers_every_part_of_a_request_and_is_stable() -> None:
    """Stored tokens are matched by it: a changed endpoint, client or target must not match,
    and the same request must match across versions (or every upgrade re-requests all)."""
    from tests.support.requests import client_secret_request
    from tokend.engine.state import fingerprint
    from tokend.oauth import Endpoint

    def of(**changes: Any) -> str:
        fields: dict[str, Any] = {
            "endpoint": Endpoint(token_url="https://idp.example/token"),
            "client_id": "client",
            "resource": "https://crm.example",
            "scopes": (),
        }
        return fingerprint(client_secret_request(**(fields | changes)))

    base = of()
    assert (
        base
        == hashlib.sha256(b"https://idp.example/token\n\nclient\nhttps://crm.example\n").hexdigest()
    )
    variants = [
        of(endpoint=Endpoint(token_url="https://other.example/token")),
        of(endpoint=Endpoint(issuer="https://idp.example")),
        of(client_id="other"),
        of(resource=None),
        of(resource=None, scopes=("a", "b")),
        of(secret="another secret"),  # the secret is not part of it
    ]
    assert variants[-1] == base
    assert len({base, *variants[:-1]}) == 6
    assert (
        of(resource=None, scopes=("a", "b"))
        == hashlib.sha256(b"https://idp.example/token\n\nclient\n\na b").hexdigest()
    )
    assert (
        of(endpoint=Endpoint(issuer="https://idp.example"))
        == hashlib.sha256(b"\nhttps://idp.example\nclient\nhttps://crm.example\n").hexdigest()
    )


def test_a_resumed_token_is_published_logged_and_counts_as_the_last_success(
    idp: FakeIdp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.support.harness import harness
    from tests.unit.test_engine_parts import _config_for

    async def life(config: Any) -> Any:
        async with harness(config) as h:
            await h.start()
            await h.run_for(timedelta(minutes=1))
            return h.job()

    config = _config_for(tmp_path, idp)
    first = asyncio.run(life(config))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tokend.refresh"):
        second = asyncio.run(life(config))
    assert second.token == first.token
    assert second.last_success == first.token.obtained_at
    expires = first.token.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert (logging.INFO, f"resumed stored token: expires {expires}", "crm") in _messages(caplog)


def test_a_stored_token_is_used_until_it_expires_and_up_to_a_day_ahead(
    store: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Exactly a day ahead is still plausible (a 24 h token obtained just now); an expired
    stored token is dropped without a word (nothing is wrong with it)."""
    day = NOW + timedelta(hours=24)
    for token in (_token(expires_at=day), _token(expires_at=day, obtained_at=day)):
        store.save("crm", FP, token)
        assert store.load("crm", FP, NOW) == token
    store.save("crm", FP, _token(expires_at=NOW))
    with caplog.at_level(logging.DEBUG, logger="tokend.state"):
        assert store.load("crm", FP, NOW) is None
    assert caplog.records == []
    assert stat.S_IMODE((store.directory / "crm.json").stat().st_mode) == 0o600
