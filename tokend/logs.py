"""Logging set-up, and redaction as the last line of defence.

tokend never logs a secret or a token on purpose. The redacting formatter is the safety net for
everything else (library messages, exception text): it replaces every configured secret value and
anything shaped like a JWT or a bearer credential with `***` in the final formatted line.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from datetime import UTC, datetime
from typing import Literal

from tokend.systemd import JournalPriorityFormatter, writes_to_journal

LogFormat = Literal["text", "json"]

MASK = "***"
_MIN_SECRET_LENGTH = 4  # shorter values would mask ordinary words; no real secret is that short
_SHAPES = re.compile(
    r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*"  # JWT / JWS
    r"|(?<=[Bb]earer )[A-Za-z0-9._~+/=-]{8,}"  # Authorization: Bearer <token>
    r"|(?<=[Bb]asic )[A-Za-z0-9+/=]{8,}"  # Authorization: Basic <id:secret>
)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def one_line(text: str) -> str:
    """`text` with control characters shown escaped: whatever a config key or an identity
    provider's error field holds, a message about it stays one line."""
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], text)


class Redactor:
    """Masks known secret values and token-shaped strings. Thread-safe; one per process."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()
        self._pattern: re.Pattern[str] | None = None

    def add_secret(self, value: str) -> None:
        if len(value) < _MIN_SECRET_LENGTH or value in self._secrets:
            return
        with self._lock:
            self._secrets.add(value)
            self._pattern = None

    def redact(self, text: str) -> str:
        text = self._secret_pattern().sub(MASK, text) if self._secrets else text
        return _SHAPES.sub(MASK, text)

    def _secret_pattern(self) -> re.Pattern[str]:
        pattern = self._pattern
        if pattern is None:
            with self._lock:
                # Longest first, so a secret that contains another is masked whole.
                ordered = sorted(self._secrets, key=len, reverse=True)
                pattern = self._pattern = re.compile("|".join(map(re.escape, ordered)))
        return pattern


redactor = Redactor()


class TextFormatter(logging.Formatter):
    """`2026-11-23T10:00:00.123Z INFO token=crm refreshed ...`, redacted."""

    def format(self, record: logging.LogRecord) -> str:
        token = getattr(record, "token", None)
        prefix = f"token={token} " if token else ""
        line = f"{_timestamp(record)} {record.levelname} {prefix}{record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redactor.redact(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers; `token` is a field of its own."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        token = getattr(record, "token", None)
        if token:
            entry["token"] = token
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redactor.redact(json.dumps(entry, ensure_ascii=False))


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def setup_logging(level: str = "info", fmt: LogFormat = "text") -> None:
    """Route every logger (tokend's and the libraries') through one redacting handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    if writes_to_journal(sys.stderr):
        formatter = JournalPriorityFormatter(formatter)  # journald records each line's level
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The scheduler narrates every job at INFO; tokend logs what matters about each refresh itself.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    for noisy in ("httpx2", "httpcore2", "uvicorn.access", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
