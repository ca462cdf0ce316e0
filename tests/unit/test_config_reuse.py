"""Loading a config file again with nothing changed reuses what it gave (a SIGHUP reload of an
unchanged 100,000-token file must not parse it again); any change to the bytes, the environment
or the working directory loads it afresh."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tests.support.fifo import within
from tokend import configfile
from tokend.configfile import load_config
from tokend.errors import ConfigError

DOCUMENT = {
    "identities": {
        "app": {
            "tenant": "contoso.onmicrosoft.com",
            "client_id": "c",
            "credential": {"type": "client_secret", "secret": {"env": "APP_SECRET"}},
        }
    },
    "tokens": {"crm": {"identity": "app", "resource": "https://crm.example", "sinks": []}},
}


def _write(path: Path, sink_dir: Path) -> Path:
    document = DOCUMENT | {
        "tokens": {
            "crm": {
                "identity": "app",
                "resource": "https://crm.example",
                "sinks": [{"type": "file", "path": str(sink_dir / "crm.token")}],
            }
        }
    }
    path.write_text(yaml.safe_dump(document))
    return path


def test_unchanged_inputs_reuse_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "config.yaml", tmp_path)
    first = load_config(path)
    assert load_config(path) is first
    monkeypatch.setenv("TOKEND_TEST_CHANGE", "1")  # the environment may fill in defaults
    second = load_config(path)
    assert second is not first and second.config == first.config
    path.write_text(path.read_text().replace("crm.example", "erp.example"))
    third = load_config(path)
    assert third.config.tokens["crm"].resource == "https://erp.example"


def test_a_file_gone_since_the_last_load_is_an_error_not_the_old_config(tmp_path: Path) -> None:
    path = _write(tmp_path / "config.yaml", tmp_path)
    load_config(path)
    path.unlink()
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert raised.value.lines == [f"{path}: config file not found"]


def test_a_file_replaced_by_a_fifo_is_an_error_not_a_hang(tmp_path: Path) -> None:
    """A reload reads the file to see whether it changed: a FIFO there must not block it."""
    path = _write(tmp_path / "config.yaml", tmp_path)
    load_config(path)
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(ConfigError) as raised:
        within(10, lambda: load_config(path), path)
    assert raised.value.lines == [f"{path}: not a regular file (a FIFO)"]


def test_a_file_grown_past_the_limit_since_the_last_load_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path / "config.yaml", tmp_path)
    load_config(path)
    monkeypatch.setattr(configfile, "MAX_CONFIG_SIZE", path.stat().st_size - 1)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert raised.value.lines == [f"{path}: larger than {path.stat().st_size - 1} bytes"]
