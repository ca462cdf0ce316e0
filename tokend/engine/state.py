"""Persisted state: the last good token of each configured token, so that a restart resumes
without a burst of requests to the identity provider, and keeps consumers supplied when the
identity provider is down at the time of the restart.

One JSON file per token in `state_dir`, written atomically with mode 0600 in a 0700 directory.
A stored token is used only while valid and only for the same request (endpoint, client and
target): changing a token's config discards its stored value.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from tokend import files
from tokend.oauth import TokenRequest
from tokend.token import Token

log = logging.getLogger("tokend.state")

_FORMAT = 1


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
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def load(self, name: str, expected_fingerprint: str, now: datetime) -> Token | None:
        """The stored token of `name`, if there is one still valid for the same request."""
        path = self._path(name)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            if document.get("format") != _FORMAT:
                return None
            if document.get("fingerprint") != expected_fingerprint:
                log.info("stored token discarded: its config changed", extra={"token": name})
                return None
            token = _token_from(document["token"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning(
                "stored state %s unreadable (%s); ignoring it",
                path,
                type(exc).__name__,
                extra={"token": name},
            )
            return None
        return token if token.is_valid(now) else None

    def save(self, name: str, request_fingerprint: str, token: Token) -> None:
        """Store `token` for `name`. Raises OSError."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        document = {
            "format": _FORMAT,
            "fingerprint": request_fingerprint,
            "token": _token_to(token),
        }
        files.write_atomic(self._path(name), json.dumps(document).encode(), mode=0o600)

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.json"


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
