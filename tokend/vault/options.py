"""The `vault:` block of the config: where Vault is, how tokend logs in, and how it connects.

One block per config: every Vault sink and every `{vault: ...}` secret reference uses it. The
address, namespace and CA bundle default to `$VAULT_ADDR`, `$VAULT_NAMESPACE` and `$VAULT_CACERT`,
and the login to the token in `$VAULT_TOKEN`, as for the `vault` and `bao` command-line tools, so
an operator's usual environment works unchanged.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from tokend.durations import PositiveDuration
from tokend.paths import ConfigPath
from tokend.transport import url_problem
from tokend.vault.auth import AUTH_METHODS, AuthOptions, TokenAuth, strip_slashes

if TYPE_CHECKING:
    VaultAuth = AuthOptions
else:
    VaultAuth = AUTH_METHODS.union(AuthOptions)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _vault_addr() -> str:
    return os.environ.get("VAULT_ADDR", "")


def _vault_cacert() -> Path | None:
    return Path(os.environ["VAULT_CACERT"]) if os.environ.get("VAULT_CACERT") else None


def _vault_namespace() -> str | None:
    return os.environ.get("VAULT_NAMESPACE") or None


class VaultOptions(_Model):
    allow_insecure_http: bool = False
    """Plain http, to a loopback address only (a local Vault Agent or a test server)."""
    address: str = Field(default_factory=_vault_addr, validate_default=True)
    namespace: str | None = Field(
        default_factory=_vault_namespace, min_length=1, validate_default=True
    )
    auth: VaultAuth = TokenAuth(method="token")
    ca_bundle: ConfigPath | None = Field(default_factory=_vault_cacert)
    timeout: PositiveDuration = timedelta(seconds=10)
    """For each request to Vault (connecting, and waiting for the answer)."""

    @field_validator("address")
    @classmethod
    def _usable(cls, address: str, info: ValidationInfo) -> str:
        address = address.strip().rstrip("/")
        if not address:
            raise ValueError("required: set it here or in the environment as VAULT_ADDR")
        insecure = bool(info.data.get("allow_insecure_http", False))
        if problem := url_problem(address, allow_insecure_http=insecure):
            raise ValueError(problem)
        return address

    @field_validator("namespace", mode="before")
    @classmethod
    def _namespace(cls, namespace: Any) -> Any:
        return strip_slashes(namespace)
