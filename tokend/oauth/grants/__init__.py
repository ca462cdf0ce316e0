"""Grants: one module per credential type, each registered in `CREDENTIALS`."""

from tokend.oauth.grants.base import (
    CREDENTIALS,
    CredentialOptions,
    CredentialState,
    CredentialType,
    Exchange,
    Grant,
    GrantContext,
    HttpRequest,
    build_grant,
    credential_state,
    exchange_of,
)

__all__ = [
    "CREDENTIALS",
    "CredentialOptions",
    "CredentialState",
    "CredentialType",
    "Exchange",
    "Grant",
    "GrantContext",
    "HttpRequest",
    "build_grant",
    "credential_state",
    "exchange_of",
]
