"""Kubernetes API failures as one line each, saying what an operator should do about them.

lightkube raises `ApiError` (an `httpx2.HTTPStatusError` carrying the API's `Status`) for HTTP
errors and plain httpx2 exceptions for network failures. Both carry the request, whose
`Authorization` header holds tokend's credentials: `classify()` copies only the status code,
reason and (redacted) message into a `KubeError`, and callers raise it `from None`.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tokend.errors import TokendError
from tokend.redaction import redactor

if TYPE_CHECKING:
    import httpx2

_MAX_DETAIL = 200
_VERB = re.compile(r'cannot (\w+) resource "')


class KubeError(TokendError):
    """A request to the Kubernetes API failed. `str()` is one line naming the object."""

    def __init__(self, message: str, *, code: str, transient: bool = False) -> None:
        super().__init__(message, code=code, transient=transient)


@dataclass(frozen=True, slots=True)
class Attempt:
    """What was being tried, for the message: `who` may `verb` `resource`/`name` in `namespace`."""

    who: str
    """tokend's identity as messages name it: `tokend's service account`."""
    verb: str
    resource: str
    name: str | None
    namespace: str | None
    where: str
    """The object as messages start: `kubernetes secret apps/crm-token`."""

    def refused(self, verb: str | None = None) -> str:
        target = f"{self.resource}/{self.name}" if self.name else self.resource
        place = f" in namespace {self.namespace}" if self.namespace else ""
        return f"{self.who} cannot {verb or self.verb} {target}{place}"


def classify(exc: BaseException, attempt: Attempt) -> KubeError:
    """`exc` from lightkube or httpx2, raised during `attempt`, as a `KubeError`."""
    import httpx2  # loaded already by whatever raised `exc`

    if isinstance(exc, KubeError):
        return exc
    if isinstance(exc, httpx2.HTTPStatusError):
        return _status_error(exc, attempt)
    if isinstance(exc, httpx2.TimeoutException):
        return KubeError(
            f"{attempt.where}: no answer from the API server in time ({type(exc).__name__})",
            code="kube_unavailable",
            transient=True,
        )
    if isinstance(exc, httpx2.TransportError):
        reason = "cannot connect to the API server"
        if isinstance(exc.__context__, ssl.SSLError) or "CERTIFICATE" in str(exc):
            reason = "TLS handshake with the API server failed (check its CA certificate)"
        return KubeError(
            f"{attempt.where}: {reason} ({type(exc).__name__})",
            code="kube_unavailable",
            transient=True,
        )
    return KubeError(
        f"{attempt.where}: unexpected {type(exc).__name__}", code="kube_internal", transient=True
    )


def _status_error(exc: httpx2.HTTPStatusError, attempt: Attempt) -> KubeError:
    code = exc.response.status_code
    status = getattr(exc, "status", None)
    message = detail(getattr(status, "message", None) or "")
    where = attempt.where
    if code == 401:
        return KubeError(
            f"{where}: the API server does not accept tokend's credentials (HTTP 401): "
            "check the service-account token or the kubeconfig user",
            code="kube_unauthorized",
        )
    if code == 403:
        verb = _VERB.search(message)
        return KubeError(
            f"{where}: {attempt.refused(verb[1] if verb else None)} "
            "(its Role must allow this; a namespace that does not exist looks the same)",
            code="kube_forbidden",
        )
    if code == 404:
        kind = _details_kind(status)
        if kind == "namespaces":
            return KubeError(
                f"{where}: namespace {attempt.namespace} does not exist", code="kube_no_namespace"
            )
        return KubeError(f"{where}: not found ({message or 'HTTP 404'})", code="kube_not_found")
    if code == 409:
        return KubeError(
            f"{where}: conflict: {message or 'HTTP 409'}", code="kube_conflict", transient=True
        )
    if code == 422:
        return KubeError(
            f"{where}: the API server refused it as invalid: {message or 'HTTP 422'}",
            code="kube_invalid",
        )
    transient = code == 429 or code >= 500
    return KubeError(
        f"{where}: the API server answered HTTP {code}" + (f": {message}" if message else ""),
        code="kube_unavailable" if transient else f"kube_http_{code}",
        transient=transient,
    )


def is_conflict(exc: BaseException) -> bool:
    return _status_code(exc) == 409


def is_not_found(exc: BaseException) -> bool:
    return _status_code(exc) == 404


def _status_code(exc: BaseException) -> int | None:
    import httpx2  # loaded already by whatever raised `exc`

    return exc.response.status_code if isinstance(exc, httpx2.HTTPStatusError) else None


def detail(text: str) -> str:
    """The API's message on one line, redacted and cut short."""
    return redactor.shown(" ".join(text.split()), _MAX_DETAIL)


def _details_kind(status: Any) -> str | None:
    details = getattr(status, "details", None)
    kind = getattr(details, "kind", None)
    return kind if isinstance(kind, str) else None
