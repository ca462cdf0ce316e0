"""Logging in to Vault: one function per auth method, each giving a token and its lease.

These run on a Vault worker thread with a fresh hvac client. Login secrets are resolved at every
login (a replaced secret-ID file or a rotated service-account JWT takes effect at the next one)
and wrapped in `Secret`, so the log redactor knows them even if a library ever printed one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from tokend.secrets import Secret, SecretError
from tokend.vault.errors import Problem, VaultError, classify, vault_detail
from tokend.vault.options import AppRoleAuth, KubernetesAuth, TokenAuth, VaultOptions


@dataclass(frozen=True)
class Login:
    """A Vault token and what Vault said about its lifetime."""

    token: Secret = field(repr=False)
    obtained_at: datetime
    ttl: timedelta  # zero: the token never expires (e.g. a root token)
    renewable: bool
    capped: bool = False
    """The last renewal gave less time than before: the token's maximum TTL is near."""

    @property
    def expires_at(self) -> datetime | None:
        return self.obtained_at + self.ttl if self.ttl else None

    def renewed(self, ttl: timedelta, now: datetime) -> Login:
        return Login(self.token, now, ttl, self.renewable, capped=ttl < self.ttl)


def login(client: Any, options: VaultOptions, now: datetime, timeout: float) -> Login:
    """Log in with the configured method. Raises `VaultError`."""
    auth = options.auth
    if isinstance(auth, TokenAuth):
        return _check_token(client, options.address, auth, now, timeout)
    if isinstance(auth, AppRoleAuth):
        where = f"{options.address}/v1/auth/{auth.mount}/login"
        role_id = _resolve(auth.role_id, where, "role_id")
        secret_id = _resolve(auth.secret_id, where, "secret_id") if auth.secret_id else None
        body = _login_call(
            lambda: client.auth.approle.login(
                role_id.reveal(),
                secret_id.reveal() if secret_id else None,
                use_token=False,
                mount_point=auth.mount,
            ),
            where,
            timeout,
            "AppRole login failed (check role_id and secret_id)",
        )
        return _from_auth(body, where, now)
    return _kubernetes(client, options.address, auth, now, timeout)


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
    body = _login_call(
        lambda: client.auth.kubernetes.login(
            auth.role, jwt.reveal(), use_token=False, mount_point=auth.mount
        ),
        where,
        timeout,
        f"Kubernetes login as role '{auth.role}' failed (check the role's bound service "
        "accounts and namespaces)",
    )
    return _from_auth(body, where, now)


def _check_token(
    client: Any, address: str, auth: TokenAuth, now: datetime, timeout: float
) -> Login:
    """A given token: look it up, to learn whether it is valid, renewable and for how long."""
    where = f"{address}/v1/auth/token/lookup-self"
    token = _resolve(auth.token, where, "token")
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
        token, now, timedelta(seconds=_seconds(data.get("ttl"))), bool(data.get("renewable"))
    )


def _resolve(ref: Any, where: str, key: str) -> Secret:
    try:
        secret: Secret = ref.resolve()
    except SecretError as exc:
        raise VaultError(where, f"vault.auth.{key}: {exc}", Problem.LOGIN) from None
    return secret


def _login_call(call: Any, where: str, timeout: float, refused: str) -> Any:
    try:
        return call()
    except Exception as exc:
        error = classify(exc, where, "log in", timeout)
        if error.problem in (Problem.DENIED, Problem.INVALID):
            detail = vault_detail(exc)
            raise VaultError(
                where, f"{refused}: {detail}" if detail else refused, Problem.LOGIN
            ) from None
        raise error from None


def _from_auth(body: Any, where: str, now: datetime) -> Login:
    auth = body.get("auth") if isinstance(body, dict) else None
    token = auth.get("client_token") if isinstance(auth, dict) else None
    if not isinstance(auth, dict) or not isinstance(token, str) or not token:
        raise VaultError(where, "login answer holds no token", Problem.INTERNAL)
    ttl = timedelta(seconds=_seconds(auth.get("lease_duration")))
    return Login(Secret(token), now, ttl, bool(auth.get("renewable")))


def renewed_ttl(body: Any) -> timedelta:
    """The new TTL from a `renew-self` answer."""
    auth = body.get("auth") if isinstance(body, dict) else None
    return timedelta(seconds=_seconds(auth.get("lease_duration") if auth else None))


def _seconds(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
