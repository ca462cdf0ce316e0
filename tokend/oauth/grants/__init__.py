"""Grants: one module per credential type, each registered in `CREDENTIALS`."""

from tokend.oauth.grants.base import (
    CREDENTIALS,
    CredentialOptions,
    CredentialType,
    Grant,
    GrantContext,
    HttpRequest,
    build_grant,
)

__all__ = [
    "CREDENTIALS",
    "CredentialOptions",
    "CredentialType",
    "Grant",
    "GrantContext",
    "HttpRequest",
    "build_grant",
]
