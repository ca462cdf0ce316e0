"""The signed-in user of a delegated identity, as tokend keeps it between token requests.

Password and device-login identities are given refresh tokens that rotate: each answer brings a
new one, and at a strict server the one just spent is dead. `SignIn` is what every grant of one
identity shares (its v1 and v2 grants, the grants of a reload), so that:

- exchanges run one at a time per identity: two tokens of one identity never spend the same
  refresh token;
- the newest refresh token is stored, sealed with `state_key` in `state_dir`, before the access
  token it came with is handed on (a `kill -9` right after a rotation loses none);
- the stored file is read again whenever it changes on disk (`tokend login` writes it while the
  daemon runs, and the daemon carries on with it);
- a refresh token is masked in every text while it is held, and leaves this module only in the
  form of a token request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from tokend import writers
from tokend.oauth.errors import PermanentError
from tokend.oauth.grants.base import GrantContext
from tokend.redaction import redactor
from tokend.seal import Sealer, SealError
from tokend.sealed import SealedFiles, UnusableFile

log = logging.getLogger("tokend.signin")

REFRESH_TOKENS_DIRECTORY = "refresh-tokens"
"""The subdirectory of `state_dir` that holds one sealed file per identity."""


@dataclass(frozen=True, slots=True)
class _Record:
    token: str = field(repr=False)
    subject: str
    """Digest of the username the token was obtained with ('' for a device login): a refresh
    token of another user is never used after the username changed."""


class SignIn:
    """One identity's sign-in: an exchange lock, and its newest refresh token in memory and
    sealed on disk. `repr` shows no token."""

    def __init__(self, kept: SealedFiles | None, identity: str, binding: str) -> None:
        self.lock = asyncio.Lock()
        self.kept = kept
        self.identity = identity
        self._binding = binding
        self._record: _Record | None = None
        self._seen = ""  # the file's version when `_record` was read or written
        self._pending: _Record | None = None
        self._dead = False
        self.problem: str | None = None
        """Why the stored refresh token could not be used, if it could not (for messages)."""
        self.spent: str | None = None
        """The refresh token the exchange in progress sent, if it sent one."""
        self.subject = ""
        """The subject of the exchange in progress."""
        self.sent = ""
        """A digest of the credentials the exchange in progress sent instead (a password)."""
        self.refused: tuple[str, PermanentError] | None = None
        """Credentials refused for good (their digest) and the refusal: not sent again."""

    def begin(self) -> None:
        """An exchange starts (the lock is held)."""
        self.spent, self.subject, self.sent, self._pending, self._dead = None, "", "", None, False

    def current(self, subject: str = "") -> str | None:
        """The newest refresh token for `subject`, if one is held or stored."""
        if self.kept is not None:
            version = self.kept.version(self.identity)
            if version != self._seen:
                self._replace(self._load(self.kept))
                self._seen = version
        record = self._record
        return record.token if record is not None and record.subject == subject else None

    def hold(self, token: str) -> None:
        """`token` came with a successful answer: the newest from now on (stored by `settle`)."""
        redactor.add_token(token)
        self._pending = _Record(token, self.subject)

    def drop(self, token: str, why: str) -> None:
        """`token` was refused as dead (`why`): forget it (and, at `settle`, remove its file)."""
        if self._record is not None and self._record.token == token:
            self._replace(None)
            self._dead = True
            self.problem = why

    async def settle(self) -> None:
        """The exchange ends: store the refresh token it brought, or remove a dead one."""
        pending, dead = self._pending, self._dead
        self._pending, self._dead, self.spent = None, False, None
        if pending is not None:
            self._replace(pending)
            await self._store(pending)
        elif dead and self.kept is not None:
            await self._remove(self.kept)

    async def save(self, token: str) -> None:
        """Store `token` now as the newest (a login). Raises OSError when it cannot be stored."""
        record = _Record(token, "")
        self._replace(record)
        await self._store(record, quiet=False)

    def version(self) -> str:
        """What changes when another process (`tokend login`) stores a new refresh token."""
        return self.kept.version(self.identity) if self.kept is not None else "not kept"

    def _replace(self, record: _Record | None) -> None:
        old = self._record
        if old is not None and (record is None or old.token != record.token):
            redactor.forget_token(old.token)
        if record is not None:
            redactor.add_token(record.token)
        self._record = record

    def _load(self, kept: SealedFiles) -> _Record | None:
        self.problem = None
        try:
            plain = kept.read(self.identity, self._binding)
            if plain is None:
                return None
            raw = json.loads(plain)
            return _Record(str(raw["refresh_token"]), str(raw.get("subject", "")))
        except SealError:
            self.problem = (
                "the stored refresh token does not open with this state_key for this identity "
                "(sealed with another key, or for another tenant or client)"
            )
        except UnusableFile as exc:
            self.problem = f"the stored refresh token is not used: {exc}"
        except (ValueError, KeyError, TypeError):
            self.problem = "the stored refresh token file is damaged"
        log.warning("identity %s: %s", self.identity, self.problem)
        return None

    async def _store(self, record: _Record, *, quiet: bool = True) -> None:
        if self.kept is None:
            if not quiet:
                raise OSError("refresh tokens cannot be stored: no state_dir or state_key")
            return
        plain = json.dumps({"refresh_token": record.token, "subject": record.subject}).encode()
        try:
            await writers.in_writer_thread(self.kept.write, self.identity, self._binding, plain)
        except OSError as exc:
            if not quiet:
                raise
            log.error(
                "identity %s: the new refresh token could not be stored in %s (%s); it is kept "
                "in memory only: a restart now would need the password or tokend login",
                self.identity,
                self.kept.directory,
                exc.strerror or type(exc).__name__,
            )
            return
        self._seen = self.kept.version(self.identity)

    async def _remove(self, kept: SealedFiles) -> None:
        if kept.version(self.identity) != self._seen:
            return  # replaced meanwhile (tokend login): not the dead one
        try:
            await writers.in_writer_thread(kept.remove, self.identity)
        except OSError as exc:
            log.warning(
                "identity %s: the dead refresh token could not be removed (%s)",
                self.identity,
                exc.strerror or type(exc).__name__,
            )
        self._seen = kept.version(self.identity)

    def __repr__(self) -> str:
        return f"SignIn(identity={self.identity!r})"


def refresh_token_files(state_dir: Path, sealer: Sealer) -> SealedFiles:
    """Where identities' refresh tokens are kept: one sealed file each, in `state_dir`."""
    return SealedFiles(state_dir / REFRESH_TOKENS_DIRECTORY, sealer)


def subject_of(username: str) -> str:
    return hashlib.sha256(username.casefold().encode()).hexdigest()[:32]


def binding_of(context: GrantContext) -> str:
    """What a stored refresh token is bound to (the associated data it is sealed with): the
    identity's name, its authority (tenant) or server, and its client. The v1 and v2 grants of
    an Entra ID identity share one: its refresh tokens are good at both endpoints."""
    endpoint = context.endpoint
    authority = endpoint.token_url or endpoint.issuer or ""
    for suffix in ("/oauth2/v2.0/token", "/oauth2/token"):
        authority = authority.removesuffix(suffix)
    return f"tokend refresh token\n{context.identity}\n{authority}\n{context.client_id}"


_shared: weakref.WeakValueDictionary[tuple[str, int], SignIn] = weakref.WeakValueDictionary()


def sign_in_for(context: GrantContext) -> SignIn:
    """The `SignIn` every grant of this identity uses in this event loop (called from it). A
    grant built from a newer config brings the newest place to keep it (a new `state_key`)."""
    key = (binding_of(context), id(asyncio.get_running_loop()))
    sign_in = _shared.get(key)
    if sign_in is None:
        sign_in = _shared[key] = SignIn(context.kept, context.identity, key[0])
    elif context.kept is not None:
        sign_in.kept = context.kept
    return sign_in
