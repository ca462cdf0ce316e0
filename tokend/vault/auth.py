"""How tokend logs in to Vault: one registered auth method per `method:` of `vault.auth`.

Each method is an options model and a login function that runs on a Vault worker thread with a
fresh hvac client and returns a `Login`. Login secrets are resolved at every login (a replaced
secret-ID file or a rotated service-account JWT takes effect at the next one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from tokend.paths import ConfigPath
from tokend.registry import Registry
from tokend.secrets import EnvSecret, Secret, SecretRef, SecretReference
from tokend.vault.errors import Problem, VaultError, classify
from tokend.vault.login import Login, from_auth, login_call, resolve, seconds

SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def strip_slashes(value: Any) -> Any:
    return value.strip("/") if isinstance(value, str) else value


MountPath = Annotated[
    str,
    BeforeValidator(strip_slashes),
    Field(pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$", max_length=256),
]
"""A mount path as Vault prints it, without slashes at either end (`secret`, `team/kv`)."""


class AuthOptions(BaseModel):
    """Options every auth method has; each method's model adds its `method` literal."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str


LoginFunction = Callable[[Any, str, Any, datetime, float], Login]
"""(hvac client, Vault address, the method's options, now, timeout) -> Login. Raises VaultError."""


@dataclass(frozen=True)
class AuthMethod:
    options: type[AuthOptions]
    login: LoginFunction
    can_login: bool = True
    """tokend can get a new token by itself (not so with a token it was given)."""


AUTH_METHODS: Registry[AuthMethod] = Registry("method", discriminator="method")


def _login_secret(ref: SecretReference | None) -> SecretReference | None:
    if ref is not None and ref.needs:
        raise ValueError("a secret tokend needs to log in to Vault cannot come from Vault itself")
    return ref


# --- token ------------------------------------------------------------------------------------


class TokenAuth(AuthOptions):
    """A Vault token given to tokend. Renewed before its TTL ends if it is renewable; tokend
    cannot get a new one by itself, so an expired or revoked token is reported as such."""

    method: Literal["token"]
    token: SecretRef = EnvSecret(env="VAULT_TOKEN")

    @field_validator("token")
    @classmethod
    def _not_from_vault(cls, ref: SecretReference) -> SecretReference:
        _login_secret(ref)
        return ref


def _check_token(
    client: Any, address: str, auth: TokenAuth, now: datetime, timeout: float
) -> Login:
    """A given token: look it up, to learn whether it is valid, renewable and for how long."""
    where = f"{address}/v1/auth/token/lookup-self"
    token = resolve(auth.token, where, "token")
    client.token = token.reveal()
    try:
        body = client.auth.token.lookup_self()
    except Exception as exc:
        error = classify(exc, where, "look up its own token", timeout)
        if error.problem is Problem.DENIED:
            raise VaultError(
                where,
                f"the Vault token from {auth.token.describe()} is invalid, expired or revoked "
                "(give tokend a valid token)",
                Problem.LOGIN,
            ) from None
        raise error from None
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise VaultError(where, "unexpected answer to a token lookup", Problem.INTERNAL)
    return Login(
        token, now, timedelta(seconds=seconds(data.get("ttl"))), bool(data.get("renewable"))
    )


# --- approle ----------------------------------------------------------------------------------


class AppRoleAuth(AuthOptions):
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


def _approle(client: Any, address: str, auth: AppRoleAuth, now: datetime, timeout: float) -> Login:
    where = f"{address}/v1/auth/{auth.mount}/login"
    role_id = resolve(auth.role_id, where, "role_id")
    secret_id = resolve(auth.secret_id, where, "secret_id") if auth.secret_id else None
    body = login_call(
        lambda: client.auth.approle.login(
            role_id.reveal(),
            secret_id.reveal() if secret_id else None,
            use_token=False,
            mount_point=auth.mount,
        ),
        where,
        timeout,
        "AppRole login failed (check role_id and secret_id)",
        # AppRole refuses bad IDs with 400 'invalid role or secret ID'; a 403 comes from Vault
        # itself, for a path where no auth method is mounted.
        f"no AppRole auth method answers at auth/{auth.mount} (Vault says permission denied): "
        "check vault.auth.mount",
    )
    return from_auth(body, where, now)


# --- kubernetes -------------------------------------------------------------------------------


class KubernetesAuth(AuthOptions):
    """Kubernetes: the pod's service-account JWT (re-read at every login, as projected tokens
    rotate) and the Vault role bound to that service account."""

    method: Literal["kubernetes"]
    mount: MountPath = "kubernetes"
    role: str = Field(min_length=1)
    jwt_file: ConfigPath = SERVICE_ACCOUNT_TOKEN


def _kubernetes(
    client: Any, address: str, auth: KubernetesAuth, now: datetime, timeout: float
) -> Login:
    where = f"{address}/v1/auth/{auth.mount}/login"
    try:
        jwt = Secret(auth.jwt_file.read_text(encoding="utf-8").strip())
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise VaultError(
            where, f"cannot read the service-account token {auth.jwt_file}: {reason}", Problem.LOGIN
        ) from None
    body = login_call(
        lambda: client.auth.kubernetes.login(
            auth.role, jwt.reveal(), use_token=False, mount_point=auth.mount
        ),
        where,
        timeout,
        f"Kubernetes login as role '{auth.role}' failed (check the role's bound service "
        "accounts and namespaces)",
        f"Kubernetes login as role '{auth.role}' refused with permission denied: check "
        f"vault.auth.mount (auth/{auth.mount}), and that the role binds this service account "
        "and namespace",
    )
    return from_auth(body, where, now)


AUTH_METHODS.register("token", AuthMethod(TokenAuth, _check_token, can_login=False))
AUTH_METHODS.register("approle", AuthMethod(AppRoleAuth, _approle))
AUTH_METHODS.register("kubernetes", AuthMethod(KubernetesAuth, _kubernetes))


def login(client: Any, address: str, auth: AuthOptions, now: datetime, timeout: float) -> Login:
    """Log in with the configured method. Raises `VaultError`."""
    return AUTH_METHODS[auth.method].login(client, address, auth, now, timeout)
