"""`tokend status` against a hostile or broken peer, and bad input: a document that looks like
tokend's but is not, strings meant to forge lines on the terminal, a URL that cannot be tokend's
listener, a config that cannot be read. Each is one line on stderr naming the peer (or the
file), a non-zero exit, never a traceback. Real processes over real sockets on loopback."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.processes import tokend
from tests.support.servers import serve

NOT_TOKEND = "it does not answer like tokend: /status is not tokend's"


def _sink(**changes: Any) -> dict[str, Any]:
    return {
        "holds_expires_at": "2026-11-26T01:00:00Z",
        "holds_valid_token": True,
        "required_for_ready": True,
        "standby": False,
        "last_success": "2026-11-25T23:59:00Z",
        "consecutive_failures": 0,
        "last_error": None,
        **changes,
    }


def _token(**changes: Any) -> dict[str, Any]:
    return {
        "state": "fresh",
        "published": True,
        "ready": True,
        "expires_at": "2026-11-26T01:00:00Z",
        "expires_in_seconds": 3600,
        "next_refresh": "2026-11-26T00:45:00Z",
        "last_success": "2026-11-25T23:59:00Z",
        "consecutive_failures": 0,
        "last_error": None,
        "sinks": {"file": _sink()},
        **changes,
    }


def _status(**changes: Any) -> dict[str, Any]:
    """A `/status` as tokend sends it, with `changes`."""
    return {
        "time": "2026-11-26T00:00:00Z",
        "tokens": {"crm": _token()},
        "ready": True,
        "tokens_shown": "all",
        "tokens_total": 1,
        **changes,
    }


@contextmanager
def _serving(document: Any) -> Iterator[str]:
    body = json.dumps(document).encode()

    async def status(request: Request) -> Response:
        return Response(body, media_type="application/json")

    with serve(Starlette(routes=[Route("/status", status)])) as url:
        yield url


def _one_line_error(result: Any, peer: str, returncode: int = 1) -> str:
    """The one line `tokend status` printed on stderr, naming `peer`, after failing as it should."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == returncode, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert peer in lines[0]
    line: str = lines[0]
    return line


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda path: path.write_text("listen: [\n"), ":2:1: "),
        (lambda path: None, ": config file not found"),
        (lambda path: path.mkdir(), ": cannot read config: is a directory"),
    ],
    ids=["yaml", "missing", "directory"],
)
def test_a_config_that_cannot_be_read(
    tmp_path: Path, make: Callable[[Path], object], problem: str
) -> None:
    """As `tokend check` says it: the file, where, what; not an exception's class name."""
    config = tmp_path / "c.yaml"
    make(config)
    line = _one_line_error(tokend("status", "-c", str(config)), str(config), returncode=2)
    assert line.startswith(f"{config}{problem}")


@pytest.mark.parametrize(
    "document",
    [
        _status(time="garbage"),
        _status(tokens={"crm": _token(state=5)}),
        _status(tokens={"crm": _token(last_error=5)}),
        _status(tokens={"crm": _token(expires_at="2026-11-26T01:00:00")}),  # no timezone
        _status(tokens={"crm": _token(sinks={"file": {}})}),
        _status(tokens={"crm": _token(sinks={"file": _sink(last_success="yesterday")})}),
        _status(tokens={"crm": _token(sinks={"file": _sink(last_error=["x"])})}),
    ],
    ids=["time", "state", "last_error", "naive_expiry", "empty_sink", "sink_time", "sink_error"],
)
def test_a_document_that_only_looks_like_tokend_s(document: dict[str, Any]) -> None:
    """Each passed the old shape check and broke the table with a traceback."""
    with _serving(document) as url:
        result = tokend("status", "--url", url)
    assert _one_line_error(result, url) == f"cannot read tokend's status from {url}: {NOT_TOKEND}"


FORGED = "\x1b[2J\nready\r\u202e\x9b"
"""Clears the screen, starts a line that says `ready`, and more a terminal would act on."""


def test_a_server_cannot_forge_lines() -> None:
    """Every string the server sent is shown escaped, on its own line: the output has exactly
    its lines, and says NOT READY as `ready: false` does."""
    sink = _sink(last_error=f"disk{FORGED}", consecutive_failures=2)
    token = _token(state=f"fresh{FORGED}", last_error=f"err{FORGED}", sinks={f"f{FORGED}": sink})
    document = _status(
        tokens={f"crm{FORGED}": token}, ready=False, vault={"summary": f"up{FORGED}"}
    )
    with _serving(document) as url:
        result = tokend("status", "--url", url)
    assert result.returncode == 1 and result.stderr == "", result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 5, result.stdout  # header, token, sink, vault, NOT READY
    assert lines[-1].startswith("NOT READY")
    assert "ready" not in [line.strip() for line in lines]
    assert all(line.isprintable() for line in lines)
    escaped = "\\x1b[2J\\nready\\r\\u202e\\x9b"
    assert lines[1].startswith(f"crm{escaped}  fresh{escaped}")
    assert lines[1].endswith(f"err{escaped}")
    assert lines[2] == f"    sink f{escaped}: failing (2x, last success 1m00s ago): disk{escaped}"
    assert lines[3] == f"vault up{escaped}"


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:abc", "http://exa mple", "http://[::1", "http://127.0.0.1:99999"],
)
def test_a_url_that_cannot_be_a_listener(url: str) -> None:
    _one_line_error(tokend("status", "--url", url), url, returncode=2)


def test_a_file_url_is_not_read(tmp_path: Path) -> None:
    """Once read as /status, whatever local file it named."""
    (tmp_path / "status").write_text(json.dumps(_status()))
    url = f"file://{tmp_path}"
    line = _one_line_error(tokend("status", "--url", url), url, returncode=2)
    assert "not an http(s) URL" in line


def test_a_listen_address_that_cannot_be_a_listener(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text('listen: "exa mple:9464"\n')
    line = _one_line_error(tokend("status", "-c", str(config)), str(config), returncode=2)
    assert line.startswith(f"{config}: listen: ")
    assert "exa mple" in line
