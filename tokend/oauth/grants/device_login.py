"""`type: device_login`: a user's delegated identity that signs in once, interactively, with
`tokend login TOKEN` (the device code flow, RFC 8628), and from then on lives on refresh tokens.

The refresh token is kept sealed in `state_dir` (one per identity, the newest only) and spent at
each refresh. With none stored, or when the identity provider refuses it as dead, the failure is
permanent and says to run `tokend login` again; a login while tokend runs is picked up within
seconds (`source_version` covers the stored file), no restart needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from tokend.oauth.dialects import Target
from tokend.oauth.errors import Peer, PermanentError, TokenError
from tokend.oauth.grants.base import (
    CREDENTIALS,
    CredentialType,
    GrantContext,
    HttpRequest,
)
from tokend.oauth.grants.delegated import (
    OFFLINE_ACCESS,
    DelegatedGrant,
    DelegatedOptions,
    advise,
    endpoint_authority,
    is_refresh_token,
    reason_of,
    with_reason,
)
from tokend.oauth.grants.signin import SignIn
from tokend.secrets import SecretError

LOGIN_REQUIRED = "login_required"
_SIGN_IN_SCOPES = (OFFLINE_ACCESS, "openid", "profile")
_INTERACTION = frozenset({50076, 50079, 53003})


class DeviceLoginOptions(DelegatedOptions):
    type: Literal["device_login"]
    device_authorization_endpoint: str | None = None
    """For an OAuth2 server other than Entra ID (which has its own): where `tokend login` asks
    for a device code (RFC 8628)."""


class LoginRequired(SecretError):
    """No refresh token is stored for the identity: someone must run `tokend login`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = LOGIN_REQUIRED


class DeviceLoginGrant(DelegatedGrant):
    __slots__ = ("_options",)

    def __init__(self, options: DeviceLoginOptions, context: GrantContext) -> None:
        super().__init__(context)
        self._options = options

    async def request(self, token_url: str, target: Target) -> HttpRequest:
        sign_in = self.sign_in()
        form = self.refresh_form(sign_in, target)
        if form is None:
            why = sign_in.problem or (
                "no refresh token is stored for it"
                if sign_in.kept is not None
                else "its refresh token cannot be read: state_key is unreadable"
            )
            raise LoginRequired(f"identity '{self._context.identity}': {why}")
        return HttpRequest("POST", token_url, form=form, headers={"Accept": "application/json"})

    def failed(self, error: TokenError, sign_in: SignIn) -> TokenError | None:
        if error.code == LOGIN_REQUIRED:
            return self._login_required(error, reason_of(error))
        return super().failed(error, sign_in)

    def refresh_token_dead(self, error: TokenError) -> TokenError | None:
        reason = f"the stored refresh token was refused ({reason_of(error)})"
        return self._login_required(error, reason)

    def advise(self, error: TokenError) -> TokenError:
        if isinstance(error, PermanentError) and _INTERACTION.intersection(error.aadsts_codes):
            again = f"sign in again with `tokend login {error.peer.token}`"
            return with_reason(error, f"{reason_of(error)}; {again}")
        return advise(error)

    def _login_required(self, error: TokenError, reason: str) -> PermanentError:
        return PermanentError(
            Peer(error.peer.token, self.endpoint.host),
            f"{reason}: sign in with `tokend login {error.peer.token}` (as tokend's user)",
            code=LOGIN_REQUIRED,
        )

    async def source_version(self) -> str:
        return self.sign_in().version()

    # --- for `tokend login` -------------------------------------------------------------------

    def device_authorization_url(self) -> str | None:
        """Where to ask for a device code: Entra ID's, or the configured one."""
        authority = endpoint_authority(self.endpoint)
        if authority:
            return f"{authority}/oauth2/v2.0/devicecode"
        return self._options.device_authorization_endpoint

    def device_token_url(self) -> str | None:
        """Where to poll: Entra ID's v2 token endpoint (device codes are v2), or the server's."""
        authority = endpoint_authority(self.endpoint)
        return f"{authority}/oauth2/v2.0/token" if authority else self.endpoint.token_url

    def login_scopes(self, target: Target) -> tuple[str, ...]:
        """What to sign in for: the token's scopes (a v1 resource as its `.default`), and the
        refresh token and the user's name."""
        scopes = target.scopes
        if not scopes and target.resource:
            scopes = (f"{target.resource.rstrip('/')}/.default",)
        return (*scopes, *(scope for scope in _SIGN_IN_SCOPES if scope not in scopes))

    async def store_login(self, body: Mapping[str, Any]) -> bool:
        """Store the refresh token of a completed login, sealed; False if the answer had none
        (the app was not given `offline_access`). Raises OSError when it cannot be stored."""
        token = body.get("refresh_token")
        if not isinstance(token, str) or not is_refresh_token(token):
            return False
        sign_in = self.sign_in()
        async with sign_in.lock:
            await sign_in.save(token)
        return True

    def __repr__(self) -> str:
        return f"DeviceLoginGrant(client_id={self.client_id!r})"


CREDENTIALS.register("device_login", CredentialType(DeviceLoginOptions, DeviceLoginGrant))
