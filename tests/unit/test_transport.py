"""The rules every outgoing connection follows, as a table: which URLs may be used, what counts
as loopback, which CA bundles work, and how listen addresses read."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from tests.support.pki import CertificateAuthority
from tokend.transport import (
    CaBundleError,
    ca_bundle_problem,
    is_loopback,
    is_on_this_machine,
    split_listen,
    ssl_context,
    url_problem,
)

PLAIN_REMOTE = "uses plain http; https is required except for loopback addresses"
PLAIN_LOOPBACK = "uses plain http; set allow_insecure_http: true to allow it on loopback"
NO_HOST = (
    "no valid host name (ASCII letters, digits, '-' and '_' in dot-separated labels of 1 to 63; "
    "an internationalized name in its xn-- form)"
)


@pytest.mark.parametrize(
    ("url", "allow", "problem"),
    [
        ("https://login.example/token", False, None),
        ("https://login.example/token", True, None),
        ("http://127.0.0.1:8080/token", True, None),
        ("http://localhost/token", True, None),
        ("http://[::1]:8080/token", True, None),
        ("http://127.0.0.1:8080/token", False, f"'http://127.0.0.1:8080/token' {PLAIN_LOOPBACK}"),
        ("http://idp.example/token", True, f"'http://idp.example/token' {PLAIN_REMOTE}"),
        ("http://idp.example/token", False, f"'http://idp.example/token' {PLAIN_REMOTE}"),
        ("http://10.0.0.1/token", True, f"'http://10.0.0.1/token' {PLAIN_REMOTE}"),
        ("http://localhost.example/", True, f"'http://localhost.example/' {PLAIN_REMOTE}"),
        ("ftp://idp.example/token", True, "'ftp://idp.example/token' is not an http(s) URL"),
        ("https:///token", False, "'https:///token' is not an http(s) URL"),
        ("idp.example/token", False, "'idp.example/token' is not an http(s) URL"),
        ("https://user:pw@idp.example/", False, "URL must not contain credentials"),
        ("https://user@idp.example/", False, "URL must not contain credentials"),
        ("https://:pw@idp.example/", False, "URL must not contain credentials"),
        ("ftp://user:CANARY-pw@idp.example/", False, "URL must not contain credentials"),
        # What no HTTP client can use: refused when the config loads, not at every attempt.
        (
            "http://127.0.0.1:99999/t",
            True,
            "'http://127.0.0.1:99999/t' is not a valid URL (its host or port)",
        ),
        (
            "http://127.0.0.1:abc/t",
            True,
            "'http://127.0.0.1:abc/t' is not a valid URL (its host or port)",
        ),
        ("https://[::1/t", False, "'https://[::1/t' is not a valid URL (its host or port)"),
        (
            "https://idp.example:0/t",
            False,
            "'https://idp.example:0/t' has port 0, which nothing listens on",
        ),
        ("https://a..b.example/", False, f"'https://a..b.example/' has {NO_HOST}"),
        ("https://-a.example/", False, f"'https://-a.example/' has {NO_HOST}"),
        (f"https://{'a' * 64}.example/", False, f"'https://{'a' * 64}.example/' has {NO_HOST}"),
        ("https://ex\u00e4mple.example/", False, f"'https://ex\u00e4mple.example/' has {NO_HOST}"),
        ("https://xn--exmple-cua.example/", False, None),
        ("https://login.example./t", False, None),
        ("https://vault_1.internal:8200/", False, None),
        ("https://[::1]:8443/t", False, None),
    ],
)
def test_which_urls_may_be_used(url: str, allow: bool, problem: str | None) -> None:
    assert url_problem(url, allow_insecure_http=allow) == problem


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        # Other spellings of the same addresses, which connect there all the same.
        ("localhost.", True),
        ("::ffff:127.0.0.1", True),
        ("[::ffff:127.0.0.1]", True),
        ("127.1", True),
        ("0x7f.0.0.1", True),
        ("2130706433", True),
        ("10.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("10.1", False),
        ("cafe.be", False),
        ("::", False),
        ("X127.0.0.1", False),
        ("LOCALHOST.example", False),
        ("idp.example", False),
        ("", False),
    ],
)
def test_what_counts_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("listen", "parsed"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("[::1]:80", ("::1", 80)),
        ("localhost:1", ("localhost", 1)),
        ("h:65535", ("h", 65535)),
    ],
)
def test_listen_addresses(listen: str, parsed: tuple[str, int]) -> None:
    assert split_listen(listen) == parsed


@pytest.mark.parametrize("listen", ["localhost", ":9464", "h:0", "h:65536", "h:123456", "::1:80"])
def test_bad_listen_addresses(listen: str) -> None:
    with pytest.raises(ValueError, match="is not host:port") as caught:
        split_listen(listen)
    assert str(caught.value) == f"'{listen}' is not host:port, e.g. 127.0.0.1:9464"


def test_contexts_verify_and_refuse_old_tls(tmp_path: Path) -> None:
    bundle = CertificateAuthority(tmp_path).cert
    for context in (ssl_context(None), ssl_context(bundle)):
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ssl_context(bundle) is ssl_context(bundle)  # loaded once
    assert ssl_context(bundle).get_ca_certs() != ssl_context(None).get_ca_certs()
    assert ca_bundle_problem(bundle) is None


def test_unusable_ca_bundles_are_one_clear_line(tmp_path: Path) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    cases = {
        tmp_path / "missing.pem": "no such file",
        tmp_path: "is a directory, not a PEM file",
        not_pem: "not a PEM file of CA certificates",
    }
    for path, reason in cases.items():
        assert ca_bundle_problem(path) == f"ca_bundle {path}: {reason}"
        with pytest.raises(CaBundleError) as caught:
            ssl_context(path)
        assert caught.value.code == "ca_bundle"
        assert not caught.value.transient


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (PermissionError(13, "Permission denied"), "not readable by this user"),
        (OSError(5, "Input/output error"), "Input/output error"),
        (OSError(), "OSError"),
    ],
)
def test_other_reasons_a_bundle_cannot_be_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, error: OSError, reason: str
) -> None:
    """Root reads any file, so unreadable bundles are simulated."""

    def refuse(**kwargs: object) -> ssl.SSLContext:
        raise error

    monkeypatch.setattr(ssl, "create_default_context", refuse)
    path = tmp_path / f"{type(error).__name__}-{error.errno}.pem"
    assert ca_bundle_problem(path) == f"ca_bundle {path}: {reason}"


@pytest.mark.parametrize(
    ("host", "here"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("169.254.169.254", True),  # the Azure instance metadata service
        ("[fe80::1]", True),
        ("::ffff:169.254.169.254", True),
        ("127.1", True),
        ("X169.254.169.254", False),
        ("10.0.0.1", False),
        ("idp.example", False),
    ],
)
def test_what_is_on_this_machine_and_needs_no_proxy(host: str, here: bool) -> None:
    assert is_on_this_machine(host) is here
