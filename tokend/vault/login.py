"""A Vault login (`Login`: a token and its lease) and the pieces every auth method shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from tokend.secrets import Secret, SecretError, SecretReference
from tokend.vault.errors import Problem, VaultError, classify, vault_detail


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


def resolve(ref: SecretReference, where: str, key: str) -> Secret:
    """A login secret, read now (never from Vault itself: config validation refuses that)."""
    try:
        return ref.resolve()
    except SecretError as exc:
        raise VaultError(where, f"vault.auth.{key}: {exc}", Problem.LOGIN) from None


def login_call(
    call: Any, where: str, timeout: float, refused: str, denied: str | None = None
) -> Any:
    """Run a login request; a refusal becomes a `Problem.LOGIN` error saying `refused` (or
    `denied` for an HTTP 403, which Vault also answers when no auth method is mounted there)."""
    try:
        return call()
    except Exception as exc:
        error = classify(exc, where, "log in", timeout)
        if error.problem is Problem.DENIED and denied:
            raise VaultError(where, denied, Problem.LOGIN) from None
        if error.problem in (Problem.DENIED, Problem.INVALID):
            detail = vault_detail(exc)
            raise VaultError(
                where, f"{refused}: {detail}" if detail else refused, Problem.LOGIN
            ) from None
        raise error from None


def from_auth(body: Any, where: str, now: datetime) -> Login:
    """The `Login` in a login answer's `auth` object."""
    auth = body.get("auth") if isinstance(body, dict) else None
    token = auth.get("client_token") if isinstance(auth, dict) else None
    if not isinstance(auth, dict) or not isinstance(token, str) or not token:
        raise VaultError(where, "login answer holds no token", Problem.INTERNAL)
    ttl = timedelta(seconds=seconds(auth.get("lease_duration")))
    return Login(Secret(token), now, ttl, bool(auth.get("renewable")))


def renewed_ttl(body: Any) -> timedelta:
    """The new TTL from a `renew-self` answer."""
    auth = body.get("auth") if isinstance(body, dict) else None
    return timedelta(seconds=seconds(auth.get("lease_duration") if auth else None))


def seconds(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
