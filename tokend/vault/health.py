"""What tokend knows of Vault's health, from the requests it makes anyway (no probing): whether
the last one got an answer from an unsealed Vault, whether Vault said it was sealed, and how
logins and renewals went. Read at scrape time for `/metrics` and `/status`; written from the
Vault worker threads, hence the lock."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime

from tokend.vault.errors import Problem, VaultError

_UNREACHED = frozenset({Problem.UNAVAILABLE, Problem.ADDRESS, Problem.SEALED})
"""No usable answer: Vault is down, sealed, or the address is not Vault."""


@dataclass
class Counts:
    success: int = 0
    error: int = 0

    def add(self, ok: bool) -> None:
        if ok:
            self.success += 1
        else:
            self.error += 1


@dataclass
class Snapshot:
    """A consistent copy for readers."""

    up: bool | None
    """The last request got an answer from an unsealed Vault (None: none made yet)."""
    sealed: bool | None
    """Vault said it was sealed at the last request that reached it (None: not known)."""
    last_contact: datetime | None
    last_error: str | None
    logins: Counts
    renewals: Counts


@dataclass
class VaultHealth:
    _up: bool | None = None
    _sealed: bool | None = None
    _last_contact: datetime | None = None
    _last_error: str | None = None
    _logins: Counts = field(default_factory=Counts)
    _renewals: Counts = field(default_factory=Counts)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, error: VaultError | None, now: datetime) -> None:
        """The outcome of a request: `None` for success."""
        with self._lock:
            problem = error.problem if error is not None else None
            self._up = problem not in _UNREACHED
            if problem is Problem.SEALED:
                self._sealed = True
            elif problem not in _UNREACHED:
                self._sealed = False
            if self._up:
                self._last_contact = now
            self._last_error = str(error) if error is not None else None

    def login(self, ok: bool) -> None:
        with self._lock:
            self._logins.add(ok)

    def renewal(self, ok: bool) -> None:
        with self._lock:
            self._renewals.add(ok)

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                self._up,
                self._sealed,
                self._last_contact,
                self._last_error,
                Counts(self._logins.success, self._logins.error),
                Counts(self._renewals.success, self._renewals.error),
            )


@dataclass(frozen=True)
class VaultReport:
    """A Vault session as `/status` and `/metrics` show it. No token: its expiry only."""

    address: str
    method: str
    """The auth method tokend logs in with."""
    logged_in: bool
    token_expires_at: datetime | None
    """None when not logged in, or when the token never expires."""
    renewable: bool | None
    health: Snapshot
