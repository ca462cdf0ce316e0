"""`tokend once`, `check` and `version` as real processes against the fake Entra ID."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import entra_identity, write_config
from tests.support import idp as faults
from tests.support.idp import CLIENT_SECRET, FakeIdp
from tests.support.processes import start_tokend, tokend, wait_for
from tokend import __version__


def _document(idp: FakeIdp, tmp_path: Path, secret: object = None) -> dict[str, object]:
    return {
        "identities": {"app": entra_identity(idp, secret or {"env": "APP_SECRET"})},
        "tokens": {
            "crm": {
                "identity": "app",
                "resource": "https://crm.example",
                "sinks": [
                    {
                        "type": "file",
                        "path": str(tmp_path / "out" / "crm.token"),
                        "create_dirs": True,
                    }
                ],
            },
            "graph": {
                "identity": "app",
                "scopes": ["https://graph.example/.default"],
                "sinks": [{"type": "file", "path": str(tmp_path / "graph.json"), "format": "json"}],
            },
        },
        "listen": None,
    }


def test_version() -> None:
    assert tokend("version").stdout == f"tokend {__version__}\n"
    module = subprocess.run(
        [sys.executable, "-m", "tokend", "version"], capture_output=True, text=True, check=True
    )
    assert module.stdout == f"tokend {__version__}\n"


def test_once_publishes_every_token(idp: FakeIdp, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.yaml", _document(idp, tmp_path))
    result = tokend("once", "-c", str(config), env={"APP_SECRET": CLIENT_SECRET})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "crm.token").read_text().startswith("eyJ")
    assert json.loads((tmp_path / "graph.json").read_text())["token_type"] == "Bearer"
    assert "once: 2 of 2 tokens published to all their sinks" in result.stderr
    assert len(idp.token_requests) == 2


def test_once_exits_1_when_any_token_fails(idp: FakeIdp, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.yaml", _document(idp, tmp_path))
    idp.fail(faults.entra_error(400, "invalid_resource", 500011))
    result = tokend("once", "-c", str(config), env={"APP_SECRET": CLIENT_SECRET})
    assert result.returncode == 1
    assert "once: 1 of 2 tokens published" in result.stderr
    assert "invalid_resource (AADSTS500011)" in result.stderr
    assert "next try" not in result.stderr  # once makes no further attempt: none is announced
    assert "Traceback" not in result.stderr


def test_once_retries_what_may_pass_until_its_timeout(idp: FakeIdp, tmp_path: Path) -> None:
    """One IdP blip must not fail a pod start: transient failures are retried with backoff."""
    document = {**_document(idp, tmp_path), "defaults": {"backoff": {"min": "100ms"}}}
    config = write_config(tmp_path / "config.yaml", document)
    idp.fail(faults.html(502), faults.too_many_requests("0"))
    result = tokend("once", "-c", str(config), env={"APP_SECRET": CLIENT_SECRET})
    assert result.returncode == 0, result.stderr
    assert "once: 2 of 2 tokens published to all their sinks" in result.stderr
    assert len(idp.token_requests) == 4  # one token: 502, 429, then success; the other at once

    idp.reset()
    idp.policy = lambda request: faults.html(503)
    given_up = tokend(
        "once", "-c", str(config), "--timeout", "1s", env={"APP_SECRET": CLIENT_SECRET}
    )
    assert given_up.returncode == 1
    assert "once: 0 of 2 tokens published" in given_up.stderr
    assert 4 <= len(idp.token_requests) <= 20  # retried, with backoff, then given up


def test_run_and_once_refuse_a_config_that_check_rejects(idp: FakeIdp, tmp_path: Path) -> None:
    """A secret reference that does not resolve is a config problem: exit 2 at once, not a
    retry every 5 minutes for something only a restart can fix."""
    config = write_config(tmp_path / "config.yaml", _document(idp, tmp_path))
    for command in ("run", "once", "check"):
        result = tokend(command, "-c", str(config), env={"APP_SECRET": ""})
        assert result.returncode == 2, (command, result.stderr)
        assert (
            f"{config}: identities.app.credential.secret: environment variable APP_SECRET is empty"
            in result.stderr
        )
        assert idp.token_requests == []


def test_config_from_environment_variable(idp: FakeIdp, tmp_path: Path) -> None:
    config = write_config(tmp_path / "elsewhere.yaml", _document(idp, tmp_path))
    result = tokend("check", env={"TOKEND_CONFIG": str(config), "APP_SECRET": "x"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{config}: OK: 1 identities, 2 tokens, 2 sinks")


def test_check_prints_one_line_per_problem_and_exits_2(idp: FakeIdp, tmp_path: Path) -> None:
    document = _document(idp, tmp_path)
    document["tokens"]["crm"]["identity"] = "ap"  # type: ignore[index]
    document["tokens"]["graph"]["sinks"][0]["mode"] = 600  # type: ignore[index]
    document["tokens"]["graph"]["refresh_treshold"] = "5m"  # type: ignore[index]
    config = write_config(tmp_path / "config.yaml", document)
    result = tokend("check", "-c", str(config))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f'{config}: tokens.graph.sinks.0.mode: write the mode as a quoted octal string, e.g. mode: "0600"',
        f"{config}: tokens.graph.refresh_treshold: unknown key (did you mean 'refresh_threshold'?)",
    ]
    document["tokens"]["graph"]["sinks"][0]["mode"] = "0600"  # type: ignore[index]
    del document["tokens"]["graph"]["refresh_treshold"]  # type: ignore[attr-defined]
    write_config(config, document)
    result = tokend("check", "-c", str(config))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{config}: tokens.crm.identity: unknown identity 'ap' (known: app) (did you mean 'app'?)"
    ]


def test_check_resolves_secrets_and_sink_targets(idp: FakeIdp, tmp_path: Path) -> None:
    document = _document(idp, tmp_path, secret={"file": str(tmp_path / "no-such-secret")})
    document["tokens"]["graph"]["sinks"][0]["path"] = str(tmp_path / "absent" / "g.json")  # type: ignore[index]
    config = write_config(tmp_path / "config.yaml", document)
    result = tokend("check", "-c", str(config))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{config}: identities.app.credential.secret: secret file {tmp_path}/no-such-secret does not exist",
        f"{config}: tokens.graph.sinks.0: directory {tmp_path}/absent does not exist (create it, "
        "or set create_dirs: true)",
    ]


def test_missing_config_is_a_clear_error(tmp_path: Path) -> None:
    result = tokend("run", "-c", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert result.stderr == f"{tmp_path}/absent.yaml: config file not found\n"


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda path: os.mkfifo(path) or path, "a FIFO"),
        (lambda path: Path("/dev/zero"), "a character device"),
        (lambda path: path.mkdir() or path, "a directory"),
    ],
)
def test_a_config_that_is_not_a_regular_file_is_refused_at_once(
    tmp_path: Path, make: Callable[[Path], Path], kind: str
) -> None:
    """A FIFO must not hang `check` (nor a `status` looking for `listen:`); /dev/zero must not be
    read until memory runs out. The timeout and memory limit make a missing fix fail, not stall."""
    config = make(tmp_path / "config.yaml")
    for command in ("check", "status"):
        result = tokend(command, "-c", str(config), timeout=20, memory_limit=2 << 30)
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr == f"{config}: not a regular file ({kind})\n"


def test_a_secret_that_is_not_utf8_is_refused_by_name(idp: FakeIdp, tmp_path: Path) -> None:
    """Bytes that are not UTF-8 in the environment crashed check, once and run (in the
    redactor); now a config error naming the variable, its value never echoed."""
    config = write_config(tmp_path / "config.yaml", _document(idp, tmp_path))
    value = os.fsdecode(b"CANARY\xff\xfe-4b1d")
    for command in ("check", "once", "run"):
        result = tokend(command, "-c", str(config), env={"APP_SECRET": value}, timeout=20)
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.splitlines() == [
            f"{config}: identities.app.credential.secret: environment variable APP_SECRET is "
            "not valid UTF-8"
        ]
        assert idp.token_requests == []


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda path: os.mkfifo(path) or path, "a FIFO"),
        (lambda path: "/dev/zero", "a character device"),
    ],
)
def test_a_secret_file_that_is_not_a_regular_file_is_refused_at_once(
    idp: FakeIdp, tmp_path: Path, make: Callable[[Path], Path | str], kind: str
) -> None:
    """A FIFO hung check; /dev/zero was read until memory ran out. The timeout and memory limit
    make a missing fix fail, not stall."""
    secret = make(tmp_path / "secret")
    config = write_config(tmp_path / "config.yaml", _document(idp, tmp_path, {"file": str(secret)}))
    result = tokend("check", "-c", str(config), timeout=20, memory_limit=2 << 30)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"{config}: identities.app.credential.secret: secret file {secret} is not a regular file "
        f"({kind})"
    ]


def test_an_owner_out_of_range_is_a_config_error_not_a_traceback_at_each_write(
    idp: FakeIdp, tmp_path: Path
) -> None:
    document = _document(idp, tmp_path)
    document["tokens"]["crm"]["sinks"][0]["owner"] = 10**21  # type: ignore[index]
    config = write_config(tmp_path / "config.yaml", document)
    for args in (["check"], ["once", "--timeout", "2s"]):
        result = tokend(*args, "-c", str(config), env={"APP_SECRET": CLIENT_SECRET})
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.splitlines() == [
            f"{config}: tokens.crm.sinks.0.owner: expected a user name or a user ID from 0 to "
            "4294967294, not 1000000000000000000000"
        ]


def test_an_empty_state_dir_is_a_config_error(idp: FakeIdp, tmp_path: Path) -> None:
    """`state_dir: ""` passed check, then no state was ever saved (as root: temp files in /)."""
    document = {**_document(idp, tmp_path), "state_dir": "", "endpoint": {"env_file": ""}}
    config = write_config(tmp_path / "config.yaml", document)
    result = tokend("check", "-c", str(config), env={"APP_SECRET": CLIENT_SECRET})
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"{config}: state_dir: must not be empty: give a path",
        f"{config}: endpoint.env_file: must not be empty: give a path",
    ]


def test_tokend_dev_runs_its_identity_provider_and_publishes(tmp_path: Path) -> None:
    """The README's first command: the built-in identity provider on loopback, three tokens
    under ./var/tokens, the listener answering, a clean stop."""
    process = start_tokend("dev", cwd=tmp_path)
    try:
        tokens = tmp_path / "var" / "tokens"
        names = ("crm.token", "graph.json", "api.env")
        wait_for(lambda: all((tokens / name).exists() for name in names), what="dev tokens")
        assert json.loads((tokens / "graph.json").read_text())["access_token"]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    assert process.stdout is not None
    announced = process.stdout.read()
    assert "tokend dev is running. Ctrl-C stops it." in announced
    assert f"tokens             {tokens}/" in announced
