"""The endpoint's pure parts, table by table: the `endpoint:` block's rules, which configured
token answers a request, query parsing, and what `tokend check` says about the block."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.pki import CertificateAuthority
from tokend.config import ConfigError
from tokend.configfile import LoadedConfig, parse_config
from tokend.endpoint.app import Query
from tokend.endpoint.catalog import Catalog, NotServed, Selector, resource_key
from tokend.endpoint.checks import endpoint_problems
from tokend.endpoint.options import EndpointOptions
from tokend.endpoint.service import EnvironmentUnknown, client_environment, env_lines

CONFIG = """
identities:
  app: {tenant: t, client_id: AAAA-1, credential: {type: client_secret, secret: {env: S}}}
  other: {tenant: t, client_id: bbbb-2, credential: {type: client_secret, secret: {env: S}}}
tokens:
  crm: {identity: app, resource: https://crm.example, sinks: [{type: file, path: /tmp/a}]}
  graph: {identity: app, scopes: [https://graph.example/.default], sinks: [{type: file, path: /tmp/b}]}
  crm-other: {identity: other, resource: https://crm.example/, sinks: [{type: file, path: /tmp/c}]}
"""


def loaded(endpoint: str = "{}", extra: str = "") -> LoadedConfig:
    return parse_config(CONFIG + extra + f"endpoint: {endpoint}\n", label="c.yaml")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"listen": "0.0.0.0:9465"}, "reachable from other machines"),
        ({"listen": "192.0.2.1:9465", "allow_remote": True}, "reachable from other machines"),
        ({"listen": "unix:relative.sock"}, "absolute path"),
        ({"listen": "unix:/run/t.sock", "tls": {"certificate": "/c", "key": "/k"}}, "TCP"),
        ({"socket_group": "tokend"}, "Unix socket only"),
        ({"protocols": []}, "no protocol"),
        ({"protocols": ["msi"]}, "app_service"),
        ({"listen": "localhost"}, "host:port"),
        ({"socket_mode": "999"}, "pattern"),
    ],
)
def test_bad_endpoint_blocks(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EndpointOptions.model_validate(options)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"listen": "[::1]:9465"},
        {"listen": "unix:/run/tokend/endpoint.sock", "socket_mode": "0660", "socket_group": "x"},
        {"listen": "0.0.0.0:9465", "allow_remote": True, "tls": {"certificate": "/c", "key": "/k"}},
        {"protocols": [], "compat": "requesttoken"},
    ],
)
def test_good_endpoint_blocks(options: dict[str, object]) -> None:
    EndpointOptions.model_validate(options)


def test_defaults_and_urls() -> None:
    options = EndpointOptions()
    assert options.listen == "127.0.0.1:9465" and options.protocols == ["app_service"]
    assert options.app_service_url() == "http://127.0.0.1:9465/msi/token"
    assert options.header_secret is None and options.compat is None
    remote = EndpointOptions.model_validate(
        {"listen": "[::]:443", "allow_remote": True, "tls": {"certificate": "/c", "key": "/k"}}
    )
    assert remote.base_url() == "https://[::]:443"


@pytest.mark.parametrize(
    ("extra", "endpoint", "line"),
    [
        (
            "  lazy: {identity: app, resource: https://l, on_demand: true, sinks: [{type: file, path: /tmp/d}]}\n",
            None,
            "c.yaml: tokens.lazy.on_demand: needs an endpoint: block (it asks for the token)",
        ),
        (
            "",
            "{default_identity: nobody}",
            "c.yaml: endpoint: unknown identity 'nobody' (known: app, other)",
        ),
        (
            "",
            "{identities: {ghost: {principal_id: x}}}",
            "c.yaml: endpoint: unknown identity 'ghost' (known: app, other)",
        ),
        (
            "",
            "{tokens: [crm, nope]}",
            "c.yaml: endpoint.tokens: unknown token 'nope' (known: crm, graph, crm-other)",
        ),
    ],
)
def test_cross_checks(extra: str, endpoint: str | None, line: str) -> None:
    text = CONFIG + extra + (f"endpoint: {endpoint}\n" if endpoint else "")
    with pytest.raises(ConfigError) as caught:
        parse_config(text, label="c.yaml")
    assert caught.value.lines == [line]


@pytest.mark.parametrize(
    ("resource", "key"),
    [
        ("https://crm.example", "https://crm.example"),
        ("https://crm.example/", "https://crm.example"),
        ("https://crm.example/.default", "https://crm.example"),
        ("https://crm.example//.default", "https://crm.example"),
        (" https://crm.example ", "https://crm.example"),
        ("api://11112222/", "api://11112222"),
        ("orders:read", "orders:read"),
    ],
)
def test_resource_keys(resource: str, key: str) -> None:
    assert resource_key(resource) == key


@pytest.mark.parametrize(
    ("endpoint", "resource", "selector", "token"),
    [
        ("{default_identity: app}", "https://crm.example", Selector(), "crm"),
        ("{default_identity: other}", "https://crm.example", Selector(), "crm-other"),
        ("{}", "https://crm.example", Selector(client_id="bbbb-2"), "crm-other"),
        ("{}", "https://crm.example", Selector(client_id="aaaa-1"), "crm"),  # GUIDs: any case
        (
            "{identities: {other: {principal_id: P}}}",
            "https://crm.example/",
            Selector(principal_id="p"),
            "crm-other",
        ),
        (
            "{identities: {other: {mi_res_id: /s/R}}}",
            "https://crm.example",
            Selector(mi_res_id="/s/r"),
            "crm-other",
        ),
        ("{}", "https://graph.example", Selector(), "graph"),
        ("{}", "https://graph.example/.default", Selector(), "graph"),
    ],
)
def test_catalog_finds(endpoint: str, resource: str, selector: Selector, token: str) -> None:
    config = loaded(endpoint).config
    assert config.endpoint is not None
    assert Catalog(config, config.endpoint).find(resource, selector).token == token


@pytest.mark.parametrize(
    ("endpoint", "resource", "selector", "identity", "message"),
    [
        ("{}", "https://crm.example", Selector(), True, "several identities"),
        ("{}", "https://crm.example", Selector(client_id="cccc-3"), True, "no configured identity"),
        ("{}", "https://mail.example", Selector(), False, "serves no token"),
        (
            "{tokens: [graph]}",
            "https://crm.example",
            Selector(client_id="aaaa-1"),
            False,
            "serves no token",
        ),
    ],
)
def test_catalog_refuses(
    endpoint: str, resource: str, selector: Selector, identity: bool, message: str
) -> None:
    config = loaded(endpoint).config
    assert config.endpoint is not None
    with pytest.raises(NotServed, match=message) as caught:
        Catalog(config, config.endpoint).find(resource, selector)
    assert caught.value.identity is identity


@pytest.mark.parametrize(
    ("raw", "params", "repeated"),
    [
        (
            b"api-version=2019-08-01&resource=https%3A%2F%2Fcrm.example",
            {"api-version": "2019-08-01", "resource": "https://crm.example"},
            False,
        ),
        (b"resource=a&resource=b", {"resource": "b"}, True),
        (b"resource=&client_id=x", {"resource": "", "client_id": "x"}, False),
        (b"", {}, False),
    ],
)
def test_query_parsing(raw: bytes, params: dict[str, str], repeated: bool) -> None:
    query = Query.parse(raw)
    assert (query.params, query.repeated) == (params, repeated)


def test_env_lines() -> None:
    both = EndpointOptions.model_validate({"protocols": ["app_service", "imds"]})
    assert env_lines(both, "s3cret") == (
        "IDENTITY_ENDPOINT='http://127.0.0.1:9465/msi/token'\n"
        "IDENTITY_HEADER='s3cret'\n"
        "# AZURE_POD_IDENTITY_AUTHORITY_HOST='http://127.0.0.1:9465'\n"
    )
    imds = EndpointOptions.model_validate({"protocols": ["imds"]})
    assert env_lines(imds, None) == "AZURE_POD_IDENTITY_AUTHORITY_HOST='http://127.0.0.1:9465'\n"


def test_check_finds_what_would_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    ca = CertificateAuthority(tmp_path)
    pair = ca.issue("endpoint", "127.0.0.1", server_ips=("127.0.0.1",))
    other = ca.issue("other", "127.0.0.1", server_ips=("127.0.0.1",))
    cases = [
        (
            {},
            [
                "header_secret: generated at each start, and nothing tells it to clients: set env_file (or header_secret)"
            ],
        ),
        (
            {"env_file": str(tmp_path / "no" / "ep.env")},
            [f"env_file: the directory {tmp_path / 'no'} does not exist"],
        ),
        (
            {"header_secret": {"env": "X"}, "listen": f"unix:{tmp_path}/none/ep.sock"},
            [f"listen: the directory {tmp_path}/none does not exist"],
        ),
        (
            {
                "header_secret": {"env": "X"},
                "listen": f"unix:{tmp_path}/ep.sock",
                "socket_group": "no-such-group-x",
            },
            ["socket_group: no such group 'no-such-group-x'"],
        ),
        (
            {
                "header_secret": {"env": "X"},
                "tls": {"certificate": str(pair.cert), "key": str(other.key)},
            },
            [f"tls: {pair.cert} and {other.key} are not a matching PEM certificate and key"],
        ),
        (
            {
                "header_secret": {"env": "X"},
                "tls": {"certificate": str(pair.cert), "key": str(pair.key)},
            },
            [],
        ),
        ({"header_secret": {"env": "QUOTED"}}, [f"header_secret: {HEADER_SECRET_RULE}"]),
        (
            {"header_secret": {"env": "X"}, "env_file": str(tmp_path)},
            [f"env_file: {tmp_path} is a directory"],
        ),
    ]
    monkeypatch.setenv("X", "a-header-secret")
    monkeypatch.setenv("QUOTED", "abc'; touch /tmp/pwned; echo '")
    for options, lines in cases:
        assert endpoint_problems(EndpointOptions.model_validate(options), listen=False) == lines


HEADER_SECRET_RULE = (
    "must be printable ASCII without a single quote, and not start or end with a space (it is an "
    "HTTP header value, written single-quoted into an env file)"
)


@pytest.mark.parametrize(
    "secret", ["abc'; touch pwned; echo '", "a\nEVIL=1", " a", "a ", "a\u00e9"]
)
def test_endpoint_env_never_prints_a_header_secret_a_shell_would_split(
    secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`eval "$(tokend endpoint env)"` runs what it prints: a header secret that would end its
    quotes is refused, as `tokend run` and `tokend check` refuse it."""
    monkeypatch.setenv("HEADER", secret)
    options = EndpointOptions.model_validate({"header_secret": {"env": "HEADER"}})
    with pytest.raises(EnvironmentUnknown, match=r"^endpoint\.header_secret: must be printable"):
        client_environment(options)
    assert endpoint_problems(options, listen=False) == [f"header_secret: {HEADER_SECRET_RULE}"]


@pytest.mark.parametrize("path", ["/run/ep\n.sock", "/run/ep'.sock", "/run/ep\x1b[2J.sock"])
def test_a_socket_path_that_would_break_the_env_file_is_refused(path: str) -> None:
    with pytest.raises(ValueError, match="a Unix socket path must be printable, without quotes"):
        EndpointOptions.model_validate({"listen": f"unix:{path}", "header_secret": {"env": "X"}})


def test_a_header_secret_with_what_single_quotes_keep_is_exported_as_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Inside single quotes `"`, `\\`, `$` and spaces stand for themselves, in a shell as in
    systemd's EnvironmentFile=: such a secret works (it did before the quote rule)."""
    secret = 'a"b\\c d$x`y'
    monkeypatch.setenv("HEADER", secret)
    options = EndpointOptions.model_validate({"header_secret": {"env": "HEADER"}})
    exported = client_environment(options)
    assert f"export IDENTITY_HEADER='{secret}'\n" in exported
    assert endpoint_problems(options, listen=False) == []
