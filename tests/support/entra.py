"""The fake Entra ID's credential checks: tokend's development identity provider, plus
- client assertions checked as strictly as Entra ID checks them: a certificate assertion's
  header (`alg`, `typ`, `x5t#S256` naming a registered certificate, `x5t` too on the v1
  endpoint, `x5c` if sent), signature, `iss`/`sub`, `aud` (the very URL requested), lifetime
  (at most 10 minutes, valid now) and a `jti` never seen before; a federated assertion's
  signature, issuer, subject, audience and lifetime against the app's federated credential;
- the v1 discovery document (v1 tokens name `{base}/{tenant}/` as issuer);
- the managed identity endpoints: IMDS (`/metadata/identity/oauth2/token`, `Metadata: true`,
  api-version 2018-02-01) and App Service (`/msi/token`, `X-IDENTITY-HEADER`, 2019-08-01).
AADSTS codes are Entra ID's where its documentation names them.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tokend.deverror import entra_error
from tokend.devidp import DevIdentityProvider

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
MAX_ASSERTION_LIFETIME = 600
SKEW = 300


@dataclass(frozen=True)
class FederatedTrust:
    """An app's federated identity credential: tokens of this issuer and subject."""

    issuer: str
    subject: str
    public_key: RSAPublicKey
    audience: str = EXCHANGE_AUDIENCE


@dataclass(frozen=True)
class Accepted:
    client_id: str
    kind: str  # certificate or federated
    header: dict[str, Any]
    claims: dict[str, Any]
    assertion: str
    path: str


def thumbprint(certificate: x509.Certificate, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm, certificate.public_bytes(serialization.Encoding.DER))
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()


@dataclass
class EntraFake(DevIdentityProvider):
    certificates: dict[str, list[x509.Certificate]] = field(default_factory=dict)
    federations: dict[str, FederatedTrust] = field(default_factory=dict)
    accepted: list[Accepted] = field(default_factory=list)
    seen_jti: set[str] = field(default_factory=set)
    identity_header: str = "identity-header-unset"
    mi_tenant: str = "test-tenant"
    system_identity: str | None = "system-mi-client"
    """The client id of the machine's system-assigned identity (None: it has none)."""
    user_identities: dict[str, str] = field(default_factory=dict)
    """User-assigned identities: each of client_id, object_id, msi_res_id -> its client id."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.app.router.routes.extend(
            [
                Route("/{tenant}/.well-known/openid-configuration", self._discovery_v1),
                Route("/metadata/identity/oauth2/token", self._imds, methods=["GET"]),
                Route("/msi/token", self._app_service, methods=["GET"]),
            ]
        )

    def sign(self, claims: dict[str, Any], key: Any = None, kid: str | None = None) -> str:
        """A JWT with these claims, signed by this provider's key (or `key`), as it signs."""
        return jwt.encode(
            claims, key or self._key, algorithm="RS256", headers={"kid": kid or self._kid}
        )

    def reset_credentials(self) -> None:
        self.certificates.clear()
        self.federations.clear()
        self.accepted.clear()
        self.seen_jti.clear()
        self.user_identities.clear()

    # --- client assertions ----------------------------------------------------------------

    def authenticate_assertion(
        self, request: Request, form: dict[str, str]
    ) -> tuple[str, Response | None]:
        client_id = form.get("client_id", "")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            return client_id, entra_error(400, "invalid_request", 50027, "client_assertion_type")
        assertion = form.get("client_assertion", "")
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            return client_id, entra_error(401, "invalid_client", 50027, "JWT token is malformed.")
        if "x5t#S256" in header or "x5t" in header or client_id not in self.federations:
            problem = self._certificate_problem(request, client_id, header, assertion)
            kind = "certificate"
        else:
            problem = self._federation_problem(client_id, assertion)
            kind = "federated"
        if problem is not None:
            return client_id, entra_error(401, "invalid_client", *problem)
        self.accepted.append(Accepted(client_id, kind, header, claims, assertion, request.url.path))
        return client_id, None

    def _certificate_problem(
        self, request: Request, client_id: str, header: dict[str, Any], assertion: str
    ) -> tuple[int, str] | None:
        certificates = self.certificates.get(client_id)
        if not certificates:
            return 700016, f"Application '{client_id}' has no certificate credential."
        if header.get("alg") not in ("RS256", "PS256") or header.get("typ") != "JWT":
            return 5002738, f"Unsupported assertion header alg={header.get('alg')}."
        by_sha256 = {thumbprint(cert): cert for cert in certificates}
        cert = by_sha256.get(header.get("x5t#S256", ""))
        if cert is None:
            return 700027, "Client assertion failed signature validation. The key was not found."
        v1 = request.url.path.endswith("/oauth2/token")
        if v1 and header.get("x5t") != thumbprint(cert, "sha1"):
            return 700027, "The v1 endpoint wants x5t (SHA-1) naming the same certificate."
        x5c = header.get("x5c")
        if x5c is not None and base64.b64decode(x5c[0]) != cert.public_bytes(
            serialization.Encoding.DER
        ):
            return 700027, "x5c does not start with the certificate x5t#S256 names."
        try:
            claims = jwt.decode(
                assertion,
                cert.public_key(),  # type: ignore[arg-type]
                algorithms=[header["alg"]],
                options={"verify_aud": False, "verify_exp": False, "verify_nbf": False,
                         "verify_iat": False},
            )  # fmt: skip
        except jwt.PyJWTError:
            return 700027, "Client assertion failed signature validation."
        if claims.get("iss") != client_id or claims.get("sub") != client_id:
            return 700021, "Client assertion application identifier doesn't match client_id."
        if claims.get("aud") != str(request.url):
            return 700023, f"Client assertion audience {claims.get('aud')!r} is not the endpoint."
        if (problem := self._lifetime_problem(claims)) is not None:
            return problem
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or jti in self.seen_jti:
            return 7000274, "Client assertion jti is missing or was used before (replay)."
        self.seen_jti.add(jti)
        return None

    def _lifetime_problem(self, claims: dict[str, Any]) -> tuple[int, str] | None:
        now = self.clock.now().timestamp()
        nbf, exp = claims.get("nbf", claims.get("iat")), claims.get("exp")
        if not isinstance(nbf, int) or not isinstance(exp, int):
            return 700024, "Client assertion lacks nbf/iat or exp."
        if nbf > now + SKEW or exp <= now or exp - nbf > MAX_ASSERTION_LIFETIME:
            return 700024, "Client assertion is not within its valid time range."
        return None

    def _federation_problem(self, client_id: str, assertion: str) -> tuple[int, str] | None:
        trust = self.federations[client_id]
        try:
            claims = jwt.decode(
                assertion,
                trust.public_key,
                algorithms=["RS256"],
                options={"verify_aud": False, "verify_exp": False, "verify_nbf": False,
                         "verify_iat": False, "verify_iss": False},
            )  # fmt: skip
        except jwt.PyJWTError:
            return 50013, "Assertion failed signature validation."
        if claims.get("iss") != trust.issuer:
            return 700211, "No matching federated identity record found for presented issuer."
        if claims.get("sub") != trust.subject:
            return 700213, "No matching federated identity record found for presented subject."
        audience = claims.get("aud")
        if trust.audience not in ([audience] if isinstance(audience, str) else audience or []):
            return 700212, "No matching federated identity record found for the audience."
        now = self.clock.now().timestamp()
        if not isinstance(claims.get("exp"), int) or claims["exp"] <= now:
            return 700024, "Client assertion is not within its valid time range."
        return None

    # --- discovery (v1) ---------------------------------------------------------------------

    async def _discovery_v1(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        return JSONResponse(
            {
                "issuer": f"{self.base_url}/{tenant}/",
                "token_endpoint": f"{self.base_url}/{tenant}/oauth2/token",
                "jwks_uri": f"{self.base_url}/{tenant}/discovery/v2.0/keys",
            }
        )

    # --- managed identity -----------------------------------------------------------------

    async def _imds(self, request: Request) -> Response:
        if request.headers.get("metadata") != "true":
            return _msi_error(400, "invalid_request", "Required metadata header not specified")
        return self._managed(request, "2018-02-01", ("client_id", "object_id", "msi_res_id"))

    async def _app_service(self, request: Request) -> Response:
        if request.headers.get("x-identity-header") != self.identity_header:
            return _msi_error(401, "invalid_request", "X-IDENTITY-HEADER missing or wrong")
        return self._managed(request, "2019-08-01", ("client_id", "object_id", "mi_res_id"))

    def _managed(self, request: Request, version: str, selectors: tuple[str, ...]) -> Response:
        query = request.query_params
        if query.get("api-version") != version:
            return _msi_error(400, "invalid_request", f"api-version must be {version}")
        resource = query.get("resource")
        if not resource:
            return _msi_error(400, "invalid_request", "Required query variable 'resource' missing")
        chosen = [query[key] for key in selectors if key in query]
        if len(chosen) > 1:
            return _msi_error(400, "invalid_request", "Give at most one identity selector")
        client_id = self.user_identities.get(chosen[0]) if chosen else self.system_identity
        if client_id is None:
            return _msi_error(400, "invalid_request", "Identity not found")
        self.issued[client_id] += 1
        body = self.token_body(self.mi_tenant, client_id, resource, version=1)
        if version == "2019-08-01":  # App Service: expires_on (epoch) and client_id only
            body = {key: body[key] for key in ("access_token", "expires_on", "resource")}
            body |= {"token_type": "Bearer", "client_id": client_id}
        else:
            body["refresh_token"] = ""
        return JSONResponse(body)


def _msi_error(status: int, error: str, description: str) -> Response:
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


def certificate_identity(
    provider: DevIdentityProvider, base_url: str, directory: Path, client_id: str = "signer"
) -> dict[str, Any]:
    """An identity with a certificate credential that `provider` (an EntraFake) accepts: a new
    certificate, registered for `client_id`, its files written to `directory`."""
    from tests.support.certs import client_cert
    from tests.support.idp import TENANT

    assert isinstance(provider, EntraFake)
    cert = client_cert(client_id)
    cert_path, key_path = cert.write(directory, client_id)
    provider.certificates[client_id] = [cert.certificate]
    return {
        "tenant": TENANT,
        "authority_host": base_url,
        "allow_insecure_http": True,
        "client_id": client_id,
        "credential": {"type": "certificate", "certificate": {"file": str(cert_path)},
                       "private_key": {"file": str(key_path)}},
    }  # fmt: skip
