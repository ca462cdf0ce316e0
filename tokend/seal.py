"""Sealing data at rest: AES-256-GCM with a key derived from the configured `state_key`.

Used for everything tokend keeps on disk that is worth stealing (the last good access token of
each token; refresh tokens). The associated data binds a sealed blob to what it is for (the token
name and request fingerprint), so a file copied to another name, or kept across a config change,
does not open.
"""

from __future__ import annotations

import base64
import os
from typing import Any

_INFO = b"tokend state key v1"
_NONCE = 12


class SealError(ValueError):
    """The blob does not open with this key and these associated data (tampered, another key,
    or bound to something else)."""


class Sealer:
    """Seals and opens with one key. `repr` shows nothing of the key."""

    __slots__ = ("_aead",)

    def __init__(self, secret: str) -> None:
        # cryptography loads here, not at import: `tokend check` and `status` never seal.
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(
            secret.encode()
        )
        self._aead: Any = AESGCM(key)

    def seal(self, plaintext: bytes, associated: str) -> str:
        nonce = os.urandom(_NONCE)
        sealed: bytes = self._aead.encrypt(nonce, plaintext, associated.encode())
        return base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, blob: str, associated: str) -> bytes:
        from cryptography.exceptions import InvalidTag

        try:
            raw = base64.b64decode(blob, validate=True)
            plain: bytes = self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], associated.encode())
        except (InvalidTag, ValueError) as exc:
            raise SealError(type(exc).__name__) from None
        return plain

    def __repr__(self) -> str:
        return "Sealer(***)"
