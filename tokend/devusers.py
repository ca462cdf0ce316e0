"""Users of the development identity provider: delegated sign-ins as Entra ID does them.

- The password grant (ROPC) at v1 (`resource=`) and v2 (`scope=`, delegated permissions); a
  public client sends no secret, a confidential one authenticates as for client credentials.
- Refresh tokens that rotate: every answer to a user's sign-in brings a new one, and each is
  good once (a spent one is `invalid_grant`, as at a strict server), within its lifetime.
- The device code flow (RFC 8628): `/{tenant}/oauth2/v2.0/devicecode`, then polling the token
  endpoint, answered `authorization_pending` until the test approves the code, `slow_down` to
  a client polling faster than `interval`, `expired_token` after `expires_in`.
- Entra ID's refusals of a user: wrong password (AADSTS50126), MFA required (50076), locked
  (50053), expired password (50055), consent missing (65001).
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tokend.deverror import entra_error

if TYPE_CHECKING:
    from tokend.devidp import DevIdentityProvider

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DELEGATED_GRANTS = frozenset({"password", "refresh_token", DEVICE_CODE_GRANT})
_SIGN_IN_SCOPES = frozenset({"openid", "profile", "email", "offline_access"})


@dataclass
class _Grant:
    """What a refresh token or an approved device code stands for."""

    tenant: str
    client_id: str
    username: str
    expires_at: datetime | None = None


@dataclass
class _DeviceCode:
    tenant: str
    client_id: str
    scope: str
    user_code: str
    expires_at: datetime
    interval: int
    last_poll: datetime | None = None
    approved_by: str | None = None
    declined: bool = False


@dataclass
class Users:
    """The provider's users and what they have been given. Tests read and change it freely."""

    passwords: dict[str, str] = field(default_factory=dict)
    public_clients: set[str] = field(default_factory=set)
    mfa_required: set[str] = field(default_factory=set)
    locked: set[str] = field(default_factory=set)
    password_expired: set[str] = field(default_factory=set)
    unconsented: set[str] = field(default_factory=set)
    """Audiences (resources) the users have not consented to: 65001 for tokens for them."""
    refresh_token_prefix: str = "rt-"  # noqa: S105 - how tokens start, not a secret
    refresh_token_lifetime: timedelta | None = None
    device_code_lifetime: timedelta = timedelta(minutes=15)
    device_code_interval: int = 5
    """The polling interval the provider announces, in seconds."""
    device_code_spacing: int | None = None
    """The spacing it enforces (`slow_down` to a poll that comes sooner): the announced interval
    unless set (a server that wants clients to slow down)."""
    issued: list[str] = field(default_factory=list)
    """Every refresh token issued, oldest first."""
    spent: list[str] = field(default_factory=list)
    """Every refresh token redeemed, in order."""
    refused: list[str] = field(default_factory=list)
    """Refresh tokens presented but refused (spent already, unknown, expired)."""
    grants: list[str] = field(default_factory=list)
    """The grant type of every delegated token request that succeeded, in order."""
    given_with: dict[str, str] = field(default_factory=dict)
    """The refresh token given with each access token."""
    _live: dict[str, _Grant] = field(default_factory=dict)
    _codes: dict[str, _DeviceCode] = field(default_factory=dict)

    # --- for tests ----------------------------------------------------------------------------

    def approve(self, user_code: str, username: str) -> None:
        """The user signs in at the verification URL and enters `user_code`."""
        self._code_by_user_code(user_code).approved_by = username

    def decline(self, user_code: str) -> None:
        self._code_by_user_code(user_code).declined = True

    def revoke_all(self) -> None:
        """Every refresh token dies (a password reset, an administrator's revocation)."""
        self._live.clear()

    def _code_by_user_code(self, user_code: str) -> _DeviceCode:
        return next(code for code in self._codes.values() if code.user_code == user_code)

    # --- endpoints ----------------------------------------------------------------------------

    async def device_code(self, provider: DevIdentityProvider, request: Request) -> Response:
        form = await _form(request)
        client_id, scope = form.get("client_id", ""), form.get("scope", "")
        if client_id not in self.public_clients:
            return entra_error(400, "invalid_client", 7000218, "The app is not a public client.")
        if not scope:
            return entra_error(400, "invalid_request", 900144, "The request must contain 'scope'.")
        device_code = secrets.token_urlsafe(32)
        letters = "BCDFGHJKLMNPQRSTVWXZ"
        user_code = "".join(secrets.choice(letters) for _ in range(8))
        lifetime = int(self.device_code_lifetime.total_seconds())
        self._codes[device_code] = _DeviceCode(
            request.path_params["tenant"],
            client_id,
            scope,
            user_code,
            provider.clock.now() + self.device_code_lifetime,
            self.device_code_spacing or self.device_code_interval,
        )
        verification = f"{provider.base_url}/devicelogin"
        return JSONResponse(
            {
                "device_code": device_code,
                "user_code": user_code,
                "verification_uri": verification,
                "expires_in": lifetime,
                "interval": self.device_code_interval,
                "message": f"To sign in, use a web browser to open the page {verification} and "
                f"enter the code {user_code} to authenticate.",
            }
        )

    async def token(
        self, provider: DevIdentityProvider, request: Request, form: dict[str, str], version: int
    ) -> Response:
        """A delegated token request (`form["grant_type"]` is one of `DELEGATED_GRANTS`)."""
        tenant, grant_type = request.path_params["tenant"], form["grant_type"]
        if grant_type == DEVICE_CODE_GRANT:
            outcome = self._device_code_grant(provider, tenant, form)
        else:
            client_id, rejection = self._authenticate(provider, request, form)
            if rejection is not None:
                return rejection
            if grant_type == "password":
                outcome = self._password_grant(tenant, client_id, form)
            else:
                outcome = self._refresh_grant(provider, tenant, client_id, form)
        if isinstance(outcome, Response):
            return outcome
        audience, problem = _audience(form, version)
        if problem is not None:
            return problem
        if audience in self.unconsented:
            return entra_error(
                400, "invalid_grant", 65001, "The user or administrator has not consented."
            )
        self.grants.append(grant_type)
        return JSONResponse(self._token_body(provider, outcome, form, audience, version))

    def _authenticate(
        self, provider: DevIdentityProvider, request: Request, form: dict[str, str]
    ) -> tuple[str, Response | None]:
        client_id = form.get("client_id", "")
        if client_id in self.public_clients and "client_secret" not in form:
            return client_id, None
        return provider._authenticate(request, form)

    def _password_grant(self, tenant: str, client_id: str, form: dict[str, str]) -> Any:
        username, password = form.get("username", ""), form.get("password", "")
        expected = self.passwords.get(username)
        if expected is None:
            return entra_error(400, "invalid_grant", 50034, "The user account does not exist.")
        if username in self.locked:
            return entra_error(400, "invalid_grant", 50053, "The account is locked.")
        if not hmac.compare_digest(password.encode(), expected.encode()):
            return entra_error(400, "invalid_grant", 50126, "Error validating credentials.")
        if username in self.password_expired:
            return entra_error(400, "invalid_grant", 50055, "The password is expired.")
        if username in self.mfa_required:
            return entra_error(
                400, "invalid_grant", 50076, "You must use multi-factor authentication."
            )
        return _Grant(tenant, client_id, username)

    def _refresh_grant(
        self, provider: DevIdentityProvider, tenant: str, client_id: str, form: dict[str, str]
    ) -> Any:
        presented = form.get("refresh_token", "")
        grant = self._live.pop(presented, None)
        if grant is None or grant.tenant != tenant or grant.client_id != client_id:
            self.refused.append(presented)
            return entra_error(400, "invalid_grant", 70000, "The provided grant is invalid.")
        if grant.expires_at is not None and provider.clock.now() >= grant.expires_at:
            self.refused.append(presented)
            return entra_error(400, "invalid_grant", 700082, "The refresh token has expired.")
        self.spent.append(presented)
        return grant

    def _device_code_grant(
        self, provider: DevIdentityProvider, tenant: str, form: dict[str, str]
    ) -> Any:
        code = self._codes.get(form.get("device_code", ""))
        if code is None or code.tenant != tenant or code.client_id != form.get("client_id"):
            return entra_error(400, "invalid_grant", 70000, "The device code is not valid.")
        now = provider.clock.now()
        if now >= code.expires_at:
            return entra_error(400, "expired_token", 70019, "The device code has expired.")
        if code.declined:
            return entra_error(400, "authorization_declined", 70000, "The user declined.")
        too_soon = code.last_poll is not None and now - code.last_poll < timedelta(
            seconds=code.interval
        )
        code.last_poll = now
        if too_soon:
            return entra_error(400, "slow_down", 70000, "Polling too often.")
        if code.approved_by is None:
            return entra_error(
                400, "authorization_pending", 70016, "The user has not signed in yet."
            )
        del self._codes[form["device_code"]]
        form["scope"] = code.scope
        return _Grant(tenant, code.client_id, code.approved_by)

    def _token_body(
        self,
        provider: DevIdentityProvider,
        grant: _Grant,
        form: dict[str, str],
        audience: str,
        version: int,
    ) -> dict[str, Any]:
        now = provider.clock.now()
        issued_at, lifetime = int(now.timestamp()), int(provider.lifetime.total_seconds())
        scopes = form.get("scope", "").split()
        claims = {
            "aud": audience,
            "iss": provider.issuer(grant.tenant),
            "iat": issued_at,
            "nbf": issued_at,
            "exp": issued_at + lifetime,
            "tid": grant.tenant,
            "oid": str(uuid.uuid5(uuid.NAMESPACE_URL, grant.username)),
            "upn": grant.username,
            "scp": " ".join(s.rsplit("/", 1)[-1] for s in scopes if s not in _SIGN_IN_SCOPES)
            or "user_impersonation",
            "idtyp": "user",
            "ver": f"{version}.0",
            ("azp" if version == 2 else "appid"): grant.client_id,
        }
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": claims["scp"],
            "access_token": provider.sign(claims),
        }
        if version == 1:
            body |= {
                "expires_in": str(lifetime),
                "expires_on": str(issued_at + lifetime),
                "resource": audience,
            }
        else:
            body |= {"expires_in": lifetime, "ext_expires_in": lifetime}
        if version == 1 or "offline_access" in scopes:
            body["refresh_token"] = self._issue(grant, now)
            self.given_with[body["access_token"]] = body["refresh_token"]
        if "openid" in scopes:
            body["id_token"] = provider.sign(
                {"aud": grant.client_id, "iss": provider.issuer(grant.tenant), "iat": issued_at}
                | {"exp": issued_at + lifetime, "preferred_username": grant.username}
            )
        return body

    def _issue(self, grant: _Grant, now: datetime) -> str:
        token = f"{self.refresh_token_prefix}{len(self.issued)}-{secrets.token_urlsafe(24)}"
        lifetime = self.refresh_token_lifetime
        self._live[token] = _Grant(
            grant.tenant, grant.client_id, grant.username, now + lifetime if lifetime else None
        )
        self.issued.append(token)
        return token


def _audience(form: dict[str, str], version: int) -> tuple[str, Response | None]:
    """The API a delegated request is for: v1 names it; v2 scopes name its permissions."""
    if version == 1:
        resource = form.get("resource")
        if not resource:
            return "", entra_error(
                400, "invalid_request", 900144, "The request must contain 'resource'."
            )
        return resource, None
    apis = [s for s in form.get("scope", "").split() if s not in _SIGN_IN_SCOPES]
    if not apis:
        return "", entra_error(400, "invalid_scope", 70011, "The scope names no API.")
    audiences = {api.rsplit("/", 1)[0] if "/" in api else api for api in apis}
    if len(audiences) > 1:
        return "", entra_error(
            400, "invalid_scope", 28000, "The scope names more than one resource."
        )
    return audiences.pop(), None


async def _form(request: Request) -> dict[str, str]:
    return dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
