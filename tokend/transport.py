"""Addresses, and the rules every outgoing connection follows: HTTPS with TLS 1.2 or newer,
the system CA store or a configured bundle, and plain HTTP only to a loopback address when the
config says so explicitly."""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import ssl
from errno import EADDRINUSE
from pathlib import Path
from urllib.parse import urlsplit

from tokend import __version__
from tokend.errors import TokendError

USER_AGENT = f"tokend/{__version__}"
"""Every request tokend sends says who it is."""

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 15.0
"""Seconds for the whole exchange of one request: connecting, sending, the whole answer."""
DEFAULT_MAX_CONCURRENT_REQUESTS = 16
DEFAULT_LISTEN = "127.0.0.1:9464"
"""tokend's own listener (/metrics, /healthz, /readyz, /status): loopback unless configured."""


def url_problem(url: str, *, allow_insecure_http: bool) -> str | None:
    """Why `url` may not be used to reach an identity provider, Vault or Kubernetes, or None
    when it may: `url_shape_problem`, and plain http only to loopback when allowed."""
    if problem := url_shape_problem(url):
        return problem
    parts = urlsplit(url)
    if parts.scheme == "http" and parts.hostname:
        if not is_loopback(parts.hostname):
            return f"'{url}' uses plain http; https is required except for loopback addresses"
        if not allow_insecure_http:
            return f"'{url}' uses plain http; set allow_insecure_http: true to allow it on loopback"
    return None


def url_shape_problem(url: str) -> str | None:
    """Why no HTTP client could use `url`, or None: http(s), no credentials, a host that is an
    IP address or an ASCII name, a port from 1 to 65535. Checked when the config loads, so such
    a URL is a config error naming its key, not a failure at every attempt."""
    try:
        parts = urlsplit(url)
        port = parts.port  # a port that is not a number, or over 65535, raises here
    except ValueError:
        return f"'{url}' is not a valid URL (its host or port)"
    if parts.username or parts.password:  # before anything that would quote the URL
        return "URL must not contain credentials"
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return f"'{url}' is not an http(s) URL"
    if port == 0:
        return f"'{url}' has port 0, which nothing listens on"
    if problem := _host_problem(parts.hostname):
        return f"'{url}' has {problem}"
    return None


def is_loopback(host: str) -> bool:
    """`host` names this machine's loopback interface, however it is spelled: `localhost` (also
    with the root's trailing dot), 127.0.0.0/8 and ::1, IPv4 inside IPv6 (`::ffff:127.0.0.1`)
    and the short forms the resolver takes (`127.1`). Loopback traffic never goes through a
    proxy: a spelling missed here would send it to one."""
    address = _address(host)
    if address is None:
        return host.rstrip(".").lower() == "localhost"
    return address.is_loopback


def is_on_this_machine(host: str) -> bool:
    """Loopback, or link-local (the Azure IMDS at 169.254.169.254 answers on the host itself):
    no proxy elsewhere can reach it, so no request to it goes through one."""
    address = _address(host)
    return is_loopback(host) or (address is not None and address.is_link_local)


_NUMERIC_HOST = re.compile(r"[0-9a-fA-FxX.]+")
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


def _host_problem(host: str) -> str | None:
    """What is wrong with a URL's host name (`urlsplit` lowercases it), or None. Names are ASCII
    labels: an internationalized name is written in its xn-- form, as DNS knows it."""
    if _address(host) is not None:
        return None
    name = host.removesuffix(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        return (
            "no valid host name (ASCII letters, digits, '-' and '_' in dot-separated labels of "
            "1 to 63; an internationalized name in its xn-- form)"
        )
    return None


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """`host` as the IP address a connection to it reaches, or None if it is a name."""
    text = host.strip("[]")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        if not _NUMERIC_HOST.fullmatch(text):
            return None
        try:  # what getaddrinfo reads as an address too: 127.1, 0x7f.1, 2130706433
            address = ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class CaBundleError(TokendError):
    """A configured CA bundle cannot be used; an operator must fix the file."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="ca_bundle")


@functools.cache
def ssl_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """A verifying client context (cached: loading a CA store costs milliseconds). Raises
    `CaBundleError` when `ca_bundle` is missing, unreadable or holds no PEM certificate."""
    if ca_bundle is None:
        import httpx2  # the system CA store as httpx2 finds it; loaded only by those who connect

        context = httpx2.create_ssl_context()
    else:
        try:
            context = ssl.create_default_context(cafile=str(ca_bundle))
        except (OSError, ssl.SSLError) as exc:
            raise CaBundleError(f"ca_bundle {ca_bundle}: {_bundle_problem(exc)}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def untrusting_context() -> ssl.SSLContext:
    """A context that verifies and trusts no CA: for clients that only ever speak plain
    `http://`, where loading the CA store would cost time for nothing (and any TLS connection
    made with it by mistake fails verification rather than going unchecked)."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def ca_bundle_problem(ca_bundle: Path) -> str | None:
    """Why `ca_bundle` cannot be used, or None (for `tokend check` and start-up)."""
    try:
        ssl_context(ca_bundle)
    except CaBundleError as exc:
        return str(exc)
    return None


def _bundle_problem(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return "not a PEM file of CA certificates"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a PEM file"
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, PermissionError):
        return "not readable by this user"
    return exc.strerror or type(exc).__name__


_LISTEN = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]+)):(?P<port>\d{1,5})")


def split_listen(listen: str) -> tuple[str, int]:
    """`127.0.0.1:9464` or `[::1]:9464` -> (host, port)."""
    match = _LISTEN.fullmatch(listen)
    if not match or not 0 < int(match["port"]) < 65536:
        raise ValueError(f"'{listen}' is not host:port, e.g. 127.0.0.1:9464")
    return match["v6"] or match["host"], int(match["port"])


def listen_problem(listen: str) -> str | None:
    """Why `host:port` cannot be listened on now, or None (`tokend check`)."""
    host, port = split_listen(listen)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return f"cannot resolve host '{host}'"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the listener does
        try:
            probe.bind(address)
        except OSError as exc:
            busy = (
                " (is tokend already running with this config?)" if exc.errno == EADDRINUSE else ""
            )
            return f"cannot listen on {listen}: {exc.strerror}{busy}"
    return None
