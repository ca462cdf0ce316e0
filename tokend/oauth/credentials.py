"""How a client proves who it is to the token endpoint, and which grant it asks for.

A credential turns its config into the form fields and headers of one token request. It is asked
afresh for every request, so secrets are re-read (a replaced secret file takes effect at the next
attempt) and, for assertion-based credentials, every request gets a new assertion.

Adding a credential type: one options model and one class here, plus one entry in `_BUILDERS`
and in the `CredentialOptions` union.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict

from tokend.secrets import SecretRef


@dataclass(frozen=True, slots=True)
class ClientAuth:
    """What a credential adds to a token request. Never logged: `repr` hides it."""

    fields: dict[str, str] = field(repr=False)
    headers: dict[str, str] = field(default_factory=dict, repr=False)


class Credential(Protocol):
    client_id: str
    grant_type: str

    async def authenticate(self, token_endpoint: str) -> ClientAuth:
        """Form fields and headers for one request to `token_endpoint`. Raises `SecretError`."""
        ...


class ClientSecretOptions(BaseModel):
    """`client_credentials` with a client secret, sent in the form (`client_secret_post`,
    Entra ID's usual style) or as HTTP Basic (`client_secret_basic`, the OAuth2 default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["client_secret"]
    secret: SecretRef
    auth_method: Literal["client_secret_post", "client_secret_basic"] = "client_secret_post"


class ClientSecretCredential:
    grant_type = "client_credentials"

    def __init__(self, client_id: str, options: ClientSecretOptions) -> None:
        self.client_id = client_id
        self._options = options

    async def authenticate(self, token_endpoint: str) -> ClientAuth:
        secret = (await self._options.secret.read()).reveal()
        if self._options.auth_method == "client_secret_basic":
            return ClientAuth(fields={}, headers={"Authorization": _basic(self.client_id, secret)})
        return ClientAuth(fields={"client_id": self.client_id, "client_secret": secret})

    def __repr__(self) -> str:
        return f"ClientSecretCredential(client_id={self.client_id!r})"


def _basic(client_id: str, secret: str) -> str:
    """RFC 6749 §2.3.1: id and secret are form-urlencoded *before* base64 (strict servers care)."""
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


CredentialOptions = ClientSecretOptions

_BUILDERS: dict[str, Callable[[str, CredentialOptions], Credential]] = {
    "client_secret": ClientSecretCredential,
}


def build_credential(client_id: str, options: CredentialOptions) -> Credential:
    return _BUILDERS[options.type](client_id, options)
