"""A real OpenBao dev server shared by the Vault tests, and per-test servers with storage."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.openbao import Bao, PersistentServer, dev_server, persistent_server


@pytest.fixture(scope="session")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bao]:
    with dev_server(tmp_path_factory.mktemp("bao")) as server:
        root = server.client()
        root.sys.enable_secrets_engine("kv", path="kv1", options={"version": "1"})
        root.sys.enable_auth_method("approle")
        yield server


@pytest.fixture
def persistent(tmp_path: Path) -> Iterator[PersistentServer]:
    with persistent_server(tmp_path / "bao") as server:
        server.client().sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
        yield server


@pytest.fixture
def kvpath() -> str:
    """A secret path of this test's own."""
    return f"tokend/{uuid.uuid4().hex[:10]}/crm"
