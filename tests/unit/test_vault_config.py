"""The `vault:` block, Vault sink options and `{vault: ...}` references: one line per problem,
naming the key; and what the Vault modules show of themselves (never a secret)."""

from __future__ import annotations

from typing import Any

import hvac.exceptions as hx
import pytest
import requests.exceptions as rx
import yaml

from tokend.configfile import parse_config
from tokend.errors import ConfigError
from tokend.resources import Resources
from tokend.secrets import SecretError
from tokend.sinks.vault import VaultSinkOptions
from tokend.vault import VAULT, VaultOptions, VaultSession
from tokend.vault.errors import Problem, classify
from tokend.vault.http import HttpsPort, RedirectRefused
from tokend.vault.secret import VaultSecret

BASE: dict[str, Any] = {
    "identities": {
        "app": {
            "token_endpoint": "https://idp.example/token",
            "client_id": "c",
            "credential": {"type": "client_secret", "secret": {"env": "APP_SECRET"}},
        }
    },
    "tokens": {
        "crm": {"identity": "app", "scopes": ["crm"], "sinks": [{"type": "vault", "path": "a/b"}]}
    },
    "vault": {"address": "https://vault.example:8200"},
}


def lines_for(document: dict[str, Any]) -> list[str]:
    try:
        parse_config(yaml.safe_dump(document), label="config.yaml")
    except ConfigError as exc:
        return exc.lines
    return []


def with_vault(**vault: Any) -> dict[str, Any]:
    return {**BASE, "vault": vault}


def with_sink(**sink: Any) -> dict[str, Any]:
    tokens = {"crm": {**BASE["tokens"]["crm"], "sinks": [{"type": "vault", **sink}]}}
    return {**BASE, "tokens": tokens}


CASES = [
    (BASE, []),
    (
        with_vault(address="http://vault.example:8200"),
        [
            "config.yaml: vault.address: 'http://vault.example:8200' uses plain http; https is "
            "required except for loopback addresses"
        ],
    ),
    (
        with_vault(address="http://127.0.0.1:8200"),
        [
            "config.yaml: vault.address: 'http://127.0.0.1:8200' uses plain http; set "
            "allow_insecure_http: true to allow it on loopback"
        ],
    ),
    (with_vault(address="http://127.0.0.1:8200", allow_insecure_http=True), []),
    (
        with_vault(address="https://v.example", auth={"method": "ldap"}),
        [
            "config.yaml: vault.auth: unknown method 'ldap' (known: approle, kubernetes, token)",
        ],
    ),
    (
        with_vault(address="https://v.example", auth={"role_id": "x"}),
        ["config.yaml: vault.auth: method is missing (known: approle, kubernetes, token)"],
    ),
    (
        with_vault(address="https://v.example", auth={"method": "approle"}),
        ["config.yaml: vault.auth.role_id: required key is missing"],
    ),
    (
        with_vault(
            address="https://v.example",
            auth={"method": "approle", "role_id": {"vault": "secret/data/x#id"}},
        ),
        [
            "config.yaml: vault.auth.role_id: a secret tokend needs to log in to Vault cannot "
            "come from Vault itself"
        ],
    ),
    (
        with_vault(address="https://v.example", auth={"method": "kubernetes"}),
        ["config.yaml: vault.auth.role: required key is missing"],
    ),
    (
        with_vault(address="https://v.example", timeout="0s"),
        ["config.yaml: vault.timeout: must be longer than zero"],
    ),
    (
        with_vault(address="https://v.example", adress="x"),
        ["config.yaml: vault.adress: unknown key (did you mean 'address'?)"],
    ),
    (
        with_sink(path="a/b", kv_version=1, max_versions=3),
        ["config.yaml: tokens.crm.sinks.0: max_versions applies only to kv_version: 2"],
    ),
    (
        with_sink(path="data/a/b"),
        [
            "config.yaml: tokens.crm.sinks.0: path is inside the mount, without data/ or "
            "metadata/ (e.g. a/b)"
        ],
    ),
    (
        with_sink(path="a/b", fields=["access_token"]),
        [
            "config.yaml: tokens.crm.sinks.0.fields: must include expires_on (consumers need the "
            "token; tokend compares expires_on so it never replaces a newer token)"
        ],
    ),
    (
        with_sink(path="a/b", fields=["access_token", "expires_on", "colour"]),
        [
            "config.yaml: tokens.crm.sinks.0.fields.2: must be one of 'access_token', "
            "'token_type', 'expires_on', 'expires_at', 'resource', 'scopes' or 'refreshed_at'"
        ],
    ),
    (with_sink(), ["config.yaml: tokens.crm.sinks.0.path: required key is missing"]),
    (
        {**BASE, "vault": None},
        [
            "config.yaml: tokens.crm.sinks.0: a vault sink needs a top-level vault: block "
            "(address, auth)"
        ],
    ),
]


@pytest.mark.parametrize(("document", "expected"), CASES)
def test_config_lines(document: dict[str, Any], expected: list[str]) -> None:
    assert lines_for(document) == expected


def test_vault_secret_without_a_vault_block() -> None:
    identity = {**BASE["identities"]["app"]}
    identity["credential"] = {"type": "client_secret", "secret": {"vault": "kv/app#secret"}}
    tokens = {"crm": {**BASE["tokens"]["crm"], "sinks": [{"type": "file", "path": "/tmp/x"}]}}
    document = {"identities": {"app": identity}, "tokens": tokens}
    assert lines_for(document) == [
        "config.yaml: identities.app.credential.secret: {vault: ...} needs a top-level vault: "
        "block (address, auth)"
    ]


def test_defaults_from_the_vault_cli_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_ADDR", "https://from-env.example:8200/")
    monkeypatch.setenv("VAULT_NAMESPACE", "team-a/")
    monkeypatch.setenv("VAULT_CACERT", "/etc/ssl/vault-ca.pem")
    options = VaultOptions()
    assert options.address == "https://from-env.example:8200"
    assert options.namespace == "team-a"
    assert str(options.ca_bundle) == "/etc/ssl/vault-ca.pem"
    assert options.auth.method == "token"
    for name in ("VAULT_NAMESPACE", "VAULT_CACERT"):
        monkeypatch.delenv(name)
    assert (VaultOptions().namespace, VaultOptions().ca_bundle) == (None, None)
    monkeypatch.delenv("VAULT_ADDR")
    assert lines_for({**BASE, "vault": {}}) == [
        "config.yaml: vault.address: required: set it here or in the environment as VAULT_ADDR"
    ]


def test_two_sinks_may_not_share_a_secret() -> None:
    sinks = [{"type": "vault", "path": "a/b"}, {"type": "vault", "path": "/a/b/", "name": "x"}]
    document = {**BASE, "tokens": {"crm": {**BASE["tokens"]["crm"], "sinks": sinks}}}
    assert lines_for(document) == [
        "config.yaml: tokens.crm.sinks.1: vault secret/a/b is also written by tokens.crm.sinks.0"
    ]


def test_paths_and_defaults() -> None:
    v2 = VaultSinkOptions(type="vault", mount="/team/kv/", path="/apps/crm/")
    assert (v2.data_path, v2.metadata_path) == (
        "team/kv/data/apps/crm",
        "team/kv/metadata/apps/crm",
    )
    assert v2.versions_kept == 5  # the default when max_versions is not given
    assert v2.fields[:3] == ["access_token", "token_type", "expires_on"]
    v1 = VaultSinkOptions(type="vault", mount="kv", path="apps/crm", kv_version=1)
    assert v1.data_path == "kv/apps/crm"


def test_nothing_shows_a_secret() -> None:
    options = VaultOptions.model_validate(
        {
            "address": "https://v.example",
            "auth": {"method": "approle", "role_id": "CANARY-role", "secret_id": "CANARY-sid"},
        }
    )
    session = VaultSession(options)
    try:
        for shown in (repr(options), str(options), repr(session)):
            assert "CANARY" not in shown
    finally:
        session.close_sync()


def test_vault_references_share_the_process_session() -> None:
    """`{vault: ...}` references read through the `vault` shared resource: one session per
    process (one login), made from the config's vault: block; without it they say so."""
    document = {**BASE}
    identity = {**BASE["identities"]["app"]}
    identity["credential"] = {"type": "client_secret", "secret": {"vault": "kv/app#secret"}}
    document["identities"] = {"app": identity}
    config = parse_config(yaml.safe_dump(document), label="c").config
    secret = config.identities["app"].credential.secret  # type: ignore[attr-defined]
    assert isinstance(secret, VaultSecret)
    resources = Resources(config.sections)
    try:
        session = resources.get(VAULT)
        assert isinstance(session, VaultSession)
        assert session.options == config.sections["vault"]
        assert resources.get(VAULT) is session
    finally:
        resources.close_sync()
    with pytest.raises(SecretError, match=r"Vault secret kv/app#secret: no vault: block"):
        secret.resolve()


def _vault(cls: type[hx.VaultError], *errors: str, **json: Any) -> hx.VaultError:
    return cls(errors=list(errors) or None, json=json or None)


@pytest.mark.parametrize(
    ("exc", "problem", "message"),
    [
        (
            _vault(hx.Forbidden, "1 error occurred:\n\t* permission denied\n\n"),
            Problem.DENIED,
            "permission denied: the Vault policy of tokend's token does not allow it to write "
            "this secret (check the policy)",
        ),
        (_vault(hx.VaultDown, "Vault is sealed"), Problem.SEALED, "Vault is sealed (unseal it)"),
        (
            _vault(hx.InvalidPath, 'no handler for route "x/data/y". route entry not found.'),
            Problem.NO_MOUNT,
            "no secrets engine is mounted at this path (check the mount)",
        ),
        (_vault(hx.InvalidPath), Problem.NOT_FOUND, "nothing is stored at this path"),
        (
            _vault(hx.InvalidRequest, "check-and-set parameter did not match the current version"),
            Problem.CONFLICT,
            "changed by another writer meanwhile",
        ),
        (
            _vault(hx.InternalServerError, "boom eyJhbGciOi.eyJzdWIiOiIx.c2ln"),
            Problem.UNAVAILABLE,
            "Vault answered with HTTP 500: boom ***",
        ),
        (rx.ConnectTimeout(), Problem.UNAVAILABLE, "no answer from Vault within 10s"),
        (
            rx.ConnectionError(),
            Problem.UNAVAILABLE,
            "cannot connect to Vault (connection refused, reset or name not resolved)",
        ),
        (
            rx.SSLError(),
            Problem.UNAVAILABLE,
            "TLS handshake failed (check vault.ca_bundle and the server's certificate)",
        ),
        (
            _vault(
                hx.InvalidRequest,
                "Upgrading from non-versioned to versioned data. This backend will be unavailable "
                "for a brief period and will resume service shortly.",
            ),
            Problem.UNAVAILABLE,
            "the KV mount is upgrading to version 2 (for a moment)",
        ),
        (
            RedirectRefused("http://203.0.113.1"),
            Problem.ADDRESS,
            "Vault answered with a redirect to http://203.0.113.1, which tokend does not follow "
            "(set vault.address to where Vault answers itself)",
        ),
        (
            HttpsPort("plain http to an https port"),
            Problem.ADDRESS,
            "this address speaks HTTPS: write vault.address with https://",
        ),
        (KeyError("x"), Problem.INTERNAL, "unexpected KeyError"),
    ],
)
def test_classify(exc: BaseException, problem: Problem, message: str) -> None:
    error = classify(exc, "https://v/v1/secret/data/a", "write this secret", 10.0)
    assert error.problem is problem
    assert str(error) == f"https://v/v1/secret/data/a: {message}"
