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
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from tokend.durations import PositiveDuration
from tokend.secrets import EnvSecret, SecretRef, SecretReference, VaultSecret
from tokend.transport import url_problem

SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
_MOUNT = r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$"

MountPath = Annotated[str, Field(pattern=_MOUNT, max_length=256)]
"""A mount path as Vault prints it, without slashes at either end (`secret`, `team/kv`)."""


def strip_slashes(value: Any) -> Any:
    return value.strip("/") if isinstance(value, str) else value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _login_secret(ref: SecretReference | None) -> SecretReference | None:
    if isinstance(ref, VaultSecret):
        raise ValueError("a secret tokend needs to log in to Vault cannot come from Vault itself")
    return ref


class TokenAuth(_Model):
    """A Vault token given to tokend. Renewed before its TTL ends if it is renewable; tokend
    cannot get a new one by itself, so an expired or revoked token is reported as such."""

    method: Literal["token"]
    token: SecretRef = EnvSecret(env="VAULT_TOKEN")

    @field_validator("token")
    @classmethod
    def _not_from_vault(cls, ref: SecretReference) -> SecretReference:
        _login_secret(ref)
        return ref


class AppRoleAuth(_Model):
    """AppRole: a role ID and (unless the role does without) a secret ID; tokend logs in again
    whenever its token can no longer be renewed."""

    method: Literal["approle"]
    mount: MountPath = "approle"
    role_id: SecretRef
    secret_id: SecretRef | None = None

    @field_validator("role_id", "secret_id")
    @classmethod
    def _not_from_vault(cls, ref: SecretReference | None) -> SecretReference | None:
        return _login_secret(ref)

    @field_validator("mount", mode="before")
    @classmethod
    def _slashes(cls, mount: Any) -> Any:
        return strip_slashes(mount)


class KubernetesAuth(_Model):
    """Kubernetes: the pod's service-account JWT (re-read at every login, as projected tokens
    rotate) and the Vault role bound to that service account."""

    method: Literal["kubernetes"]
    mount: MountPath = "kubernetes"
    role: str = Field(min_length=1)
    jwt_file: Path = SERVICE_ACCOUNT_TOKEN

    @field_validator("mount", mode="before")
    @classmethod
    def _slashes(cls, mount: Any) -> Any:
        return strip_slashes(mount)


VaultAuth = Annotated[TokenAuth | AppRoleAuth | KubernetesAuth, Field(discriminator="method")]
AUTH_METHODS = ("token", "approle", "kubernetes")


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
    ca_bundle: Path | None = Field(default_factory=_vault_cacert)
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
