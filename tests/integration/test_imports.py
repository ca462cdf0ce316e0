"""Each command loads only what it uses: `tokend version`, `status`, `check` and `once` run in
init containers, `ExecStartPre=` and scripts, and pay every import on every run.

What a command loads is checked, not how long it takes (no timing in tests): the start-up
benchmark (`bench/startup.py`) measures the time.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import entra_identity, write_config
from tests.support.idp import CLIENT_SECRET, FakeIdp

SERVING = {"uvicorn", "starlette", "prometheus_client", "apscheduler", "httptools"}
REMOTE = {"httpx2", "httpcore", "cryptography", "jwt", "lightkube", "hvac"}

_SCRIPT = """
import sys
from tokend.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(" ".join(sorted({name.split(".")[0] for name in sys.modules})))
"""


def loaded_by(*args: str, env: dict[str, str] | None = None) -> set[str]:
    """Top-level packages in `sys.modules` after the command `tokend args...` has run."""
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr
    return set(lines[-1].split())


@pytest.fixture
def config(idp: FakeIdp, tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "c.yaml",
        {
            "identities": {"app": entra_identity(idp, CLIENT_SECRET)},
            "tokens": {
                "crm": {
                    "identity": "app",
                    "resource": "https://crm.example",
                    "sinks": [{"type": "file", "path": str(tmp_path / "crm.token")}],
                }
            },
            "listen": None,
        },
    )


def test_version_loads_no_library() -> None:
    assert loaded_by("version") & (SERVING | REMOTE | {"pydantic", "yaml"}) == set()


def test_status_loads_neither_the_config_model_nor_an_http_client(config: Path) -> None:
    assert loaded_by("status", "-c", str(config)) & (SERVING | REMOTE | {"pydantic"}) == set()


def test_check_loads_the_config_model_only(config: Path) -> None:
    loaded = loaded_by("check", "-c", str(config))
    assert "pydantic" in loaded
    assert loaded & (SERVING | REMOTE) == set()


def test_once_loads_no_listener_metrics_or_scheduler(config: Path, tmp_path: Path) -> None:
    loaded = loaded_by("once", "-c", str(config))
    assert (tmp_path / "crm.token").exists()  # it did obtain and publish the token
    assert "httpx2" in loaded
    assert loaded & SERVING == set()
    assert loaded & {"lightkube", "hvac"} == set()
