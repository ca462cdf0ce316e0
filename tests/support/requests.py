"""Token requests for tests that drive the client or a job without a config."""

from __future__ import annotations

from typing import Any

from tokend.oauth import Endpoint, GrantContext, TokenRequest, build_grant
from tokend.oauth.grants.client_secret import ClientSecretOptions
from tokend.secrets import InlineSecret


def client_secret_request(
    endpoint: Endpoint,
    *,
    name: str = "crm",
    client_id: str = "client",
    secret: str = "secret",  # noqa: S107 - a test value
    auth_method: str = "client_secret_post",
    resource: str | None = None,
    scopes: tuple[str, ...] = (),
) -> TokenRequest:
    """A request for token `name` by the client credentials grant with a client secret."""
    options: Any = ClientSecretOptions.model_validate(
        {"type": "client_secret", "secret": InlineSecret(inline=secret), "auth_method": auth_method}
    )
    grant = build_grant(options, GrantContext(client_id, endpoint))
    return TokenRequest(name, grant, resource, scopes)
