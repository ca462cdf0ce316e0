"""Talking to identity providers: dialects, grants, the client that sends their requests, and
how their answers and failures are read. Names are imported on first use (`tokend.lazy`): the
config needs the grants' options, not the HTTP client."""

from typing import TYPE_CHECKING

from tokend.lazy import exports

if TYPE_CHECKING:
    from tokend.oauth.client import HttpSettings, TokenClient, TokenRequest
    from tokend.oauth.dialects import DEFAULT_AUTHORITY_HOST, Endpoint, Target, entra_token_url
    from tokend.oauth.errors import Peer, PermanentError, TokenError, TransientError
    from tokend.oauth.grants import (
        CREDENTIALS,
        CredentialOptions,
        CredentialType,
        Grant,
        GrantContext,
        HttpRequest,
        build_grant,
    )
    from tokend.oauth.response import MalformedResponse, parse_token_response

__all__ = [
    "CREDENTIALS",
    "DEFAULT_AUTHORITY_HOST",
    "CredentialOptions",
    "CredentialType",
    "Endpoint",
    "Grant",
    "GrantContext",
    "HttpRequest",
    "HttpSettings",
    "MalformedResponse",
    "Peer",
    "PermanentError",
    "Target",
    "TokenClient",
    "TokenError",
    "TokenRequest",
    "TransientError",
    "build_grant",
    "entra_token_url",
    "parse_token_response",
]

_MODULES = {
    "tokend.oauth.client": ("HttpSettings", "TokenClient", "TokenRequest"),
    "tokend.oauth.dialects": ("DEFAULT_AUTHORITY_HOST", "Endpoint", "Target", "entra_token_url"),
    "tokend.oauth.errors": ("Peer", "PermanentError", "TokenError", "TransientError"),
    "tokend.oauth.grants": (
        "CREDENTIALS",
        "CredentialOptions",
        "CredentialType",
        "Grant",
        "GrantContext",
        "HttpRequest",
        "build_grant",
    ),
    "tokend.oauth.response": ("MalformedResponse", "parse_token_response"),
}
__getattr__ = exports(__name__, _MODULES)
