"""Logging set-up: one line per event on stderr, as text or JSON, every line redacted.

tokend never logs a secret or a token on purpose. The redacting formatters are the safety net for
everything else (library messages, exception text): `tokend.redaction` masks each line, or with
JSON each field before it is encoded.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Literal

from tokend.redaction import redactor

LogFormat = Literal["text", "json"]


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
    """One JSON object per line, for log shippers; `token` is a field of its own. Each field is
    redacted before it is encoded: JSON escapes a secret's quotes and backslashes, so the
    encoded line would no longer hold the secret as it was registered."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redactor.redact(record.getMessage()),
        }
        token = getattr(record, "token", None)
        if token:
            entry["token"] = redactor.redact(str(token))
        if record.exc_info:
            entry["exception"] = redactor.redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


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


# --- journald -----------------------------------------------------------------------------

_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def syslog_priority(levelno: int) -> int:
    """The syslog priority journald should record for a Python log level."""
    for threshold, priority in _PRIORITIES:
        if levelno >= threshold:
            return priority
    return 7  # debug


def writes_to_journal(stream: IO[str], environ: Mapping[str, str] | None = None) -> bool:
    """True if `stream` is the journald stream systemd connected (`$JOURNAL_STREAM` names its
    device:inode). A stderr redirected elsewhere by the user gets no prefixes."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        info = os.fstat(stream.fileno())
        return (info.st_dev, info.st_ino) == (int(device), int(inode))
    except (OSError, ValueError):
        return False


class JournalPriorityFormatter(logging.Formatter):
    """Wraps tokend's formatter and puts `<N>` (syslog priority) before each line, so journald
    records warnings and errors at their level. A traceback's lines keep the record's priority."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in self.inner.format(record).split("\n"))
