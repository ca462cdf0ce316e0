"""Vault failures as one line each: the URL concerned and what an operator should do about it.

hvac raises one exception class per HTTP status, and `requests` one per network failure; their
text holds Vault's multi-line error lists and sometimes a response body. `classify()` maps them
to a `VaultError` whose text is short, names the path, and never carries a token or a secret
(Vault's own wording is passed through only after redaction, and only where it helps).
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from tokend.errors import TokendError
from tokend.redaction import redactor

_MAX_DETAIL = 200


class Problem(StrEnum):
    DENIED = "denied"  # the token is valid but its policy does not allow this
    LOGIN = "login"  # no valid token can be had: bad role/secret ID, expired or revoked token
    NOT_FOUND = "not_found"  # nothing at that path (not an error for a sink's first write)
    NO_MOUNT = "no_mount"  # no secrets engine is mounted there, or not the kind expected
    CONFLICT = "conflict"  # check-and-set: someone else wrote first
    INVALID = "invalid"  # Vault rejected the request as malformed
    ADDRESS = "address"  # not a Vault to talk to: a redirect, plain http to an https port
    SEALED = "sealed"
    UNAVAILABLE = "unavailable"  # unreachable, timed out, 5xx, rate limited, not initialized
    INTERNAL = "internal"  # a bug in tokend or an answer it does not understand


TRANSIENT = frozenset({Problem.SEALED, Problem.UNAVAILABLE})


class VaultError(TokendError):
    """A Vault operation failed. `str()` is one line naming the URL; `problem` says what kind
    (and is the error's `code`)."""

    def __init__(self, where: str, message: str, problem: Problem) -> None:
        super().__init__(
            f"{where}: {message}", code=f"vault_{problem.value}", transient=problem in TRANSIENT
        )
        self.problem = problem


def classify(exc: BaseException, where: str, action: str, timeout: float) -> VaultError:
    """`exc` from hvac or requests, raised while trying to `action` (e.g. "write this secret")
    at `where`."""
    if isinstance(exc, VaultError):
        return exc
    address = _address_problem(exc)
    if address is not None:
        return VaultError(where, address, Problem.ADDRESS)
    network = _network_problem(exc, timeout)
    if network is not None:
        return VaultError(where, network, Problem.UNAVAILABLE)
    import hvac.exceptions as hx

    if not isinstance(exc, hx.VaultError):
        return VaultError(where, f"unexpected {type(exc).__name__}", Problem.INTERNAL)
    detail = vault_detail(exc)
    if isinstance(exc, hx.Forbidden | hx.Unauthorized):
        return VaultError(
            where,
            f"permission denied: the Vault policy of tokend's token does not allow it to {action}"
            " (check the policy)",
            Problem.DENIED,
        )
    if isinstance(exc, hx.VaultDown):
        if "sealed" in detail.lower():
            return VaultError(where, "Vault is sealed (unseal it)", Problem.SEALED)
        return VaultError(where, _with("Vault is unavailable (HTTP 503)", detail), Problem.SEALED)
    if isinstance(exc, hx.InvalidPath):
        return _not_found(exc, where, detail)
    if isinstance(exc, hx.InvalidRequest):
        return _refused(where, action, detail)
    if isinstance(exc, hx.VaultNotInitialized):
        return VaultError(where, "Vault is not initialized", Problem.UNAVAILABLE)
    if isinstance(exc, hx.RateLimitExceeded):
        return VaultError(where, "rate limited by Vault (HTTP 429)", Problem.UNAVAILABLE)
    status = _STATUS.get(type(exc).__name__, "an unexpected status")
    return VaultError(where, _with(f"Vault answered with {status}", detail), Problem.UNAVAILABLE)


_STATUS = {"InternalServerError": "HTTP 500", "BadGateway": "HTTP 502"}


def _address_problem(exc: BaseException) -> str | None:
    """Why the configured address is the wrong place to talk to Vault, or None."""
    from tokend.vault.http import HttpsPort, RedirectRefused

    if isinstance(exc, RedirectRefused):
        return (
            f"Vault answered with a redirect to {exc.target}, which tokend does not follow "
            "(set vault.address to where Vault answers itself)"
        )
    text = str(getattr(exc, "text", None) or "")
    if isinstance(exc, HttpsPort) or "HTTP request to an HTTPS server" in text:
        return "this address speaks HTTPS: write vault.address with https://"
    return None


def _network_problem(exc: BaseException, timeout: float) -> str | None:
    """A network failure described, or None when `exc` is not one."""
    import requests.exceptions as rx

    if isinstance(exc, rx.SSLError):
        return "TLS handshake failed (check vault.ca_bundle and the server's certificate)"
    if isinstance(exc, rx.Timeout):
        return f"no answer from Vault within {timeout:g}s"
    if isinstance(exc, rx.ConnectionError):
        return "cannot connect to Vault (connection refused, reset or name not resolved)"
    if isinstance(exc, rx.RequestException):
        return f"request to Vault failed ({type(exc).__name__})"
    if isinstance(exc, OSError) and "CA certificate bundle" in str(exc):
        return "cannot use the CA bundle (check vault.ca_bundle: it must be a readable PEM file)"
    return None


def _refused(where: str, action: str, detail: str) -> VaultError:
    """An HTTP 400."""
    if "Upgrading from non-versioned to versioned data" in detail:  # a KV v2 mount just made
        return VaultError(
            where, "the KV mount is upgrading to version 2 (for a moment)", Problem.UNAVAILABLE
        )
    if "check-and-set" in detail:
        return VaultError(where, "changed by another writer meanwhile", Problem.CONFLICT)
    return VaultError(where, _with(f"Vault refused to {action}", detail), Problem.INVALID)


def _not_found(exc: Any, where: str, detail: str) -> VaultError:
    if "no handler for route" in detail:
        return VaultError(
            where, "no secrets engine is mounted at this path (check the mount)", Problem.NO_MOUNT
        )
    if "versioned K/V" in _warnings(exc):
        return VaultError(
            where,
            "this is a KV version 2 mount: its secrets are at MOUNT/data/PATH (kv_version: 2)",
            Problem.NO_MOUNT,
        )
    return VaultError(where, "nothing is stored at this path", Problem.NOT_FOUND)


def vault_detail(exc: Any) -> str:
    """Vault's first error message, on one line, redacted and cut short ('' if none)."""
    errors = getattr(exc, "errors", None) or []
    text = str(errors[0]) if errors else ""
    text = re.sub(r"\d+ errors? occurred:", "", text)
    return redactor.shown(" ".join(text.replace("*", " ").split()), _MAX_DETAIL)


def _warnings(exc: Any) -> str:
    body = getattr(exc, "json", None)
    warnings = body.get("warnings") if isinstance(body, dict) else None
    return " ".join(str(w) for w in warnings) if isinstance(warnings, list) else ""


def _with(message: str, detail: str) -> str:
    return f"{message}: {detail}" if detail else message
