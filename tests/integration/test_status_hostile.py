"""`tokend status` against a hostile or broken peer, and bad input: a document that looks like
tokend's but is not, HTTP that is not HTTP, a URL that cannot be tokend's listener, a server that
drips its answer, strings meant to forge lines on the terminal, a config that cannot be read.
Each is one line on stderr naming the peer (or the file), a non-zero exit, never a traceback and
never a hang. Real processes over real sockets on loopback."""

from __future__ import annotations

import json
import socket
import threading
import time
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
from tokend.status import StatusUnavailable, fetch_status

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
        (lambda path: path.mkdir(), ": not a regular file (a directory)"),
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


@contextmanager
def _raw_server(answer: Callable[[socket.socket, threading.Event], None]) -> Iterator[str]:
    """A socket server on 127.0.0.1 that reads each request's head, then lets `answer` write
    whatever it likes (it may stop early when the event is set: the server is closing)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)  # so the loop sees `closing` soon after the test ends
    closing = threading.Event()

    def run() -> None:
        while not closing.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(30)
                try:
                    _read_head(connection)
                    answer(connection, closing)
                    connection.shutdown(socket.SHUT_WR)
                except OSError:
                    pass  # the client gave up: what these servers are for

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        closing.set()
        thread.join(10)
        listener.close()


def _read_head(connection: socket.socket) -> None:
    head = b""
    while b"\r\n\r\n" not in head:
        piece = connection.recv(4096)
        if not piece:
            return
        head += piece


def _sending(data: bytes) -> Callable[[socket.socket, threading.Event], None]:
    def answer(connection: socket.socket, closing: threading.Event) -> None:
        connection.sendall(data)

    return answer


_OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"


@pytest.mark.parametrize(
    "answer",
    [
        b"garbage\r\n\r\n",
        _OK + b"X-Long: " + b"a" * 100_000 + b"\r\n\r\n",
        _OK + b"".join(b"X-%d: y\r\n" % n for n in range(101)) + b"\r\n",
        _OK + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    ],
    ids=["status_line", "long_header", "many_headers", "chunking"],
)
def test_http_that_is_not_http(answer: bytes) -> None:
    """http.client's HTTPException family: neither OSError nor ValueError, once a traceback."""
    with _raw_server(_sending(answer)) as url:
        result = tokend("status", "--url", url)
    line = _one_line_error(result, url)
    assert line.startswith(f"cannot read tokend's status from {url}: ")
    assert "garbage" not in line  # nothing the server sent is quoted


def _dripping(data: bytes) -> Callable[[socket.socket, threading.Event], None]:
    """An answer of `data`, one byte a second."""

    def answer(connection: socket.socket, closing: threading.Event) -> None:
        for byte in data:
            if closing.wait(1):
                return
            connection.sendall(bytes([byte]))

    return answer


def _response(body: bytes) -> bytes:
    return _OK + b"Content-Length: %d\r\n\r\n" % len(body) + body


def test_a_dripping_server_meets_the_deadline() -> None:
    """A byte a second from the status line on: each read is quick, the whole never ends (the
    socket's timeout is per read). The deadline (`--timeout`) ends it; the test takes about that
    long."""
    with _raw_server(_dripping(_response(json.dumps(_status()).encode()))) as url:
        started = time.monotonic()
        result = tokend("status", "--url", url, "--timeout", "3s")
        took = time.monotonic() - started
    line = _one_line_error(result, url)
    assert line == f"cannot read tokend's status from {url}: no whole answer within 3 s"
    assert 3 <= took < 3 + 10


def test_a_body_dripped_after_quick_headers_meets_the_deadline() -> None:
    body = json.dumps(_status()).encode()

    def answer(connection: socket.socket, closing: threading.Event) -> None:
        connection.sendall(_response(body)[: -len(body)])
        _dripping(body)(connection, closing)

    with _raw_server(answer) as url, pytest.raises(StatusUnavailable) as caught:
        fetch_status(url, deadline=2)
    assert str(caught.value) == "no whole answer within 2 s"


@pytest.mark.parametrize("timeout", ["0", "0s", "0.0000001s"])
def test_a_timeout_that_would_turn_the_deadline_off_is_refused(timeout: str) -> None:
    """A timer of 0 is no timer: the deadline would be off, and a dripping server would hold
    `tokend status` for good."""
    result = tokend("status", "--url", "http://127.0.0.1:9", "--timeout", timeout)
    assert result.returncode == 2
    assert result.stderr.strip().endswith(
        f"argument --timeout: '{timeout}' is not more than 0 seconds"
    )
