"""Masking secrets and tokens in text that tokend shows: the last line of defence.

tokend never prints a secret or a token on purpose. Everything an identity provider, Vault or a
library says is still treated as hostile: before it is shown anywhere (logs, `/status`, `tokend
status`, exception text) it is masked, and only then cut to length (`shown`), so a secret
straddling the cut is never printed minus its last characters. Masked are: every secret value
tokend has read, its usual encodings (base64, URL encoding), every access token tokend holds,
anything shaped like a JWT or an `Authorization` value, and the start or end of a known secret
at the edges of a text (an identity provider that cut its own echo short).
"""

from __future__ import annotations

import base64
import re
import threading
from dataclasses import dataclass, field
from urllib.parse import quote, quote_plus

MASK = "***"
_MIN_SECRET_LENGTH = 4  # shorter values would mask ordinary words; no real secret is that short
_MIN_PARTIAL = 6  # a secret's first or last characters this many or more, at a text's edge
_TOKEN_KEY = 12  # tokens are found by their first characters: a dict lookup per position
_SHAPES = re.compile(
    r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*"  # JWT / JWS
    r"|(?<=[Bb]earer )[A-Za-z0-9._~+/=-]{8,}"  # Authorization: Bearer <token>
    r"|(?<=[Bb]asic )[A-Za-z0-9+/=]{8,}"  # Authorization: Basic <id:secret>
)
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")
_TOKEN_RUN = re.compile(r"[\x21-\x7e]{" + str(_TOKEN_KEY) + ",}")
"""Where a held token may be: any run of visible ASCII, every character an access token or a
refresh token may hold (opaque tokens are not all base64: `:`, `!`, `*`, `$` occur)."""


def one_line(text: str) -> str:
    """`text` with every character a terminal would not show as itself escaped (`\\n`,
    `\\x1b`, `\\x9b`, `\\u202e`): whatever a config key, an identity provider's error field
    or a server's `/status` holds, a line about it stays one line, and cannot clear a screen,
    reorder its text or forge another line."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def encodings(value: str) -> set[str]:
    """How a secret may appear when someone echoes what tokend sent. Any str has its forms: lone
    surrogates (bytes that were not UTF-8 in the environment, a `\\ud800` in JSON) are encoded
    as they stand, since this last line of defence must not fail where a secret is refused."""
    raw = value.encode("utf-8", "surrogatepass")
    forms = {value, quote(raw, safe=""), quote_plus(raw)}
    for encoded in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        text = encoded.decode("ascii")
        forms |= {text, text.rstrip("=")}
    return forms


class Redactor:
    """Thread-safe; one per process (`redactor`)."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()
        self._pattern: re.Pattern[str] | None = None
        self._edges: _Edges | None = None
        self._tokens: dict[str, set[str]] = {}  # first _TOKEN_KEY characters -> token values

    def add_secret(self, value: str) -> None:
        """Mask `value` and its encodings from now on."""
        if len(value) < _MIN_SECRET_LENGTH or value in self._secrets:
            return
        with self._lock:
            self._secrets |= {form for form in encodings(value) if len(form) >= _MIN_SECRET_LENGTH}
            self._pattern = self._edges = None

    def add_token(self, value: str) -> None:
        """Mask the access token `value` (held now) wherever it appears. A JWT is masked by its
        shape already: only opaque tokens are indexed (at 100,000 tokens, that saves tens of
        megabytes)."""
        if len(value) >= _TOKEN_KEY and not _JWT.fullmatch(value):
            with self._lock:
                self._tokens.setdefault(value[:_TOKEN_KEY], set()).add(value)

    def forget_token(self, value: str) -> None:
        """`value` is no longer held (replaced): stop looking for it."""
        with self._lock:
            values = self._tokens.get(value[:_TOKEN_KEY])
            if values is not None:
                values.discard(value)
                if not values:
                    del self._tokens[value[:_TOKEN_KEY]]

    def redact(self, text: str) -> str:
        if self._secrets:
            text = self._secret_pattern().sub(MASK, text)
            text = self._mask_edges(text)
        if self._tokens:
            text = _TOKEN_RUN.sub(self._mask_tokens, text)
        return _SHAPES.sub(MASK, text)

    def shown(self, text: str, limit: int) -> str:
        """`text` as it may be shown: masked, on one line, then cut to `limit` characters."""
        line = one_line(self.redact(text))
        return line if len(line) <= limit else line[: limit - 3] + "..."

    def _mask_edges(self, text: str) -> str:
        """A secret's first characters at the end of `text`, or its last at the start (the
        longest such piece). Secrets are looked up by the piece's own first or last characters,
        so the cost grows with the text's edges, not with the number of secrets."""
        edges = self._edges or self._edge_index()
        size = len(text)
        for start in range(max(size - edges.longest, 0), size - _MIN_PARTIAL + 1):
            heads = edges.by_head.get(text[start : start + _MIN_PARTIAL])
            if heads and any(len(s) > size - start and s.startswith(text[start:]) for s in heads):
                text = text[:start] + MASK
                break
        for end in range(min(len(text), edges.longest), _MIN_PARTIAL - 1, -1):
            tails = edges.by_tail.get(text[end - _MIN_PARTIAL : end])
            if tails and any(len(s) > end and s.endswith(text[:end]) for s in tails):
                text = MASK + text[end:]
                break
        return text

    def _edge_index(self) -> _Edges:
        with self._lock:
            edges = _Edges(longest=max(map(len, self._secrets)))
            for secret in self._secrets:
                edges.by_head.setdefault(secret[:_MIN_PARTIAL], []).append(secret)
                edges.by_tail.setdefault(secret[-_MIN_PARTIAL:], []).append(secret)
            self._edges = edges
        return edges

    def _mask_tokens(self, match: re.Match[str]) -> str:
        """Every held token in a run, left to right (a loop, not recursion: a hostile echo can
        join thousands of them with commas)."""
        run, tokens = match.group(), self._tokens
        shown: list[str] = []
        start = done = 0
        while start <= len(run) - _TOKEN_KEY:
            found = _held_at(run, start, tokens.get(run[start : start + _TOKEN_KEY]))
            if found:
                shown += [run[done:start], MASK]
                start = done = start + found
            else:
                start += 1
        return "".join([*shown, run[done:]]) if shown else run

    def _secret_pattern(self) -> re.Pattern[str]:
        pattern = self._pattern
        if pattern is None:
            with self._lock:
                # Longest first, so a secret that contains another is masked whole.
                ordered = sorted(self._secrets, key=len, reverse=True)
                pattern = self._pattern = re.compile("|".join(map(re.escape, ordered)))
        return pattern


def _held_at(run: str, start: int, candidates: set[str] | None) -> int:
    """The length of the held token at `start` in `run` (0: none)."""
    for value in candidates or ():
        if run.startswith(value, start):
            return len(value)
    return 0


@dataclass
class _Edges:
    """The known secrets by their first and by their last `_MIN_PARTIAL` characters."""

    longest: int
    by_head: dict[str, list[str]] = field(default_factory=dict)
    by_tail: dict[str, list[str]] = field(default_factory=dict)


redactor = Redactor()
