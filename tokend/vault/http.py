"""The HTTP session under every hvac client tokend makes: it follows no redirect, sends loopback
traffic past any proxy, and says who is asking.

- **No redirects.** A Vault address answering 307 to another host or scheme would otherwise be
  sent `X-Vault-Token` and, at login, the AppRole `secret_id`, in cleartext if the new URL is
  `http://`. tokend follows none: a 3xx answer is an error naming where it pointed (scheme, host
  and port only), so an operator can set `vault.address` to the right place. (Vault itself
  forwards requests from standby nodes to the active one; it only redirects when that is turned
  off, and then the address should be the load balancer or the active node anyway.)
- **Proxies.** requests honours `HTTP(S)_PROXY` from the environment (`trust_env`). A loopback
  Vault (a local agent, a test server) is never reached through a proxy; a remote Vault keeps
  honouring the proxy settings and `NO_PROXY`.
- **User-Agent** `tokend/<version>`, so Vault's audit log and any proxy say who made a request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from tokend.transport import USER_AGENT, is_loopback


class RedirectRefused(requests.exceptions.RequestException):
    """Vault answered with a redirect, which tokend does not follow. `str()` names the target
    (scheme, host and port: never a path or query, which might carry something private)."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.target = target


class HttpsPort(requests.exceptions.RequestException):
    """Plain http sent to a port that speaks TLS (Go's servers answer a bare HTTP/1.0 400, then
    hang up, often before the body can be read)."""


def vault_http_session(address: str, ca_bundle: Path | None) -> requests.Session:
    """A requests session for the Vault at `address` (hvac uses it for every call)."""
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    session.verify = str(ca_bundle) if ca_bundle else True
    session.trust_env = not is_loopback(urlsplit(address).hostname or "")
    session.max_redirects = 0
    session.hooks["response"].append(_refuse_redirect)
    return session


def _refuse_redirect(response: requests.Response, *args: Any, **kwargs: Any) -> None:
    """A response hook: runs before requests would follow a redirect (or read the body)."""
    if response.status_code == 400 and not response.headers and response.raw.version == 10:
        response.close()  # Vault answers HTTP/1.1 with headers; this is Go's TLS listener
        raise HttpsPort("plain http to an https port")
    if not 300 <= response.status_code < 400:
        return
    location = urljoin(response.url, response.headers.get("Location", ""))
    response.close()
    raise RedirectRefused(_origin(location))


def _origin(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # not a number
        port = ""
    return f"{parts.scheme or '?'}://{host}{port}"
