"""Config messages the main table leaves open: the list of known identities, a key too far from
any known one for a hint, scopes written as one string."""

from __future__ import annotations

import pytest

from tests.unit.test_config import _with
from tokend.config import ConfigError
from tokend.configfile import parse_config


def _lines(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, label="config.yaml")
    return caught.value.lines


def test_every_known_identity_is_listed() -> None:
    text = _with({"identity: crm-app": "identity: nope"}).replace(
        "identities:\n",
        "identities:\n  other:\n    tenant: t.example\n    client_id: c\n"
        "    credential: {type: client_secret, secret: {env: X}}\n",
    )
    assert _lines(text) == [
        "config.yaml: tokens.crm.identity: unknown identity 'nope' (known: other, crm-app)"
    ]


def test_no_hint_when_no_key_is_close() -> None:
    text = _with({"tokens:": "defaults: {backoff: {mni: 1s}}\ntokens:"})
    assert _lines(text) == ["config.yaml: defaults.backoff.mni: unknown key"]


def test_scopes_may_be_one_string() -> None:
    text = _with(
        {
            "resource: https://contoso.crm.dynamics.com": "scopes: https://graph.microsoft.com/.default"
        }
    )
    config = parse_config(text, label="config.yaml").config
    assert config.tokens["crm"].scopes == ["https://graph.microsoft.com/.default"]
