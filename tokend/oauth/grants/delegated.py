"""What the delegated grants (password, device login) share: refresh-token requests, the
exchange that keeps the newest refresh token, and what Entra ID's refusals mean for a user.

Entra ID's refusals of a user's sign-in name the cause in AADSTS codes; each gets a line saying
what to do. A refresh token refused as dead (`invalid_grant`, not for a reason of one resource
such as missing consent) is dropped; the grant then signs in again its own way (the password) or
says to run `tokend login`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tokend.oauth.dialects import Endpoint, Target
from tokend.oauth.errors import PermanentError, TokenError
from tokend.oauth.grants.base import CredentialOptions, GrantContext
from tokend.oauth.grants.signin import SignIn, sign_in_for
from tokend.resources import Resources

OFFLINE_ACCESS = "offline_access"
_SIGN_IN_SCOPES = frozenset({"openid", "profile", "email", OFFLINE_ACCESS})
"""OpenID Connect scopes: they sign a user in, but name no API."""
_REFRESH_TOKEN = re.compile(r"[\x21-\x7e]{1,16384}")

_PER_RESOURCE = frozenset({50076, 50079, 65001, 53003, 50158, 500011, 70011, 700022, 28000})
"""Refusals of one target (consent, MFA or Conditional Access for that API, a bad scope): the
refresh token itself is still good for the identity's other tokens."""

_ADVICE = {
    50076: "multi-factor authentication is required for this user{where}",
    50079: "this user must register for multi-factor authentication{where}",
    65001: (
        "consent is missing: grant admin consent for the app's API permissions in its app "
        "registration (or have the user consent once through tokend login)"
    ),
    53003: "Conditional Access blocked the sign-in: ask the tenant's administrators which policy",
    50126: (
        "wrong username or password: correct the one its reference points to (tokend does not "
        "send a refused password again until it changes, so the account is not locked out)"
    ),
    50053: (
        "the account is locked (too many failed sign-ins) or its sign-in was blocked: wait for "
        "the lock to end or have an administrator unlock it, then check the password"
    ),
    50055: "the password has expired: change it, then update its reference",
    50057: "the user account is disabled: enable it, or sign in as another user",
    50034: "no such user in this tenant: check the username",
    7000218: (
        "the app registration is not a public client: set client_secret, or allow public "
        "client flows in the app registration"
    ),
}


class DelegatedOptions(CredentialOptions):
    """Options of a credential that signs in a user and keeps its refresh tokens."""

    def entra_scopes_problem(self, scopes: tuple[str, ...]) -> str | None:
        if all(scope in _SIGN_IN_SCOPES for scope in scopes):
            return (
                "name the API's delegated permissions, e.g. https://graph.microsoft.com/User.Read "
                "(offline_access and openid alone ask for no API)"
            )
        return None

    def keeps_refresh_tokens(self) -> bool:
        return True


class DelegatedGrant:
    """The part of a delegated grant that asks with a refresh token and keeps the newest."""

    __slots__ = ("_context", "client_id", "endpoint")

    def __init__(self, context: GrantContext) -> None:
        self.client_id = context.client_id
        self.endpoint = context.endpoint
        self._context = context

    @property
    def _resources(self) -> Resources | None:
        return self._context.resources

    def sign_in(self) -> SignIn:
        return sign_in_for(self._context)

    def exchange(self) -> DelegatedExchange:
        return DelegatedExchange(self)

    def absorb(self, body: Mapping[str, Any]) -> None:
        token = body.get("refresh_token")
        if self.keeps_refresh_tokens and isinstance(token, str) and is_refresh_token(token):
            self.sign_in().hold(token)

    @property
    def keeps_refresh_tokens(self) -> bool:
        return True

    def refresh_form(self, sign_in: SignIn, target: Target) -> dict[str, str] | None:
        """The form of a refresh-token request, if a refresh token is held for the subject of
        the exchange in progress."""
        token = sign_in.current(sign_in.subject) if self.keeps_refresh_tokens else None
        if token is None:
            return None
        sign_in.spent = token
        return {
            "grant_type": "refresh_token",
            "refresh_token": token,
            "client_id": self.client_id,
        } | self.target_fields(target)

    def target_fields(self, target: Target) -> dict[str, str]:
        """What names the target; with scopes, `offline_access` too when refresh tokens are
        kept (Entra ID v2 returns one only when asked for it)."""
        scopes = target.scopes
        if scopes and self.keeps_refresh_tokens and OFFLINE_ACCESS not in scopes:
            scopes = (*scopes, OFFLINE_ACCESS)
        return Target(target.resource, scopes).fields()

    def failed(self, error: TokenError, sign_in: SignIn) -> TokenError | None:
        if sign_in.spent is not None and refresh_token_is_dead(error):
            sign_in.drop(sign_in.spent, f"its refresh token was refused as dead ({error.code})")
            return self.refresh_token_dead(error)
        return self.advise(error)

    def refresh_token_dead(self, error: TokenError) -> TokenError | None:
        """The stored refresh token was refused as dead: None to sign in again at once, or the
        error to report."""
        return error

    def advise(self, error: TokenError) -> TokenError:
        """`error` with a line saying what to do, when its AADSTS code has one."""
        return advise(error, self.mfa_advice)

    mfa_advice = ""
    """What to add when multi-factor authentication is required (it is the grant's to say)."""


class DelegatedExchange:
    """One exchange of a delegated grant: alone for its identity from the first read of the
    refresh token to the storing of the new one."""

    __slots__ = ("_grant", "_sign_in")

    def __init__(self, grant: DelegatedGrant) -> None:
        self._grant = grant
        self._sign_in = grant.sign_in()

    async def __aenter__(self) -> DelegatedExchange:
        await self._sign_in.lock.acquire()
        self._sign_in.begin()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self._sign_in.settle()
        finally:
            self._sign_in.lock.release()

    def failed(self, error: TokenError) -> TokenError | None:
        return self._grant.failed(error, self._sign_in)


def is_refresh_token(value: str) -> bool:
    """What a refresh token may hold: visible ASCII, no spaces; any other value is ignored."""
    return _REFRESH_TOKEN.fullmatch(value) is not None


def refresh_token_is_dead(error: TokenError) -> bool:
    """`invalid_grant` for the refresh token itself (expired, revoked, already spent), not for
    one target: a good refresh token is never thrown away for a consent one API lacks."""
    return (
        isinstance(error, PermanentError)
        and error.error == "invalid_grant"
        and not _PER_RESOURCE.intersection(error.aadsts_codes)
    )


def advise(error: TokenError, mfa_advice: str = "") -> TokenError:
    if not isinstance(error, PermanentError):
        return error
    advice = next((_ADVICE[code] for code in error.aadsts_codes if code in _ADVICE), None)
    if advice is None:
        return error
    return with_reason(error, f"{reason_of(error)}; {advice.format(where=mfa_advice)}")


def with_reason(error: PermanentError, reason: str, *, code: str | None = None) -> PermanentError:
    return PermanentError(
        error.peer,
        reason,
        code=code or error.code,
        error=error.error,
        aadsts_codes=error.aadsts_codes,
        trace_id=error.trace_id,
        correlation_id=error.correlation_id,
    )


def reason_of(error: TokenError) -> str:
    return str(error).removeprefix(f"{error.peer.host}: ")


def endpoint_authority(endpoint: Endpoint) -> str:
    """The Entra ID authority (`{host}/{tenant}`) of an endpoint, or '' for other servers."""
    url = endpoint.token_url or ""
    for suffix in ("/oauth2/v2.0/token", "/oauth2/token"):
        if url.endswith(suffix):
            return url.removesuffix(suffix)
    return ""
