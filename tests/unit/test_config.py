"""Config loading: durations; each bad config gets its own one-line message; shipped configs load."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from tokend import configfile
from tokend.configfile import load_config, parse_config
from tokend.durations import parse_duration
from tokend.errors import ConfigError
from tokend.transport import split_listen

REPO = Path(__file__).resolve().parents[2]

GOOD = """
identities:
  crm-app:
    tenant: contoso.onmicrosoft.com
    client_id: 00000000-0000-0000-0000-000000000001
    credential: {type: client_secret, secret: {env: CRM_SECRET}}
tokens:
  crm:
    identity: crm-app
    resource: https://contoso.crm.dynamics.com
    sinks: [{type: file, path: /run/tokend/crm.token}]
"""


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (600, 600),
        ("600", 600),
        ("600s", 600),
        ("10m", 600),
        ("1h", 3600),
        ("1.5h", 5400),
        ("1d", 86400),
        ("250ms", 0.25),
        (0, 0),
        (2.5, 2.5),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "value",
    ["10 minutes", "m", "-5s", "1w", True, None, [1], -1, "366d", 1e14, float("nan"), float("inf")],
)
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


def test_good_config_and_defaults() -> None:
    config = parse_config(GOOD, label="config.yaml").config
    assert config.defaults.refresh_threshold == timedelta(minutes=10)
    assert config.defaults.backoff.max == timedelta(minutes=5)
    assert config.listen == "127.0.0.1:9464"
    assert config.http.max_concurrent_requests == 16
    sink = config.tokens["crm"].sinks[0]
    assert (sink.format, sink.mode, sink.create_dirs) == ("raw", 0o600, False)


def test_inline_secret_is_accepted_with_a_warning() -> None:
    text = GOOD.replace("{env: CRM_SECRET}", "s3cr3t-inline-value")
    loaded = parse_config(text, label="config.yaml")
    assert loaded.warnings == [
        "config.yaml: identities.crm-app.credential.secret: secret written inline; prefer "
        "{env: ...}, {file: ...} or {credential: ...}"
    ]
    assert "s3cr3t-inline-value" not in repr(loaded.config)


def _with(replacements: dict[str, str]) -> str:
    text = GOOD
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


# Each bad config, and exactly the lines `tokend check` must print for it.
BAD_CONFIGS = [
    (
        {"identity: crm-app": "identity: crm-ap"},
        [
            "config.yaml: tokens.crm.identity: unknown identity 'crm-ap' (known: crm-app) "
            "(did you mean 'crm-app'?)"
        ],
    ),
    (
        {"    resource:": "    refresh_treshold: 5m\n    resource:"},
        [
            "config.yaml: tokens.crm.refresh_treshold: unknown key (did you mean 'refresh_threshold'?)"
        ],
    ),
    (
        {
            "resource: https://contoso.crm.dynamics.com": "scopes: [https://graph.microsoft.com/User.Read]"
        },
        [
            "config.yaml: tokens.crm.scopes: app-only tokens from Entra ID v2 take exactly one scope "
            "ending in /.default, e.g. https://graph.microsoft.com/.default"
        ],
    ),
    (
        {"    resource: https://contoso.crm.dynamics.com\n": ""},
        [
            "config.yaml: tokens.crm: give exactly one of resource (Entra ID v1 endpoint) or scopes "
            "(v2 endpoint)"
        ],
    ),
    (
        {"tenant: contoso.onmicrosoft.com": "tenant: common"},
        [
            "config.yaml: identities.crm-app.tenant: 'common' is not a tenant: app-only tokens need "
            "a tenant ID or domain"
        ],
    ),
    (
        {"tenant: contoso.onmicrosoft.com": "token_endpoint: http://idp.example.com/token"},
        [
            "config.yaml: identities.crm-app: token_endpoint: 'http://idp.example.com/token' uses "
            "plain http; https is required except for loopback addresses"
        ],
    ),
    (
        {
            "tenant: contoso.onmicrosoft.com": "token_endpoint: http://idp.example.com/token\n"
            "    allow_insecure_http: true"
        },
        [
            "config.yaml: identities.crm-app: token_endpoint: 'http://idp.example.com/token' uses "
            "plain http; https is required except for loopback addresses"
        ],
    ),
    (
        {
            "tenant: contoso.onmicrosoft.com": "issuer: http://10.0.0.1/\n    allow_insecure_http: true"
        },
        [
            "config.yaml: identities.crm-app: issuer: 'http://10.0.0.1/' uses plain http; https is "
            "required except for loopback addresses"
        ],
    ),
    (
        {"tenant: contoso.onmicrosoft.com": "token_endpoint: http://127.0.0.1:8080/token"},
        [
            "config.yaml: identities.crm-app: token_endpoint: 'http://127.0.0.1:8080/token' uses "
            "plain http; set allow_insecure_http: true to allow it on loopback"
        ],
    ),
    (
        {"    tenant: contoso.onmicrosoft.com\n": ""},
        [
            "config.yaml: identities.crm-app: give exactly one of tenant (Entra ID), token_endpoint "
            "or issuer"
        ],
    ),
    (
        {"tenant: contoso.onmicrosoft.com": "tenant: x\n    issuer: https://idp.example.com"},
        [
            "config.yaml: identities.crm-app: give exactly one of tenant (Entra ID), token_endpoint "
            "or issuer (got tenant, issuer)"
        ],
    ),
    (
        {"{env: CRM_SECRET}": "{vault_path: x}"},
        [
            "config.yaml: identities.crm-app.credential.secret: unknown secret reference 'vault_path' "
            "(expected one of {env: ...}, {file: ...}, {credential: ...}, {vault: ...}; quote an "
            "inline secret written in braces)"
        ],
    ),
    (
        {"type: client_secret,": "type: client_secret, auth_method: basic,"},
        [
            "config.yaml: identities.crm-app.credential.auth_method: must be one of "
            "'client_secret_post' or 'client_secret_basic'"
        ],
    ),
    (
        {"{type: file, path: /run/tokend/crm.token}": "{type: file, path: /run/x, mode: 600}"},
        [
            "config.yaml: tokens.crm.sinks.0.mode: write the mode as a quoted octal string, "
            'e.g. mode: "0600"'
        ],
    ),
    (
        {"{type: file, path: /run/tokend/crm.token}": '{type: file, path: /run/x, mode: "0999"}'},
        ["config.yaml: tokens.crm.sinks.0.mode: '0999' is not an octal file mode like \"0600\""],
    ),
    (
        {"{type: file, path: /run/tokend/crm.token}": "{type: file, path: /run/x, format: yaml}"},
        ["config.yaml: tokens.crm.sinks.0.format: must be one of 'raw', 'json' or 'env'"],
    ),
    *(
        (
            {"path: /run/tokend/crm.token}": f"path: /run/tokend/crm.token, {key}: {value}}}"},
            [
                f"config.yaml: tokens.crm.sinks.0.{key}: expected a {kind} name or a {kind} ID "
                f"from 0 to 4294967294, not {shown}"
            ],
        )
        for key, kind in (("owner", "user"), ("group", "group"))
        for value, shown in (
            ("1000000000000000000000", "1000000000000000000000"),  # an OverflowError at each write
            ("-5", "-5"),
            ("4294967295", "4294967295"),  # chown's -1: "leave the owner as it is"
            ("true", "true"),  # was ID 1
            ("1.5", "1.5"),
            ("[root]", "a list"),
        )
    ),
    (
        {"{type: file, path: /run/tokend/crm.token}": "{type: file}"},
        ["config.yaml: tokens.crm.sinks.0.path: required key is missing"],
    ),
    (
        {"{type: file, path: /run/tokend/crm.token}": "{type: file, path: /run/tokend/}"},
        ["config.yaml: tokens.crm.sinks.0.path: '/run/tokend/' is a directory, not a file path"],
    ),
    (
        {"sinks: [{type: file, path: /run/tokend/crm.token}]": "sinks: []"},
        ["config.yaml: tokens.crm.sinks: list should have at least 1 item after validation, not 0"],
    ),
    (
        {"  crm:\n": "  crm token:\n"},
        [
            "config.yaml: tokens.crm token: names may use letters, digits, '.', '_' and '-' "
            "(at most 64, not starting with '.')"
        ],
    ),
    (
        {"tokens:": "listen: localhost\ntokens:"},
        ["config.yaml: listen: 'localhost' is not host:port, e.g. 127.0.0.1:9464"],
    ),
    (
        {"tokens:": "defaults: {refresh_threshold: 0s, jitter: 0.9}\ntokens:"},
        [
            "config.yaml: defaults.refresh_threshold: must be longer than zero",
            "config.yaml: defaults.jitter: input should be less than or equal to 0.5",
        ],
    ),
    (
        {"tokens:": "defaults: {backoff: {min: 10s, max: 1s}}\ntokens:"},
        ["config.yaml: defaults.backoff: max must not be shorter than min"],
    ),
    # A typo anywhere must be an error, never a silent fall-back to the default.
    (
        {"tokens:": "defaults: {refresh_treshold: 5m}\ntokens:"},
        ["config.yaml: defaults.refresh_treshold: unknown key (did you mean 'refresh_threshold'?)"],
    ),
    (
        {"tokens:": "defaults: {backoff: {maxx: 1m}}\ntokens:"},
        ["config.yaml: defaults.backoff.maxx: unknown key (did you mean 'max'?)"],
    ),
    (
        {"tokens:": "http: {timout: 5s}\ntokens:"},
        ["config.yaml: http.timout: unknown key (did you mean 'timeout'?)"],
    ),
    (
        {"tokens:": "log: {levle: debug}\ntokens:"},
        ["config.yaml: log.levle: unknown key (did you mean 'level'?)"],
    ),
    (
        {"tokens:": "listn: 127.0.0.1:1\ntokens:"},
        ["config.yaml: listn: unknown key (did you mean 'listen'?)"],
    ),
    (
        {
            "    client_id: 00000000-0000-0000-0000-000000000001\n": (
                "    client_id: 00000000-0000-0000-0000-000000000001\n    allow_insecure_htp: true\n"
            )
        },
        [
            "config.yaml: identities.crm-app.allow_insecure_htp: unknown key (did you mean "
            "'allow_insecure_http'?)"
        ],
    ),
    (
        {
            "secret: {env: CRM_SECRET}}": "secret: {env: CRM_SECRET}, auth_methd: client_secret_basic}"
        },
        [
            "config.yaml: identities.crm-app.credential.auth_methd: unknown key (did you mean "
            "'auth_method'?)"
        ],
    ),
    (
        {"    client_id: 00000000-0000-0000-0000-000000000001\n": ""},
        ["config.yaml: identities.crm-app.client_id: required key is missing"],
    ),
]


@pytest.mark.parametrize(("replacements", "lines"), BAD_CONFIGS)
def test_bad_config_lines(replacements: dict[str, str], lines: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(_with(replacements), label="config.yaml")
    assert caught.value.lines == lines


_EMPTY = "must not be empty: give a path"


@pytest.mark.parametrize(
    ("replacements", "keys"),
    [
        ({"tokens:": 'state_dir: ""\ntokens:'}, ["state_dir"]),  # Path("") is the cwd: / as root
        ({"tokens:": 'http: {ca_bundle: ""}\ntokens:'}, ["http.ca_bundle"]),
        (
            {
                "tenant: contoso.onmicrosoft.com": 'tenant: contoso.onmicrosoft.com\n    ca_bundle: ""'
            },
            ["identities.crm-app.ca_bundle"],
        ),
        ({"path: /run/tokend/crm.token": 'path: ""'}, ["tokens.crm.sinks.0.path"]),
        (
            {"path: /run/tokend/crm.token}": 'path: /run/x, on_publish: {signal: {pid_file: ""}}}'},
            ["tokens.crm.sinks.0.on_publish.signal.pid_file"],
        ),
        ({"tokens:": 'endpoint: {env_file: ""}\ntokens:'}, ["endpoint.env_file"]),
        (
            {"tokens:": 'endpoint: {tls: {certificate: "", key: ""}}\ntokens:'},
            ["endpoint.tls.certificate", "endpoint.tls.key"],
        ),
        (
            {
                "tokens:": 'vault: {address: "https://vault.example", ca_bundle: "", auth: '
                '{method: kubernetes, role: r, jwt_file: ""}}\ntokens:'
            },
            ["vault.auth.jwt_file", "vault.ca_bundle"],
        ),
        (
            {"tokens:": 'kubernetes: {kubeconfig: "", service_account_dir: ""}\ntokens:'},
            ["kubernetes.kubeconfig", "kubernetes.service_account_dir"],
        ),
        (
            {
                "{type: client_secret, secret: {env: CRM_SECRET}}": '{type: federated, token_file: ""}'
            },
            ["identities.crm-app.credential.token_file"],
        ),
    ],
)
def test_an_empty_path_is_an_error_naming_its_key(
    replacements: dict[str, str], keys: list[str]
) -> None:
    """Every key that names a file or directory: "" would mean the working directory."""
    with pytest.raises(ConfigError) as caught:
        parse_config(_with(replacements), label="config.yaml")
    assert caught.value.lines == [f"config.yaml: {key}: {_EMPTY}" for key in keys]


def test_two_sinks_writing_one_file() -> None:
    text = GOOD + textwrap.indent(
        textwrap.dedent("""\
            crm2:
              identity: crm-app
              resource: https://other.crm.dynamics.com
              sinks: [{type: file, path: /run/tokend/crm.token}]
        """),
        "  ",
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, label="config.yaml")
    assert caught.value.lines == [
        "config.yaml: tokens.crm2.sinks.0: file /run/tokend/crm.token is also written by "
        "tokens.crm.sinks.0"
    ]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("identities: [\n", "config.yaml:2:1: did not find expected node content"),
        ("tokens: {}\ntokens: {}\n", "config.yaml:2:1: duplicate key 'tokens'"),
        ("- a\n- b\n", "config.yaml: the config must be a mapping with identities and tokens"),
        ("", "config.yaml: the config must be a mapping with identities and tokens"),
    ],
)
def test_yaml_level_problems(text: str, line: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, label="config.yaml")
    assert caught.value.lines == [line]


def test_messages_stay_one_line_whatever_the_keys_hold() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config('identities: {"a\\nb": 1}\ntokens: {}', label="config.yaml")
    assert caught.value.lines[0].startswith("config.yaml: identities.a\\nb")
    assert all("\n" not in line for line in caught.value.lines)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.yaml")
    assert caught.value.lines == [f"{tmp_path / 'nope.yaml'}: config file not found"]


@pytest.mark.parametrize("name", ["example.yaml", "dev.yaml"])
def test_shipped_configs_load(name: str) -> None:
    loaded = load_config(REPO / "config" / name)
    assert loaded.config.tokens


@pytest.mark.parametrize(
    ("listen", "parsed"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("[::1]:80", ("::1", 80)),
        ("0.0.0.0:9464", ("0.0.0.0", 9464)),  # noqa: S104 - parsed, never bound
    ],
)
def test_listen(listen: str, parsed: tuple[str, int]) -> None:
    assert split_listen(listen) == parsed


@pytest.mark.parametrize(
    ("content", "line"),
    [
        (
            GOOD.encode() + b"\x00extra: 1\n",
            "c.yaml:12:1: the character '\\x00' is not allowed in YAML",
        ),
        (GOOD.encode() + b"x: \x07\n", "c.yaml:12:4: the character '\\x07' is not allowed in YAML"),
        (b"a: caf\xe9\n", "c.yaml:1:7: not UTF-8 (byte 0xe9); save the file as UTF-8"),
        (b"a: " + b"[" * 500 + b"]" * 500 + b"\n", "c.yaml:1:67: nested more than 64 levels deep"),
    ],
)
def test_unreadable_files_say_what_and_where(tmp_path: Path, content: bytes, line: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.lines == [line.replace("c.yaml", str(path))]


def test_a_config_larger_than_the_limit_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past `MAX_CONFIG_SIZE` (256 MiB, patched smaller here) a file is not a config."""
    path = tmp_path / "c.yaml"
    path.write_text(GOOD + "#" * 2048 + "\n")
    monkeypatch.setattr(configfile, "MAX_CONFIG_SIZE", 2 << 10)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.lines == [f"{path}: larger than 2 KiB"]


def test_a_symbolic_link_loop_is_named(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").symlink_to(tmp_path / "b.yaml")
    (tmp_path / "b.yaml").symlink_to(tmp_path / "a.yaml")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "a.yaml")
    assert caught.value.lines == [
        f"{tmp_path / 'a.yaml'}: cannot read config: too many levels of symbolic links"
    ]


# Messages the table above leaves open.
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


def test_identity_names_follow_the_same_rule_as_token_names() -> None:
    assert _lines(_with({"  crm-app:\n": "  crm app:\n"})) == [
        "config.yaml: identities.crm app: names may use letters, digits, '.', '_' and '-' "
        "(at most 64, not starting with '.')"
    ]


def test_the_name_rule_is_given_for_names_only() -> None:
    """A value with a pattern of its own, inside a token, is not told the rule for names."""
    lines = _lines(
        _with(
            {"{type: file, path: /run/tokend/crm.token}": "{type: file, path: /x, env_prefix: a b}"}
        )
    )
    assert len(lines) == 1 and lines[0].startswith("config.yaml: tokens.crm.sinks.0.env_prefix: ")
    assert "names may use" not in lines[0]


def test_validate_config_names_the_config_when_given_no_label() -> None:
    from tokend.config import validate_config

    with pytest.raises(ConfigError) as caught:
        validate_config({"identities": {}, "tokens": {}, "typo_key": 1})
    assert caught.value.lines
    assert all(line.startswith("config: ") for line in caught.value.lines)


def test_where_an_identity_asks() -> None:
    """Identity.endpoint: Entra ID's URL by tenant, else the configured endpoint or issuer, with
    the identity's TLS settings (its own CA bundle, else the http: section's)."""
    from tokend.config import validate_config
    from tokend.oauth.dialects import Endpoint, Target

    document = {
        "identities": {
            "entra": {"tenant": "t-1", "client_id": "a", "credential": {"type": "client_secret",
                      "secret": {"env": "S"}}},
            "generic": {"token_endpoint": "http://127.0.0.1:8080/token",
                        "allow_insecure_http": True, "client_id": "b",
                        "ca_bundle": "/etc/own-ca.pem",
                        "credential": {"type": "client_secret", "secret": {"env": "S"}}},
            "oidc": {"issuer": "https://idp.example", "client_id": "c",
                     "credential": {"type": "client_secret", "secret": {"env": "S"}}},
        },
        "tokens": {"crm": {"identity": "entra", "resource": "https://crm.example",
                           "sinks": [{"type": "file", "path": "/run/tokend/crm"}]}},
    }  # fmt: skip
    identities = validate_config(document).identities
    default = Path("/etc/http-ca.pem")
    assert identities["entra"].endpoint(Target(resource="https://crm.example"), default) == (
        Endpoint(
            token_url="https://login.microsoftonline.com/t-1/oauth2/token",
            issuer=None,
            allow_insecure_http=False,
            ca_bundle=default,
        )
    )
    assert identities["generic"].endpoint(Target(scopes=("s",)), default) == Endpoint(
        token_url="http://127.0.0.1:8080/token",
        issuer=None,
        allow_insecure_http=True,
        ca_bundle=Path("/etc/own-ca.pem"),
    )
    assert identities["oidc"].endpoint(Target(scopes=("s",)), None) == Endpoint(
        token_url=None, issuer="https://idp.example", allow_insecure_http=False, ca_bundle=None
    )
    assert identities["generic"].endpoint(Target(scopes=("s",)), None).ca_bundle == Path(
        "/etc/own-ca.pem"
    )


def test_did_you_mean_knows_every_key_of_every_registered_kind() -> None:
    """The hints walk the whole schema: the config's own models, every kind of credential, sink
    and shared-resource section, and the models nested in them."""
    from tokend.config import Config
    from tokend.oauth.grants.base import CREDENTIALS
    from tokend.resources import RESOURCES
    from tokend.sinks.base import SINKS
    from tokend.validation import _field_names

    known = _field_names(Config, set())
    for registry in (CREDENTIALS, SINKS, RESOURCES):
        for tag, entry in registry.items():
            missing = set(entry.options.__pydantic_fields__) - known
            assert not missing, (tag, missing)
    nested = {"leeway", "jwks_uri", "refetch_interval", "state_key", "authority_host", "mode"}
    assert nested <= known
    assert _field_names(Config, {Config}) == set()  # a model already walked is not walked again


def test_a_key_of_another_block_is_not_offered_as_its_own_correction() -> None:
    """`secret:` one level too high: "did you mean 'secret'" would send the user in circles."""
    credential = "    credential: {type: client_secret, secret: {env: CRM_SECRET}}\n"
    text = _with({credential: credential + "    secret: {env: CRM_SECRET}\n"})
    assert _lines(text) == [
        "config.yaml: identities.crm-app.secret: unknown key here ('secret' is a key of another "
        "block: check its indentation)"
    ]


def test_a_mistyped_key_deep_in_a_kind_gets_a_hint() -> None:
    line = "    resource: https://contoso.crm.dynamics.com\n"
    text = _with({line: line + "    verify: {leewey: 30s}\n"})
    assert any("unknown key (did you mean 'leeway'?)" in line for line in _lines(text))
