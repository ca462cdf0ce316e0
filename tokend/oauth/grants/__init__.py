"""Grants: one module per credential type, each registered in `CREDENTIALS`."""

from tokend.oauth.grants.base import (
    CREDENTIALS,
    CredentialOptions,
    CredentialState,
    CredentialType,
    Grant,
    GrantContext,
    HttpRequest,
    build_grant,
    credential_state,
)

__all__ = [
    "CREDENTIALS",
    "CredentialOptions",
    "CredentialState",
    "CredentialType",
    "Grant",
    "GrantContext",
    "HttpRequest",
    "build_grant",
    "credential_state",
]
