"""Log set-up and the exact shape of a log line, text and JSON (log shippers and people parse
them): timestamp, level, the token the line is about, the message, any traceback."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from tokend.logs import JournalPriorityFormatter, JsonFormatter, TextFormatter, setup_logging

CREATED = datetime(2026, 3, 1, 12, 0, 5, 123456, tzinfo=UTC).timestamp()


def _record(
    message: str, *args: object, token: str | None = None, level: int = logging.WARNING
) -> logging.LogRecord:
    exc_info = None
    if message.startswith("failed"):
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("tokend.refresh", level, __file__, 1, message, args, exc_info)
    record.created = CREATED
    if token:
        record.token = token
    return record


def test_a_text_line() -> None:
    formatter = TextFormatter()
    assert (
        formatter.format(_record("refreshed in %ss", 2, token="crm"))
        == "2026-03-01T12:00:05.123Z WARNING token=crm refreshed in 2s"
    )
    assert formatter.format(_record("started")) == "2026-03-01T12:00:05.123Z WARNING started"
    lines = formatter.format(_record("failed", token="crm")).splitlines()
    assert lines[0] == "2026-03-01T12:00:05.123Z WARNING token=crm failed"
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: boom"


def test_times_are_utc_to_the_millisecond_whatever_the_local_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        record = _record("x")
        record.created = datetime(2026, 3, 1, 12, 0, 5, 500000, tzinfo=UTC).timestamp()
        assert TextFormatter().format(record) == "2026-03-01T12:00:05.500Z WARNING x"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_json_line() -> None:
    formatter = JsonFormatter()
    assert json.loads(formatter.format(_record("refreshed é", token="crm"))) == {
        "time": "2026-03-01T12:00:05.123Z",
        "level": "warning",
        "logger": "tokend.refresh",
        "message": "refreshed é",
        "token": "crm",
    }
    assert "é" in formatter.format(_record("é"))  # UTF-8 as is, not \\u escapes
    entry = json.loads(formatter.format(_record("failed", level=logging.ERROR)))
    assert set(entry) == {"time", "level", "logger", "message", "exception"}
    assert entry["level"] == "error"
    assert entry["exception"].endswith("ValueError: boom")


@pytest.fixture
def root_logging() -> Iterator[logging.Logger]:
    """Whatever setup_logging does to the process's loggers is undone afterwards."""
    root = logging.getLogger()
    names = ("apscheduler", "httpx2", "httpcore2", "uvicorn.access", "uvicorn.error")
    saved = (root.handlers[:], root.level, {name: logging.getLogger(name).level for name in names})
    yield root
    root.handlers[:], root.level = saved[0], saved[1]
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize(
    ("level", "fmt", "formatter", "numeric"),
    [
        ("debug", "json", JsonFormatter, logging.DEBUG),
        ("warning", "text", TextFormatter, logging.WARNING),
        ("info", "text", TextFormatter, logging.INFO),
    ],
)
def test_setup_routes_everything_through_one_handler_on_stderr(
    root_logging: logging.Logger,
    monkeypatch: pytest.MonkeyPatch,
    level: str,
    fmt: str,
    formatter: type,
    numeric: int,
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    setup_logging(level, fmt)  # type: ignore[arg-type]
    (handler,) = root_logging.handlers
    assert isinstance(handler, logging.StreamHandler)
    assert handler.stream is sys.stderr
    assert type(handler.formatter) is formatter
    assert root_logging.level == numeric
    for noisy in ("apscheduler", "httpx2", "httpcore2", "uvicorn.access", "uvicorn.error"):
        assert logging.getLogger(noisy).level == logging.WARNING, noisy


def test_by_default_info_as_text(root_logging: logging.Logger) -> None:
    setup_logging()
    (handler,) = root_logging.handlers
    assert (type(handler.formatter), root_logging.level) == (TextFormatter, logging.INFO)


def test_under_journald_each_line_carries_its_priority(
    root_logging: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tokend.logs.writes_to_journal", lambda stream: stream is sys.stderr)
    setup_logging("info", "json")
    (handler,) = root_logging.handlers
    assert isinstance(handler.formatter, JournalPriorityFormatter)
    line = handler.formatter.format(_record("an error line", level=logging.ERROR))
    assert line.startswith("<3>{") and "\n" not in line
    assert json.loads(line.removeprefix("<3>"))["message"] == "an error line"
