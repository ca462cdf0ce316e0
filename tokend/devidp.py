"""The development identity provider behind `tokend dev`, and the fake Entra ID in tests.

It behaves like Microsoft Entra ID for app-only tokens: v1 (`/{tenant}/oauth2/token`,
`resource=`, numbers as strings, `expires_on`) and v2 (`/{tenant}/oauth2/v2.0/token`, one
`.default` scope, integer numbers), client secrets by form post or HTTP Basic, Entra-shaped errors
with AADSTS codes, OIDC discovery and a JWKS. Tokens are RS256-signed JWTs with short lifetimes,
so refreshes are visible within a minute. It listens on loopback only and is not an identity
provider for anything real.
"""

from __future__ import annotations

import base64
import hmac
import os
import secrets
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tokend.clock import SYSTEM_CLOCK, Clock
from tokend.deverror import entra_error
from tokend.devusers import DELEGATED_GRANTS, Users

DEV_TENANT = "dev-tenant"


@dataclass
class DevIdentityProvider:
    """An Entra-ID-shaped token service. `clients` maps client_id to client secret."""

    clients: dict[str, str]
    base_url: str = "http://127.0.0.1"
    lifetime: timedelta = timedelta(seconds=60)
    refresh_in: timedelta | None = None
    clock: Clock = SYSTEM_CLOCK
    issued: Counter[str] = field(default_factory=Counter)
    """Tokens issued so far, by client_id: tests use it to count requests that succeeded."""
    users: Users = field(default_factory=Users)
    """Users who sign in (password, refresh token and device code grants): `tokend.devusers`."""

    def __post_init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._kid = secrets.token_hex(8)
        self.app = Starlette(
            routes=[
                Route("/{tenant}/oauth2/token", self._token_v1, methods=["POST"]),
                Route("/{tenant}/oauth2/v2.0/token", self._token_v2, methods=["POST"]),
                Route("/{tenant}/oauth2/v2.0/devicecode", self._device_code, methods=["POST"]),
                Route("/{tenant}/v2.0/.well-known/openid-configuration", self._discovery),
                Route("/{tenant}/discovery/v2.0/keys", self._jwks),
            ]
        )

    def jwks(self) -> dict[str, Any]:
        key = RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        return {"keys": [{**key, "kid": self._kid, "use": "sig", "alg": "RS256"}]}

    def sign(self, claims: dict[str, Any]) -> str:
        """A JWT with `claims`, signed with the key the JWKS publishes."""
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self._kid})

    def issuer(self, tenant: str) -> str:
        return f"{self.base_url}/{tenant}/v2.0"

    async def _discovery(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        return JSONResponse(
            {
                "issuer": self.issuer(tenant),
                "token_endpoint": f"{self.base_url}/{tenant}/oauth2/v2.0/token",
                "jwks_uri": f"{self.base_url}/{tenant}/discovery/v2.0/keys",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "client_secret_basic",
                ],
                "grant_types_supported": ["client_credentials"],
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        )

    async def _jwks(self, request: Request) -> Response:
        return JSONResponse(self.jwks())

    async def _token_v1(self, request: Request) -> Response:
        return await self._token(request, version=1)

    async def _token_v2(self, request: Request) -> Response:
        return await self._token(request, version=2)

    async def _device_code(self, request: Request) -> Response:
        return await self.users.device_code(self, request)

    async def _token(self, request: Request, *, version: int) -> Response:
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
        if form.get("grant_type") in DELEGATED_GRANTS:
            return await self.users.token(self, request, form, version)
        client_id, rejection = self._authenticate(request, form)
        if rejection is not None:
            return rejection
        if form.get("grant_type") != "client_credentials":
            return entra_error(
                400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type."
            )
        if version == 1:
            audience = form.get("resource")
            if not audience:
                return _missing_parameter("resource")
        else:
            scope = form.get("scope")
            if not scope:
                return _missing_parameter("scope")
            if len(scope.split()) != 1 or not scope.endswith("/.default"):
                return entra_error(
                    400,
                    "invalid_scope",
                    1002012,
                    "The provided value for scope is not valid. Client credential flows must "
                    "have a scope value with /.default suffixed to the resource identifier.",
                )
            audience = scope.removesuffix("/.default")
        tenant = request.path_params["tenant"]
        self.issued[client_id] += 1
        return JSONResponse(self.token_body(tenant, client_id, audience, version))

    def _authenticate(self, request: Request, form: dict[str, str]) -> tuple[str, Response | None]:
        if "client_assertion" in form or "client_assertion_type" in form:
            return self.authenticate_assertion(request, form)
        client_id, secret = form.get("client_id", ""), form.get("client_secret")
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic "):
            try:
                pair = base64.b64decode(header[6:], validate=True).decode()
                basic_id, basic_secret = (unquote(part) for part in pair.split(":", 1))
            except ValueError:
                return "", entra_error(
                    401, "invalid_client", 7000216, "Malformed client credentials."
                )
            client_id, secret = basic_id, basic_secret
        if not client_id:
            return "", _missing_parameter("client_id")
        expected = self.clients.get(client_id)
        if expected is None:
            return client_id, entra_error(
                401,
                "invalid_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory.",
            )
        if secret is None:
            return client_id, entra_error(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' "
                "or 'client_secret'.",
            )
        if not hmac.compare_digest(secret.encode(), expected.encode()):
            return client_id, entra_error(
                401, "invalid_client", 7000215, "Invalid client secret provided."
            )
        return client_id, None

    def authenticate_assertion(
        self, request: Request, form: dict[str, str]
    ) -> tuple[str, Response | None]:
        """Client assertions (certificates, federation): not known here; the fake Entra ID of
        the tests checks them."""
        return form.get("client_id", ""), entra_error(
            401, "invalid_client", 7000218, "This provider accepts client secrets only."
        )

    def token_body(
        self, tenant: str, client_id: str, audience: str, version: int
    ) -> dict[str, Any]:
        """A token response as Entra ID sends it (v1: numbers as strings, `expires_on`)."""
        now = self.clock.now()
        issued_at = int(now.timestamp())
        lifetime = int(self.lifetime.total_seconds())
        claims = {
            "aud": audience,
            "iss": self.issuer(tenant) if version == 2 else f"{self.base_url}/{tenant}/",
            "iat": issued_at,
            "nbf": issued_at,
            "exp": issued_at + lifetime,
            "tid": tenant,
            "sub": client_id,
            "oid": str(uuid.uuid5(uuid.NAMESPACE_URL, client_id)),
            "idtyp": "app",
            "ver": f"{version}.0",
            "jti": uuid.uuid4().hex,
            ("azp" if version == 2 else "appid"): client_id,
        }
        token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self._kid})
        if version == 1:
            return {
                "token_type": "Bearer",
                "expires_in": str(lifetime),
                "ext_expires_in": str(lifetime),
                "expires_on": str(issued_at + lifetime),
                "not_before": str(issued_at),
                "resource": audience,
                "access_token": token,
            }
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        }
        if self.refresh_in is not None:
            body["refresh_in"] = int(self.refresh_in.total_seconds())
        return body


def _missing_parameter(name: str) -> Response:
    return entra_error(
        400,
        "invalid_request",
        900144,
        f"The request body must contain the following parameter: '{name}'.",
    )


DEV_IDP_LISTEN = "127.0.0.1:9477"
DEV_CLIENT_ID = "tokend-dev"
DEV_SECRET_ENV = "TOKEND_DEV_CLIENT_SECRET"  # noqa: S105 - a variable name, not a secret


def dev_config_path() -> Path:
    """The bundled `dev.yaml` (the repository's `config/dev.yaml`)."""
    return Path(__file__).with_name("dev.yaml")


def dev_idp_app() -> Starlette:
    """The development identity provider to serve on `DEV_IDP_LISTEN`, knowing the one dev
    client whose secret `tokend dev` put in `$TOKEND_DEV_CLIENT_SECRET`."""
    provider = DevIdentityProvider(
        clients={DEV_CLIENT_ID: os.environ[DEV_SECRET_ENV]},
        base_url=f"http://{DEV_IDP_LISTEN}",
    )
    return provider.app
