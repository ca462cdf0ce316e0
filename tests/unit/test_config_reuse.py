"""Loading a config file again with nothing changed reuses what it gave (a SIGHUP reload of an
unchanged 100,000-token file must not parse it again); any change to the bytes, the environment
or the working directory loads it afresh."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

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
