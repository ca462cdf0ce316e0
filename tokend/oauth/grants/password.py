"""`type: password`: the resource owner password credentials grant (ROPC) for a user account,
what the helper service tokend replaces used.

v1 (`resource=`) and v2 (`scope=`, the API's delegated permissions) alike; a public client (no
secret) or a confidential one (`client_secret`). When the identity provider returns a refresh
token, later requests spend it instead of the password (`refresh_tokens: false` turns that off):
kept sealed in `state_dir`, one per identity, the newest only. A refresh token refused as dead
falls back to the password at once.

Microsoft discourages ROPC and it cannot do multi-factor authentication: the README says when to
prefer `device_login` or a certificate. A password Entra ID refused as wrong or expired is not
sent again until it (or the username) changes: retrying it could lock the account.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, PlainValidator

from tokend.oauth.dialects import Target
from tokend.oauth.errors import PermanentError, TokenError
from tokend.oauth.grants.base import (
    CREDENTIALS,
    CredentialOptions,
    CredentialType,
    GrantContext,
    HttpRequest,
)
from tokend.oauth.grants.client_secret import basic_authorization
from tokend.oauth.grants.delegated import DelegatedGrant, DelegatedOptions, reason_of, with_reason
from tokend.oauth.grants.signin import SignIn, subject_of
from tokend.secrets import (
    Secret,
    SecretError,
    SecretRef,
    SecretReference,
    parse_secret_ref,
    secret_version,
)

if TYPE_CHECKING:
    from tokend.resources import Resources

log = logging.getLogger("tokend.signin")

_NOT_SENT_AGAIN = frozenset({50126, 50055, 50034})
"""Wrong password, expired password, unknown user: the same credentials cannot succeed."""
_MFA_ADVICE = (
    ": the password grant cannot do that; use type: device_login (tokend login) or a "
    "certificate, or exempt this account from the policy"
)


class PlainValue(SecretReference):
    """A value written in the config that is not a secret (a username): no warning about it."""

    value: str = Field(min_length=1)

    def describe(self) -> str:
        return "value in the config"

    def resolve(self, resources: Resources | None = None) -> Secret:
        return Secret(self.value)


def _plain_or_reference(value: Any) -> SecretReference:
    return PlainValue(value=value) if isinstance(value, str) and value else parse_secret_ref(value)


ValueRef = Annotated[SecretReference, PlainValidator(_plain_or_reference)]
"""A plain string, or a secret reference where the value lives."""


class PasswordOptions(DelegatedOptions):
    type: Literal["password"]
    username: ValueRef
    """The user's sign-in name (UPN), written in the config or a secret reference."""
    password: SecretRef
    client_secret: SecretRef | None = None
    """For a confidential client; a public client sends none."""
    auth_method: Literal["client_secret_post", "client_secret_basic"] = "client_secret_post"
    refresh_tokens: bool = True
    """Spend the refresh tokens the identity provider returns instead of the password (kept
    sealed: needs state_dir and state_key); false: sign in with the password every time."""

    def keeps_refresh_tokens(self) -> bool:
        return self.refresh_tokens

    async def read_username(self, resources: Resources | None = None) -> str:
        """The username (for finding the identity of a user, as the helper's clients do)."""
        return (await self.username.read(resources)).reveal()


class PasswordGrant(DelegatedGrant):
    __slots__ = ("_options",)

    mfa_advice = _MFA_ADVICE

    def __init__(self, options: PasswordOptions, context: GrantContext) -> None:
        super().__init__(context)
        self._options = options

    @property
    def keeps_refresh_tokens(self) -> bool:
        return self._options.refresh_tokens

    async def request(self, token_url: str, target: Target) -> HttpRequest:
        sign_in = self.sign_in()
        username = await self._read(self._options.username, "username")
        sign_in.subject = subject_of(username)
        form = self.refresh_form(sign_in, target)
        if form is None:
            password = await self._read(self._options.password, "password")
            sign_in.sent = _digest(username, password)
            if sign_in.refused is not None and sign_in.refused[0] == sign_in.sent:
                refused = sign_in.refused[1]
                raise with_reason(refused, reason_of(refused))  # the same problem, not sent
            form = {
                "grant_type": "password",
                "client_id": self.client_id,
                "username": username,
                "password": password,
            } | self.target_fields(target)
        headers = {"Accept": "application/json"}
        if self._options.client_secret is not None:
            secret = await self._read(self._options.client_secret, "client secret")
            if self._options.auth_method == "client_secret_basic":
                headers["Authorization"] = basic_authorization(self.client_id, secret)
                del form["client_id"]
            else:
                form["client_secret"] = secret
        return HttpRequest("POST", token_url, form=form, headers=headers)

    def failed(self, error: TokenError, sign_in: SignIn) -> TokenError | None:
        reported = super().failed(error, sign_in)
        if (
            sign_in.spent is None
            and isinstance(reported, PermanentError)
            and _NOT_SENT_AGAIN.intersection(reported.aadsts_codes)
        ):
            sign_in.refused = (sign_in.sent, reported)
        return reported

    def refresh_token_dead(self, error: TokenError) -> TokenError | None:
        log.warning(
            "identity '%s': its refresh token was refused as dead (%s); signing in with the "
            "password",
            self._context.identity,
            error,
        )
        return None  # sign in with the password at once

    async def source_version(self) -> str:
        options, resources = self._options, self._resources
        refs = (options.username, options.password, options.client_secret)
        versions = [await secret_version(ref, resources) for ref in refs if ref is not None]
        return "/".join([*versions, self.sign_in().version()])

    async def _read(self, ref: SecretReference, what: str) -> str:
        try:
            return (await ref.read(self._resources)).reveal()
        except SecretError as exc:
            raise SecretError(f"{what}: {exc}", transient=exc.transient) from None

    def __repr__(self) -> str:
        return f"PasswordGrant(client_id={self.client_id!r})"


def _digest(username: str, password: str) -> str:
    return hashlib.sha256(f"{username.casefold()}\n{password}".encode()).hexdigest()


async def identities_of_user(
    credentials: Mapping[str, CredentialOptions],
    username: str,
    resources: Resources | None = None,
) -> list[str]:
    """The names of the password identities (of `credentials`, by identity name) that sign in
    as `username` (compared as Entra ID does: case-insensitive). For the helper's clients,
    which name the user, not the identity."""
    wanted = username.casefold()
    found = []
    for name, credential in credentials.items():
        if not isinstance(credential, PasswordOptions):
            continue
        try:
            if (await credential.read_username(resources)).casefold() == wanted:
                found.append(name)
        except SecretError:
            continue
    return found


CREDENTIALS.register("password", CredentialType(PasswordOptions, PasswordGrant))
