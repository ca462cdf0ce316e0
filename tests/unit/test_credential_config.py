"""Config for the certificate, federated and managed-identity credentials and for `verify:`:
what each accepts, what the environment supplies, and one clear line per mistake."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tokend.config import Config, ConfigError
from tokend.configfile import parse_config
from tokend.transport import is_on_this_machine

ENTRA = {"tenant": "contoso.onmicrosoft.com", "client_id": "app-id"}
WEBHOOK = {
    "AZURE_CLIENT_ID": "env-client",
    "AZURE_TENANT_ID": "env-tenant",
    "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.us/",
    "AZURE_FEDERATED_TOKEN_FILE": "/var/run/secrets/azure/tokens/azure-identity-token",
}


def _parse(identity: dict[str, Any], **token: Any) -> Config:
    document = {
        "identities": {"app": identity},
        "tokens": {
            "crm": {
                "identity": "app",
                **(token or {"resource": "https://crm.example"}),
                "sinks": [{"type": "file", "path": "/run/tokend/crm"}],
            }
        },
    }
    return parse_config(yaml.safe_dump(document), label="c.yaml").config


def _problems(identity: dict[str, Any], **token: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        _parse(identity, **token)
    return caught.value.lines


@pytest.fixture
def no_azure_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*WEBHOOK, "IDENTITY_ENDPOINT", "IDENTITY_HEADER"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("credential", "line"),
    [
        ({}, "give exactly one of certificate (PEM) or pkcs12"),
        ({"certificate": {"file": "/c"}, "pkcs12": {"file": "/p"}}, "give exactly one of"),
        ({"pkcs12": {"file": "/p"}, "private_key": {"file": "/k"}}, "private_key goes with"),
        ({"certificate": {"file": "/c"}, "algorithm": "HS256"}, "algorithm: must be one of"),
    ],
)
def test_certificate_options(credential: dict[str, Any], line: str) -> None:
    (problem,) = _problems({**ENTRA, "credential": {"type": "certificate", **credential}})
    assert problem.startswith("c.yaml: identities.app.credential")
    assert line in problem


@pytest.mark.usefixtures("no_azure_environment")
def test_managed_identity_needs_no_tenant_nor_client_id() -> None:
    config = _parse({"credential": {"type": "managed_identity", "object_id": "o-1"}})
    identity = config.identities["app"]
    assert identity.client_id is None and identity.tenant is None


@pytest.mark.usefixtures("no_azure_environment")
@pytest.mark.parametrize(
    ("identity", "token", "line"),
    [
        (
            {**ENTRA, "credential": {"type": "managed_identity"}},
            {},
            "identities.app: a managed_identity credential knows its endpoint: give no tenant, "
            "client_id (choose a user-assigned identity in the credential)",
        ),
        (
            {"credential": {"type": "managed_identity", "client_id": "a", "object_id": "b"}},
            {},
            "identities.app.credential: give at most one of client_id, object_id or msi_res_id "
            "(got client_id, object_id)",
        ),
        (
            {"credential": {"type": "managed_identity", "endpoint": "http://10.1.2.3/token"}},
            {},
            "identities.app.credential: endpoint: 'http://10.1.2.3/token' uses plain http; "
            "https is required except for loopback addresses",
        ),
        (
            {"credential": {"type": "managed_identity", "source": "app_service"}},
            {},
            "identities.app.credential: source app_service: IDENTITY_HEADER is not set",
        ),
        (
            {"credential": {"type": "managed_identity"}},
            {"scopes": ["https://a/.default", "https://b/.default"]},
            "tokens.crm: a managed identity takes exactly one resource, or one scope",
        ),
    ],
)
def test_managed_identity_mistakes(
    identity: dict[str, Any], token: dict[str, Any], line: str
) -> None:
    problems = _problems(identity, **token)
    assert len(problems) == 1 and problems[0].startswith(f"c.yaml: {line}"), problems


def test_managed_identity_endpoints_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    for endpoint in (
        "http://169.254.169.254/metadata/identity/oauth2/token",  # IMDS itself
        "http://127.0.0.1:40342/metadata/identity/oauth2/token",  # Azure Arc's local agent
        "https://msi.example/token",
    ):
        _parse({"credential": {"type": "managed_identity", "endpoint": endpoint}})
    monkeypatch.setenv("IDENTITY_ENDPOINT", "http://10.0.0.9/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", "h")
    assert _problems({"credential": {"type": "managed_identity"}}) == [
        "c.yaml: identities.app.credential: endpoint ($IDENTITY_ENDPOINT): 'http://10.0.0.9/msi/token' uses "
        "plain http; https is required except for loopback addresses"
    ]


def test_federated_from_environment_fills_only_what_the_config_leaves_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in WEBHOOK.items():
        monkeypatch.setenv(name, value)
    federated = {"type": "federated", "from_environment": True}
    identity = _parse({"credential": federated}).identities["app"]
    assert (identity.client_id, identity.tenant) == ("env-client", "env-tenant")
    assert identity.authority_host == "https://login.microsoftonline.us/"
    assert str(identity.credential.token_file) == WEBHOOK["AZURE_FEDERATED_TOKEN_FILE"]  # type: ignore[attr-defined]
    mine = {"client_id": "mine", "issuer": "https://idp.example"}
    explicit = _parse({**mine, "credential": {**federated, "token_file": "/t"}}).identities["app"]
    assert (explicit.client_id, explicit.tenant, explicit.authority_host) == ("mine", None, None)
    assert str(explicit.credential.token_file) == "/t"  # type: ignore[attr-defined]


@pytest.mark.usefixtures("no_azure_environment")
def test_federated_mistakes() -> None:
    federated = {"type": "federated", "from_environment": True}
    assert _problems({"credential": federated}) == [
        "c.yaml: identities.app: credential.from_environment: AZURE_CLIENT_ID is not set and "
        "client_id is not given"
    ]
    assert _problems({**ENTRA, "credential": federated}) == [
        "c.yaml: identities.app.credential: from_environment: AZURE_FEDERATED_TOKEN_FILE is not "
        "set and neither token_file nor command is given (the Azure workload identity webhook "
        "sets it in the pod)"
    ]
    assert _problems({**ENTRA, "credential": {"type": "federated"}}) == [
        "c.yaml: identities.app.credential: give exactly one of token_file or command"
    ]
    assert _problems({**ENTRA, "credential": {"type": "federated", "command": []}}) == [
        "c.yaml: identities.app.credential.command: list should have at least 1 item after "
        "validation, not 0"
    ]


@pytest.mark.parametrize(
    ("identity", "token", "line"),
    [
        (
            {"token_endpoint": "https://idp.example/token"},
            {"resource": "https://api.example", "verify": True},
            "tokens.crm.verify: issuer: required: the identity names no tenant or issuer to find it from",
        ),
        (
            {"issuer": "https://idp.example"},
            {"scopes": ["orders:read"], "verify": {}},
            "tokens.crm.verify: audience: required when the token names no resource and not "
            "one .default scope",
        ),
        (
            ENTRA,
            {"resource": "https://crm.example", "verify": {"leeway": "soon"}},
            "tokens.crm.verify.leeway: 'soon' is not a duration",
        ),
    ],
)
def test_verify_mistakes(identity: dict[str, Any], token: dict[str, Any], line: str) -> None:
    secret = {"type": "client_secret", "secret": {"env": "S"}}
    problems = _problems({"client_id": "c", **identity, "credential": secret}, **token)
    assert len(problems) == 1 and problems[0].startswith(f"c.yaml: {line}"), problems


def test_verify_true_and_false() -> None:
    secret = {**ENTRA, "credential": {"type": "client_secret", "secret": {"env": "S"}}}
    on = _parse(secret, resource="https://crm.example", verify=True).tokens["crm"].verify
    assert on is not None and on.audience is None and on.leeway.total_seconds() == 60
    assert _parse(secret, resource="https://crm.example", verify=False).tokens["crm"].verify is None
    audience = {"audience": "api://crm"}
    given = _parse(secret, resource="https://crm.example", verify=audience).tokens["crm"].verify
    assert given is not None and given.audience == ("api://crm",)


def test_verify_finds_the_issuer_from_the_identity() -> None:
    """An identity that names its issuer (not Entra ID) needs none under `verify:`."""
    secret = {"type": "client_secret", "secret": {"env": "S"}}
    identity = {"issuer": "https://idp.example", "client_id": "c", "credential": secret}
    verify = _parse(identity, resource="https://api.example", verify=True).tokens["crm"].verify
    assert verify is not None and verify.issuer is None


PASSWORD = {"type": "password", "username": "ann@contoso.example", "password": {"env": "P"}}
SEALED = {"state_dir": "/var/lib/tokend", "state_key": {"env": "STATE_KEY"}}


def _kept_line(kind: str) -> str:
    return (
        f"c.yaml: identities.app.credential: a {kind} credential keeps the refresh tokens it is"
        " given, stored only sealed: set state_dir and state_key (a secret reference)"
    )


@pytest.mark.parametrize(
    ("credential", "top", "lines"),
    [
        (PASSWORD, SEALED, []),
        (PASSWORD, {}, [_kept_line("password")]),
        (PASSWORD, {"state_dir": SEALED["state_dir"]}, [_kept_line("password")]),
        (PASSWORD, {"state_key": SEALED["state_key"]}, [_kept_line("password")]),
        ({**PASSWORD, "refresh_tokens": False}, {}, []),
        (
            {"type": "device_login"},
            {"state_key": SEALED["state_key"]},
            [_kept_line("device_login")],
        ),
        ({"type": "device_login"}, SEALED, []),
        ({"type": "client_secret", "secret": {"env": "S"}}, {}, []),
    ],
)
def test_kept_refresh_tokens_need_state_dir_and_state_key(
    credential: dict[str, Any],
    top: dict[str, Any],
    lines: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A credential that keeps refresh tokens stores them only sealed: both keys, or one line."""
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)  # systemd's default state_dir
    document = {
        "identities": {"app": {**ENTRA, "credential": credential}},
        "tokens": {
            "crm": {
                "identity": "app",
                "resource": "https://crm.example",
                "sinks": [{"type": "file", "path": "/run/tokend/crm"}],
            }
        },
        **top,
    }
    assert _lines_of(document) == lines


def _lines_of(document: dict[str, Any]) -> list[str]:
    """The config's problems, none if it loads."""
    try:
        parse_config(yaml.safe_dump(document), label="c.yaml")
    except ConfigError as caught:
        return caught.lines
    return []


@pytest.mark.parametrize(
    ("host", "direct"),
    [("169.254.169.254", True), ("127.0.0.1", True), ("localhost", True), ("[::1]", True),
     ("fe80::1", True), ("10.0.0.5", False), ("login.microsoftonline.com", False)],
)  # fmt: skip
def test_requests_to_this_machine_bypass_proxies(host: str, direct: bool) -> None:
    """IMDS (link-local) is asked directly, never through HTTP(S)_PROXY, like loopback."""
    assert is_on_this_machine(host) is direct
