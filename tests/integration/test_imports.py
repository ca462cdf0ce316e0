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
from tests.support.servers import free_port

SERVING = {"uvicorn", "starlette", "prometheus_client", "apscheduler", "httptools"}
REMOTE = {"httpx2", "httpcore", "cryptography", "jwt", "lightkube", "hvac"}

_RUN_SCRIPT = """
import os, pathlib, signal, sys
token = pathlib.Path(sys.argv[1])
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name in ("uvicorn", "starlette") and not getattr(self, "seen", False):
            self.seen = True
            print(f"web stack loaded, token published: {token.exists()}", flush=True)
            os.kill(os.getpid(), signal.SIGTERM)
        return None
sys.meta_path.insert(0, Watch())
from tokend.cli import main
sys.exit(main(["run", "-c", sys.argv[2]]))
"""

_SCRIPT = """
import sys
from tokend.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(" ".join(sorted(sys.modules)))
"""


def loaded_by(*args: str, env: dict[str, str] | None = None) -> set[str]:
    """Top-level packages in `sys.modules` after the command `tokend args...` has run."""
    return {name.split(".")[0] for name in modules_after(*args, env=env)}


def modules_after(*args: str, env: dict[str, str] | None = None) -> set[str]:
    """Every module in `sys.modules` after the command `tokend args...` has run."""
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


_VALIDATE_SCRIPT = """
import sys
from pathlib import Path
from tokend.configfile import load_config
from tokend.errors import ConfigError
try:
    load_config(Path(sys.argv[1]))
    print("valid")
except ConfigError as exc:
    print(str(exc).replace(chr(10), " | "))
print(" ".join(sorted(name for name in sys.modules if name.startswith("tokend."))))
"""

OTHER_KINDS = (
    "tokend.vault",
    "tokend.kube",
    "tokend.sinks.vault",
    "tokend.sinks.kubernetes",
    "tokend.oauth.grants.certificate",
    "tokend.oauth.grants.delegated",
    "tokend.oauth.grants.device_login",
    "tokend.oauth.grants.federated",
    "tokend.oauth.grants.managed_identity",
    "tokend.oauth.grants.password",
    "tokend.oauth.grants.signin",
    "tokend.oauth.jwks",
    "tokend.oauth.verify",
)


def validated(config: Path) -> tuple[str, set[str]]:
    """What validating `config` says, and the tokend modules loaded by then."""
    result = subprocess.run(
        [sys.executable, "-c", _VALIDATE_SCRIPT, str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2, result.stderr
    return lines[0], set(lines[1].split())


def other_kinds(modules: set[str]) -> set[str]:
    return {name for name in modules if _under(name, OTHER_KINDS)}


def _under(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == package or name.startswith(f"{package}.") for package in packages)


def test_validating_loads_only_the_kinds_the_config_names(config: Path) -> None:
    """A client secret and a file sink: no Vault, Kubernetes, certificate or delegated-grant
    module is imported (nor their options models built), nor the `verify:` self-check's key
    cache."""
    outcome, modules = validated(config)
    assert outcome == "valid"
    assert {"tokend.oauth.grants.client_secret", "tokend.sinks.file"} <= modules
    assert other_kinds(modules) == set()


def test_an_unknown_kind_is_listed_without_loading_the_others(config: Path) -> None:
    config.write_text(config.read_text().replace("type: file", "type: vaul"))
    outcome, modules = validated(config)
    assert outcome.endswith("unknown type 'vaul' (known: file, kubernetes, vault)"), outcome
    assert other_kinds(modules) == set()


def test_version_loads_no_library() -> None:
    assert loaded_by("version") & (SERVING | REMOTE | {"pydantic", "yaml"}) == set()


def test_status_loads_neither_the_config_model_nor_an_http_client(config: Path) -> None:
    assert loaded_by("status", "-c", str(config)) & (SERVING | REMOTE | {"pydantic"}) == set()


def test_check_loads_the_config_model_only(config: Path) -> None:
    """Nor an event loop (asyncio and what only it needs, ~30 ms of `-X importtime`), nor,
    without an `endpoint:` block, what checks one."""
    modules = modules_after("check", "-c", str(config))
    loaded = {name.split(".")[0] for name in modules}
    assert "pydantic" in loaded
    assert loaded & (SERVING | REMOTE | {"asyncio"}) == set()
    assert {"tokend.endpoint.catalog", "tokend.endpoint.checks"} & modules == set()


def test_once_loads_no_listener_metrics_or_scheduler(config: Path, tmp_path: Path) -> None:
    """Nor the modules of kinds the config does not name: no `verify:` (its key cache), no
    `state_key` (the sign-in credentials' refresh-token store)."""
    modules = modules_after("once", "-c", str(config))
    loaded = {name.split(".")[0] for name in modules}
    assert (tmp_path / "crm.token").exists()  # it did obtain and publish the token
    assert "httpx2" in loaded
    assert loaded & SERVING == set()
    assert loaded & {"lightkube", "hvac"} == set()
    assert other_kinds(modules) == set()


def test_run_publishes_its_first_tokens_before_loading_the_web_stack(
    config: Path, tmp_path: Path
) -> None:
    """The listener's socket is bound at start, but uvicorn and starlette load once the first
    acquisitions are done: tens of milliseconds the first token does not wait for."""
    document = config.read_text().replace("listen: null", f"listen: 127.0.0.1:{free_port()}")
    config.write_text(document)
    result = subprocess.run(
        [sys.executable, "-c", _RUN_SCRIPT, str(tmp_path / "crm.token"), str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stdout.splitlines()[:1] == ["web stack loaded, token published: True"], (
        result.stderr
    )
    assert result.returncode == 0, result.stderr
