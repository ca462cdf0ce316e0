"""The endpoint's HTTP server over raw sockets: keep-alive, pipelining in order, HTTP/1.0,
`Expect: 100-continue`, HEAD, upgrades and absolute-form targets, and what it refuses (malformed
requests, oversized heads and bodies, CONNECT), each refusal answered after the requests before
it and the connection closed; the connection cap and write backpressure."""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tokend.endpoint import http
from tokend.endpoint.http import HttpServer
from tokend.server import bind_tcp


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with what it was asked, so the tests can see the scope the server built."""
    body = (await receive())["body"]
    answer = {
        "method": scope["method"],
        "path": scope["path"],
        "query": scope["query_string"].decode(),
        "body": body.decode(),
        "client": scope["client"][0],
    }
    data = json.dumps(answer).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": data})


@contextlib.contextmanager
def serving() -> Iterator[int]:
    """An echo server on a thread of its own; yields its port."""
    sock = bind_tcp("127.0.0.1", 0)
    server = HttpServer(echo, sock, None)
    thread = threading.Thread(target=asyncio.run, args=(server.serve(),), daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    server.stop()
    thread.join(10)


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with serving() as port:
        yield port


def exchange(port: int, data: bytes, *, responses: int = 1) -> tuple[list[bytes], bool]:
    """Send `data`; read until `responses` whole responses arrived or the server closed. Returns
    the responses and whether the server closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(data)
        buffer, closed = b"", False
        while buffer.count(b"HTTP/1.1 ") - buffer.count(
            b"HTTP/1.1 100"
        ) < responses or not _complete(buffer):
            chunk = conn.recv(65536)
            if not chunk:
                closed = True
                break
            buffer += chunk
        if not closed:
            conn.settimeout(0.3)
            try:
                closed = conn.recv(1) == b""
            except TimeoutError:
                closed = False
    parts = [b"HTTP/1.1 " + part for part in buffer.split(b"HTTP/1.1 ")[1:]]
    return [part for part in parts if not part.startswith(b"HTTP/1.1 100")], closed


def _complete(buffer: bytes) -> bool:
    head, _, body = buffer.rpartition(b"\r\n\r\n")
    length = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    return bool(length) and len(body) >= int(length[-1].split(b":")[1])


def body_of(response: bytes) -> dict[str, Any]:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])  # type: ignore[no-any-return]


def test_keep_alive_and_the_scope(port: int) -> None:
    request = b"GET /a%20b?x=1&y=2 HTTP/1.1\r\nHost: h\r\n\r\n"
    (response,), closed = exchange(port, request)
    assert response.startswith(b"HTTP/1.1 200 OK\r\n") and not closed
    assert body_of(response) == {
        "method": "GET",
        "path": "/a b",
        "query": "x=1&y=2",
        "body": "",
        "client": "127.0.0.1",
    }


def test_pipelined_requests_are_answered_in_order(port: int) -> None:
    requests = b"".join(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % n for n in range(5))
    responses, _ = exchange(port, requests, responses=5)
    assert [body_of(r)["path"] for r in responses] == [f"/{n}" for n in range(5)]


def test_http_1_0_and_connection_close_end_the_connection(port: int) -> None:
    for request in (
        b"GET /x HTTP/1.0\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    ):
        (response,), closed = exchange(port, request)
        assert b"200 OK" in response and closed


def test_a_body_and_expect_continue(port: int) -> None:
    request = b"POST /r HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\nExpect: 100-continue\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(request)
        assert conn.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        conn.sendall(b'{"a": 1}\n')
        response = conn.recv(65536)
    assert body_of(response)["body"] == '{"a": 1}\n'


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", b"400 Bad Request"),
        (
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
            b"431 Request Header Fields Too Large",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 70000\r\n\r\n" + b"a" * 70000,
            b"413 Request Entity Too Large",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"400 Bad Request",
        ),
    ],
)
def test_refusals_are_answered_then_closed(port: int, request_bytes: bytes, status: bytes) -> None:
    (response,), closed = exchange(port, request_bytes)
    assert response.startswith(b"HTTP/1.1 " + status), response[:80]
    assert closed


def test_a_refusal_is_answered_after_the_requests_before_it(port: int) -> None:
    for bad in (b"NOT HTTP\r\n\r\n", b"GET / HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n"):
        responses, closed = exchange(
            port, b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n" + bad, responses=2
        )
        assert [r[:12] for r in responses] == [b"HTTP/1.1 200", responses[1][:12]]
        assert body_of(responses[0])["path"] == "/ok" and responses[1][9:12] in (b"400", b"431")
        assert closed


@pytest.mark.parametrize("upgrade", [b"websocket", b"h2c"])
def test_an_upgrade_is_answered_as_http_1_1(port: int, upgrade: bytes) -> None:
    request = b"GET /u HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n" % upgrade
    responses, closed = exchange(
        port, request + b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n", responses=2
    )
    assert [body_of(r)["path"] for r in responses] == ["/u", "/next"] and not closed


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
        b"POST /u HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        b"Content-Length: 2\r\n\r\n{}",
    ],
)
def test_connect_and_an_upgrade_with_a_body_are_refused(port: int, request_bytes: bytes) -> None:
    (response,), closed = exchange(port, request_bytes)
    assert response.startswith(b"HTTP/1.1 400 Bad Request") and closed


def test_an_absolute_form_target_is_served_by_its_path_and_query(port: int) -> None:
    for target, path in ((b"http://example.com/p?q=1", "/p"), (b"HTTP://example.com?q=1", "/")):
        (response,), closed = exchange(port, b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % target)
        assert (body_of(response)["path"], body_of(response)["query"]) == (path, "q=1")
        assert not closed


@pytest.mark.parametrize("target", [b"http://a:b/x", b"http:///x", b"http://[::1", b"ftp://h/x"])
def test_a_target_without_a_path_to_serve_is_a_400(port: int, target: bytes) -> None:
    (response,), closed = exchange(port, b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % target)
    assert response.startswith(b"HTTP/1.1 400 Bad Request") and closed


def test_head_is_answered_without_a_body(port: int) -> None:
    requests = b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\nGET /g HTTP/1.1\r\nHost: h\r\n\r\n"
    (head, get), closed = exchange(port, requests, responses=2)
    assert head.startswith(b"HTTP/1.1 200 OK") and b"content-length:" in head
    assert head.endswith(b"\r\n\r\n") and body_of(get)["path"] == "/g" and not closed


def test_a_head_that_never_ends_is_refused_at_the_limit(port: int) -> None:
    """The bytes of the head count as they arrive, not a header once it is complete."""
    start = b"GET / HTTP/1.1\r\nHost: h\r\nX-Pad: "
    (response,), closed = exchange(port, start + b"a" * 2 * http.MAX_HEAD)
    assert response.startswith(b"HTTP/1.1 431 ") and closed


def test_chunked_trailers_count_toward_the_message_limit(port: int) -> None:
    """llhttp gathers a trailer's value whole before it calls back: the bytes count as they
    arrive, so an endless trailer is refused (it used to grow, and slow every other client)."""
    start = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX-T: "
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(start)
        for _ in range(2 * http.MAX_MESSAGE // 4096):  # until the server answers
            if select.select([conn], [], [], 0)[0]:
                break
            conn.sendall(b"a" * 4096)
        assert conn.recv(65536).startswith(b"HTTP/1.1 413 ")


def test_too_many_headers_are_refused(port: int) -> None:
    request = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"a:\r\n" * 200 + b"\r\n"
    (response,), closed = exchange(port, request)
    assert response.startswith(b"HTTP/1.1 431 ") and closed


def test_at_the_connection_cap_the_longest_idle_one_makes_room(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http, "MAX_CONNECTIONS", 2)
    with serving() as port:
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
        for conn in held:  # answered: the server has them, and both are idle
            conn.sendall(b"GET /held HTTP/1.1\r\nHost: h\r\n\r\n")
            assert conn.recv(65536).startswith(b"HTTP/1.1 200")
        (response,), _ = exchange(port, b"GET /new HTTP/1.1\r\nHost: h\r\n\r\n")
        assert body_of(response)["path"] == "/new"
        assert held[0].recv(1) == b""  # the longest idle was closed
        held[1].sendall(b"GET /still HTTP/1.1\r\nHost: h\r\n\r\n")
        assert held[1].recv(65536).startswith(b"HTTP/1.1 200")
        for conn in held:
            conn.close()


class _Transport(asyncio.Transport):
    """Records what the server writes and whether it reads."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.reading = True
        self.closed = False
        self.aborted = False

    def abort(self) -> None:
        self.aborted = self.closed = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


def test_while_the_client_does_not_read_nothing_more_is_read_or_answered() -> None:
    """asyncio's flow control: pause_writing comes when the client's unread answers pass the
    transport's high-water mark."""

    async def scenario() -> None:
        with socket.socket() as sock:
            connection = http._Connection(HttpServer(echo, sock, None))
        transport = _Transport()
        connection.connection_made(transport)
        connection.pause_writing()
        connection.data_received(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
        await _settle()
        assert transport.written == b"" and not transport.reading
        connection.resume_writing()
        await _settle()
        assert transport.written.startswith(b"HTTP/1.1 200") and transport.reading
        connection.close()

    asyncio.run(scenario())


def test_a_client_whose_answers_never_drain_loses_its_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At the deadline the connection is aborted, its buffer dropped, and it leaves the server's
    count at once: `close()` would wait for a buffer that never drains, holding the slot for good."""
    monkeypatch.setattr(http, "REQUEST_DEADLINE", 0.01)

    async def scenario() -> None:
        with socket.socket() as sock:
            server = HttpServer(echo, sock, None)
        connection = http._Connection(server)
        transport = _Transport()
        connection.connection_made(transport)
        assert connection in server.connections
        connection.pause_writing()  # the client reads nothing
        for _ in range(500):  # until the deadline's timer has fired (a loaded machine: later)
            if transport.aborted:
                break
            await asyncio.sleep(0.01)
        assert transport.aborted and connection not in server.connections

    asyncio.run(scenario())


async def _settle() -> None:
    """Let the tasks the server started run to their end (they await nothing slow)."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_chunk_of_many_requests_is_parsed_only_as_far_as_reading_goes() -> None:
    """What stops reading also stops parsing a chunk already received, so a client cannot queue
    thousands of requests in one packet; the rest is parsed, and answered, as answers go out."""
    request = b"GET /p HTTP/1.1\r\nHost: h\r\n\r\n"

    async def scenario() -> None:
        with socket.socket() as sock:
            connection = http._Connection(HttpServer(echo, sock, None))
        transport = _Transport()
        connection.connection_made(transport)
        connection.data_received(request * 500)
        assert len(connection._pending) < 100 and not transport.reading
        for _ in range(100_000):
            if transport.written.count(b"HTTP/1.1 200 OK") == 500:
                break
            await asyncio.sleep(0)
        assert transport.written.count(b"HTTP/1.1 200 OK") == 500 and transport.reading
        connection.close()

    asyncio.run(scenario())
