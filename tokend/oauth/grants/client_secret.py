"""`type: client_secret`: the client credentials grant with a client secret, sent in the form
(`client_secret_post`, Entra ID's usual style) or as HTTP Basic (`client_secret_basic`, the
OAuth2 default)."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import quote

from tokend.oauth.dialects import Target
from tokend.oauth.grants.base import (
    CREDENTIALS,
    CredentialOptions,
    CredentialType,
    GrantContext,
    HttpRequest,
)
from tokend.redaction import redactor
from tokend.secrets import SecretError, SecretRef, secret_version


class ClientSecretOptions(CredentialOptions):
    type: Literal["client_secret"]
    secret: SecretRef
    auth_method: Literal["client_secret_post", "client_secret_basic"] = "client_secret_post"


class ClientSecretGrant:
    __slots__ = ("_options", "_resources", "client_id", "endpoint")

    def __init__(self, options: ClientSecretOptions, context: GrantContext) -> None:
        self.client_id = context.client_id
        self.endpoint = context.endpoint
        self._options = options
        self._resources = context.resources

    async def request(self, token_url: str, target: Target) -> HttpRequest:
        try:
            secret = (await self._options.secret.read(self._resources)).reveal()
        except SecretError as exc:
            raise SecretError(f"client secret: {exc}", transient=exc.transient) from None
        form = {"grant_type": "client_credentials"}
        headers = {"Accept": "application/json"}
        if self._options.auth_method == "client_secret_basic":
            headers["Authorization"] = basic_authorization(self.client_id, secret)
        else:
            form |= {"client_id": self.client_id, "client_secret": secret}
        return HttpRequest("POST", token_url, form=form | target.fields(), headers=headers)

    def absorb(self, body: Mapping[str, Any]) -> None:
        return None

    async def source_version(self) -> str:
        return await secret_version(self._options.secret, self._resources)

    def __repr__(self) -> str:
        return f"ClientSecretGrant(client_id={self.client_id!r})"


def basic_authorization(client_id: str, secret: str) -> str:
    """RFC 6749 §2.3.1: id and secret are form-urlencoded *before* base64 (strict servers care)."""
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
    encoded = base64.b64encode(pair.encode()).decode("ascii")
    redactor.add_secret(encoded)  # an echo of the header must not show it either
    return "Basic " + encoded


CREDENTIALS.register("client_secret", CredentialType(ClientSecretOptions, ClientSecretGrant))
