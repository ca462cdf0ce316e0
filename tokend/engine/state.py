"""Persisted state: the last good token of each configured token, so that a restart resumes
without a burst of requests to the identity provider, and keeps consumers supplied when the
identity provider is down at the time of the restart.

One JSON file per token in `state_dir`, written atomically with mode 0600 in a 0700 directory.
With `state_key`, the token is sealed (AES-256-GCM, bound to the token's name and request
fingerprint); without one, tokend says once that state is stored unencrypted. Either way, state
is private as ssh keys are: a directory or file that another user owns or can write is refused,
so a forged file never reaches a sink. A stored token is used only while valid, only for the
same request (endpoint, client and target), and never if it claims a life no identity provider
issues.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokend import files
from tokend.seal import Sealer, SealError
from tokend.sealed import make_private_directory, private_problem
from tokend.token import Token

if TYPE_CHECKING:
    from tokend.oauth import TokenRequest

log = logging.getLogger("tokend.state")

_PLAIN = 1
_SEALED = 2
MAX_AHEAD = timedelta(hours=24)
"""No identity provider issues tokens living longer: a stored expiry beyond is not trusted."""


def fingerprint(request: TokenRequest) -> str:
    """What the stored token was obtained for; never includes a secret."""
    endpoint, target = request.grant.endpoint, request.target
    parts = [
        endpoint.token_url or "",
        endpoint.issuer or "",
        request.grant.client_id,
        target.resource or "",
        " ".join(target.scopes),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


class StateStore:
    def __init__(self, directory: Path, sealer: Sealer | None = None) -> None:
        self.directory = directory
        self._sealer = sealer
        if sealer is None:
            _warn_unencrypted(directory)

    def load(self, name: str, expected_fingerprint: str, now: datetime) -> Token | None:
        """The stored token of `name`, if there is one still valid for the same request."""
        path = self._path(name)
        extra = {"token": name}
        try:
            if problem := private_problem(path, directory=False):
                log.warning("stored state %s ignored: %s", path, problem, extra=extra)
                return None
            document = json.loads(path.read_text(encoding="utf-8"))
            if document.get("fingerprint") != expected_fingerprint:
                log.info("stored token discarded: its config changed", extra=extra)
                return None
            token = _token_from(self._contents(document, name, expected_fingerprint))
        except FileNotFoundError:
            return None
        except SealError:
            log.warning(
                "stored state %s does not open with this state_key (tampered, or sealed with "
                "another key); ignoring it",
                path,
                extra=extra,
            )
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning(
                "stored state %s unreadable (%s); ignoring it",
                path,
                type(exc).__name__,
                extra=extra,
            )
            return None
        if token.expires_at > now + MAX_AHEAD or token.obtained_at > now + MAX_AHEAD:
            log.warning("stored state %s ignored: its times are implausible", path, extra=extra)
            return None
        return token if token.is_valid(now) else None

    def save(self, name: str, request_fingerprint: str, token: Token) -> None:
        """Store `token` for `name`. Raises OSError (a directory that is not private too)."""
        make_private_directory(self.directory)
        document: dict[str, Any] = {"fingerprint": request_fingerprint}
        plain = json.dumps(_token_to(token))
        if self._sealer is None:
            document |= {"format": _PLAIN, "token": json.loads(plain)}
        else:
            sealed = self._sealer.seal(plain.encode(), _associated(name, request_fingerprint))
            document |= {"format": _SEALED, "sealed": sealed}
        files.write_atomic(self._path(name), json.dumps(document).encode(), mode=0o600)

    async def persist(self, name: str, request_fingerprint: str, token: Token) -> None:
        """`save` off the event loop; a failure is logged, not raised: the token is published
        all the same, only a restart would re-acquire it."""
        try:
            await asyncio.to_thread(self.save, name, request_fingerprint, token)
        except OSError as exc:
            log.warning(
                "could not save state in %s: %s",
                self.directory,
                exc.strerror,
                extra={"token": name},
            )

    def _contents(self, document: dict[str, Any], name: str, fingerprint: str) -> Any:
        kind = document.get("format")
        if kind == _SEALED:
            if self._sealer is None:
                raise SealError("sealed state, but no state_key is configured")
            return json.loads(self._sealer.open(document["sealed"], _associated(name, fingerprint)))
        if kind == _PLAIN:
            return document["token"]  # (from before state_key was set: sealed at the next save)
        raise ValueError(f"unknown format {kind!r}")

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.json"


def _associated(name: str, fingerprint: str) -> str:
    return f"tokend state\n{name}\n{fingerprint}"


_warned: set[Path] = set()


def _warn_unencrypted(directory: Path) -> None:
    if directory not in _warned:
        _warned.add(directory)
        log.warning(
            "state in %s is stored unencrypted: set state_key (a secret reference) to seal it",
            directory,
        )


def _token_to(token: Token) -> dict[str, Any]:
    return {
        "value": token.value,
        "token_type": token.token_type,
        "expires_at": token.expires_at.isoformat(),
        "obtained_at": token.obtained_at.isoformat(),
        "refresh_on": token.refresh_on.isoformat() if token.refresh_on else None,
        "resource": token.resource,
        "scopes": list(token.scopes),
    }


def _token_from(raw: dict[str, Any]) -> Token:
    def moment(key: str) -> datetime:
        value = datetime.fromisoformat(raw[key])
        if value.tzinfo is None:
            raise ValueError(f"{key} has no timezone")
        return value

    return Token(
        value=str(raw["value"]),
        token_type=str(raw["token_type"]),
        expires_at=moment("expires_at"),
        obtained_at=moment("obtained_at"),
        refresh_on=moment("refresh_on") if raw.get("refresh_on") else None,
        resource=raw.get("resource"),
        scopes=tuple(raw.get("scopes") or ()),
    )
