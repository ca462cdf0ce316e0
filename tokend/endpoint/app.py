"""The endpoint's ASGI application: the App Service and IMDS managed-identity protocols (and the
original helper's `POST /requesttoken`, see `compat`), answered from the engine's current tokens.

A plain ASGI callable rather than a framework app: a token request costs one dict lookup, one
view of the engine and one small JSON body, so the protocol layer stays the cheap part. Nothing is
logged at INFO per request; refusals go to DEBUG without the values a client sent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from tokend.endpoint.catalog import Catalog, NotServed, Selector
from tokend.endpoint.options import IMDS_PATH, EndpointOptions
from tokend.endpoint.supply import Supply, Unavailable
from tokend.metrics import ENDPOINT_PROTOCOLS, ENDPOINT_RESULTS, Metrics
from tokend.token import Token

log = logging.getLogger("tokend.endpoint")

APP_SERVICE_API_VERSION = "2019-08-01"
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[[Scope, Receive], Awaitable["Answer"]]


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, Any]
    result: str
    """The metrics' `result` label."""
    headers: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Query:
    """A request's query parameters; a parameter given twice is refused (which would count?)."""

    params: dict[str, str] = field(default_factory=dict)
    repeated: bool = False

    @classmethod
    def parse(cls, raw: bytes) -> Query:
        params: dict[str, str] = {}
        repeated = False
        for key, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
            repeated = repeated or key in params
            params[key] = value
        return cls(params, repeated)

    def selector(self, *names: tuple[str, str]) -> Selector:
        """`names`: (query parameter, selector field) pairs this protocol knows."""
        given = {attr: self.params[param] for param, attr in names if self.params.get(param)}
        return Selector(**given)


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def app_service_error(status: int, message: str, result: str, **extra: Any) -> Answer:
    """App Service's error shape (what MSAL reads: `statusCode`, `message`)."""
    return Answer(status, {"statusCode": status, "message": message}, result, **extra)


def imds_error(status: int, error: str, message: str, result: str, **extra: Any) -> Answer:
    """IMDS's error shape (OAuth2-like: `error`, `error_description`)."""
    return Answer(status, {"error": error, "error_description": message}, result, **extra)


class EndpointApp:
    def __init__(
        self,
        options: EndpointOptions,
        *,
        catalog: Catalog,
        supply: Supply,
        metrics: Metrics,
        header_secret: str,
        extra_routes: dict[str, tuple[str, Handler]] | None = None,
    ) -> None:
        self.catalog = catalog
        self._supply = supply
        self._secret_digest = _digest(header_secret.encode())
        self._routes: dict[str, tuple[str, Handler]] = {}
        if "app_service" in options.protocols:
            self._routes[options.path] = ("app_service", self._app_service)
        if "imds" in options.protocols:
            self._routes[IMDS_PATH] = ("imds", self._imds)
        self._routes.update(extra_routes or {})
        self._count = {
            (protocol, result): metrics.endpoint_requests.labels(protocol, result)
            for protocol in ENDPOINT_PROTOCOLS
            for result in ENDPOINT_RESULTS
        }
        self._durations = {p: metrics.endpoint_duration.labels(p) for p in ENDPOINT_PROTOCOLS}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        protocol, handler = self._routes.get(scope["path"], ("other", _not_found))
        answer = await handler(scope, receive)
        body = json.dumps(answer.body, separators=(",", ":")).encode()
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": [
                    (b"content-type", b"application/json; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                    *answer.headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        self._count[protocol, answer.result].inc()
        self._durations[protocol].observe(time.perf_counter() - started)

    # --- App Service / Functions (api-version 2019-08-01) --------------------------------------

    async def _app_service(self, scope: Scope, receive: Receive) -> Answer:
        if scope["method"] != "GET":
            return app_service_error(405, "only GET is supported", "not_found")
        given = header(scope, b"x-identity-header")
        if given is None or not hmac.compare_digest(_digest(given), self._secret_digest):
            log.debug("app service request refused: X-IDENTITY-HEADER missing or wrong")
            return app_service_error(401, "X-IDENTITY-HEADER is missing or wrong", "unauthorized")
        query = Query.parse(scope["query_string"])
        resource = query.params.get("resource")
        if query.repeated or not resource:
            message = "give resource once (and each parameter once)"
            return app_service_error(400, message, "bad_request")
        if query.params.get("api-version") != APP_SERVICE_API_VERSION:
            message = f"api-version must be {APP_SERVICE_API_VERSION}"
            return app_service_error(400, message, "bad_request")
        selector = query.selector(
            ("client_id", "client_id"),
            ("principal_id", "principal_id"),
            ("object_id", "principal_id"),
            ("mi_res_id", "mi_res_id"),
        )
        try:
            entry = self.catalog.find(resource, selector)
        except NotServed as exc:
            return app_service_error(400, str(exc), "not_served")
        token = await self._supply.token(entry.token)
        if isinstance(token, Unavailable):
            return app_service_error(503, token.message, "unavailable", headers=token.headers)
        body = {
            "access_token": token.value,
            "expires_on": str(_epoch(token)),
            "resource": resource,
            "token_type": token.token_type,
            "client_id": entry.client_id,
        }
        return Answer(200, body, "success")

    # --- IMDS (api-version 2018-02-01 and later) ------------------------------------------------

    async def _imds(self, scope: Scope, receive: Receive) -> Answer:
        if scope["method"] != "GET":
            return imds_error(405, "invalid_request", "only GET is supported", "not_found")
        if header(scope, b"x-forwarded-for") is not None:
            log.debug("imds request refused: it came through a proxy (X-Forwarded-For)")
            message = "a request with X-Forwarded-For is refused (no proxied requests)"
            return imds_error(400, "invalid_request", message, "bad_request")
        metadata = header(scope, b"metadata")
        if metadata is None or metadata.lower() != b"true":
            message = "Required metadata header not specified"
            return imds_error(400, "invalid_request", message, "bad_request")
        query = Query.parse(scope["query_string"])
        resource = query.params.get("resource")
        if query.repeated or not resource or not query.params.get("api-version"):
            message = "give api-version and resource, each once"
            return imds_error(400, "invalid_request", message, "bad_request")
        selector = query.selector(
            ("client_id", "client_id"),
            ("object_id", "principal_id"),
            ("msi_res_id", "mi_res_id"),
            ("mi_res_id", "mi_res_id"),
        )
        try:
            entry = self.catalog.find(resource, selector)
        except NotServed as exc:
            error = "invalid_request" if exc.identity else "invalid_resource"
            return imds_error(400, error, str(exc), "not_served")
        token = await self._supply.token(entry.token)
        if isinstance(token, Unavailable):
            error, result = "temporarily_unavailable", "unavailable"
            return imds_error(503, error, token.message, result, headers=token.headers)
        expires_on = _epoch(token)
        now = int(self._supply.clock.now().timestamp())
        body = {
            "access_token": token.value,
            "refresh_token": "",
            "expires_in": str(max(expires_on - now, 0)),
            "expires_on": str(expires_on),
            "ext_expires_in": str(max(expires_on - now, 0)),
            "not_before": str(int(token.obtained_at.timestamp())),
            "resource": resource,
            "token_type": token.token_type,
            "client_id": entry.client_id,
        }
        return Answer(200, body, "success")


async def _not_found(scope: Scope, receive: Receive) -> Answer:
    known = "see the README: Local token endpoint"
    return Answer(404, {"error": "not_found", "error_description": known}, "not_found")


def _digest(value: bytes) -> bytes:
    """Compared as digests: equal length whatever was sent, so the compare is constant time."""
    return hashlib.sha256(value).digest()


def _epoch(token: Token) -> int:
    return int(token.expires_at.timestamp())
