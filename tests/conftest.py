"""Shared fixtures: a fake Entra ID over real HTTP on loopback, and config writing helpers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import settings

from tests.support.idp import CLIENT_ID, TENANT, FakeIdp, running_idp
from tokend.redaction import redactor

# Property tests check correctness, not speed: on a loaded 2-core CI machine an example can take
# longer than hypothesis's default 200 ms deadline, which would fail a test that is right.
settings.register_profile("tokend", deadline=None)
settings.load_profile("tokend")


@pytest.fixture(autouse=True)
def _own_redactor(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process's redactor, empty for each test: every error's text is masked when it is
    made, and a secret another test registered (one that is a plain word, `secret`) would mask
    words in the texts a test compares."""
    monkeypatch.setattr(redactor, "_secrets", set())
    monkeypatch.setattr(redactor, "_pattern", None)
    monkeypatch.setattr(redactor, "_edges", None)
    monkeypatch.setattr(redactor, "_tokens", {})


@pytest.fixture(scope="session")
def _idp_server() -> Iterator[FakeIdp]:
    with running_idp() as idp:
        yield idp


@pytest.fixture
def idp(_idp_server: FakeIdp) -> Iterator[FakeIdp]:
    """The fake Entra ID, with no queued faults and no recorded requests, 1-hour tokens."""
    _idp_server.reset()
    yield _idp_server
    _idp_server.reset()


def entra_identity(idp: FakeIdp, secret: object, **extra: object) -> dict[str, object]:
    return {
        "tenant": TENANT,
        "authority_host": idp.url,
        "allow_insecure_http": True,
        "client_id": CLIENT_ID,
        "credential": {"type": "client_secret", "secret": secret, **extra},
    }


def write_config(path: Path, document: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path
