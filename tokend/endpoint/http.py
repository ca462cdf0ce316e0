"""A small HTTP/1.1 server for the endpoint: asyncio and httptools (llhttp, Node's parser), calling
an ASGI-shaped app.

Why not uvicorn, as the metrics listener uses: a token request is tiny and answered from memory,
so the server is most of its cost; uvicorn's per-request machinery (an ASGI cycle object, a
flow-control layer, several tasks) cost twice the CPU of this (bench/endpoint.py). What this
keeps from a full server: llhttp parses every byte (malformed input is a 400 and the connection
closes), keep-alive and pipelining (answered in order, one at a time), `Expect: 100-continue`,
limits on header and body sizes and on open connections (at the cap the longest-idle one makes
room), write backpressure (a client that does not read its answers is neither read nor answered
until it does), a deadline for a whole request to arrive (slow clients cannot hold connections)
and an idle timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import httptools

log = logging.getLogger("tokend.endpoint")

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]

MAX_HEAD = 16 * 1024
"""Request line and headers, in bytes: a token request needs a few hundred."""
MAX_HEADERS = 100
HEAD_STEP = 1024
"""Bytes fed to the parser at a time. llhttp does not say where in a chunk a head begins or ends,
so a head is counted in whole steps while it is in progress: one that passes MAX_HEAD is refused
before it is two steps longer, and none of MAX_HEAD or less is."""
MAX_BODY = 64 * 1024
MAX_MESSAGE = MAX_HEAD + 2 * MAX_BODY
"""A whole request as it arrives: head, body with its chunked framing, trailers."""
MAX_CONNECTIONS = 1024
MAX_PIPELINED = 16
REQUEST_DEADLINE = 10.0
"""Seconds for a whole request to arrive once it has begun."""
KEEP_ALIVE = 30.0
"""Seconds an idle connection stays open."""


class HttpServer:
    def __init__(self, app: App, sock: socket.socket, ssl_context: ssl.SSLContext | None) -> None:
        self.app = app
        self._socket = sock
        self._ssl = ssl_context
        self.connections: set[_Connection] = set()
        self.idle: dict[_Connection, None] = {}
        """Connections between requests, longest idle first."""
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _Connection(self), sock=self._socket, ssl=self._ssl, backlog=128
        )
        try:
            await self._stop.wait()
        finally:
            server.close()
            for connection in list(self.connections):
                connection.close()
            await server.wait_closed()

    def stop(self) -> None:
        """Stop serving; callable from any thread."""
        if self._loop is None:
            self._stop.set()
        else:
            self._loop.call_soon_threadsafe(self._stop.set)

    def admit(self, connection: _Connection) -> bool:
        """Count a new connection in; at MAX_CONNECTIONS the longest-idle one is closed to make
        room, so one client holding idle keep-alive connections cannot shut others out. Refused
        only when every connection has a request in progress."""
        if len(self.connections) >= MAX_CONNECTIONS:
            if not self.idle:
                return False
            oldest = next(iter(self.idle))
            self.leave(oldest)
            oldest.close()
        self.connections.add(connection)
        return True

    def leave(self, connection: _Connection) -> None:
        self.connections.discard(connection)
        self.idle.pop(connection, None)


class _Request:
    __slots__ = (
        "body",
        "head",
        "headers",
        "keep_alive",
        "method",
        "path",
        "query",
        "refusal",
        "size",
        "url",
    )

    def __init__(self, refusal: HTTPStatus | None = None) -> None:
        self.url = b""
        self.path = "/"
        self.query = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.head = 0
        self.size = 0
        self.method = "GET"
        self.keep_alive = True
        self.refusal = refusal
        """Set for a request refused unparsed: it takes its turn in the queue like the others."""


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._request = _Request()
        self._pending: deque[_Request] = deque()
        self._busy = False
        self._closing = False
        self._in_head = False
        self._in_message = False
        self._refused = False
        self._write_paused = False
        self._unread = memoryview(b"")
        """Received but not parsed yet: parsing stops where reading pauses."""
        self._client: tuple[str, int] | None = None
        self._timer: asyncio.TimerHandle | None = None

    # --- transport events ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not isinstance(transport, asyncio.Transport):  # pragma: no cover - streams only
            transport.close()
            return
        self._transport = transport
        if not self._server.admit(self):
            transport.close()
            return
        peer = transport.get_extra_info("peername")
        self._client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        self._rest()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._server.leave(self)
        self._disarm()

    def data_received(self, data: bytes) -> None:
        self._unread = memoryview(bytes(self._unread) + data if self._unread else data)
        self._read()

    def pause_writing(self) -> None:
        """The client asks faster than it reads: answer and read nothing more until its answers
        drain, so what the server holds for it stays bounded; and close it if they do not drain
        within REQUEST_DEADLINE."""
        self._write_paused = True
        self._update_reading()
        self._arm(REQUEST_DEADLINE)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._in_message:
            self._arm(REQUEST_DEADLINE)
        else:
            self._disarm()
        self._continue()

    def close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    # --- parsing -------------------------------------------------------------------------------

    def _read(self) -> None:
        """Parse what was received a step at a time, stopping where reading pauses: the rest of a
        chunk waits unparsed, so a chunk of many small requests queues no more than
        MAX_PIPELINED (and a step's worth) of them."""
        while self._unread and self._reading():
            step, self._unread = self._unread[:HEAD_STEP], self._unread[HEAD_STEP:]
            self._feed(step)
        if self._refused:
            self._unread = memoryview(b"")

    def _feed(self, data: memoryview) -> None:
        """Parse one step. A message (or its head) in progress before and after it grew by all
        of it: llhttp gathers a header's or a chunked trailer's value whole before it calls back,
        so what arrives is counted here, not what the callbacks see."""
        begun, in_head = (self._request if self._in_message else None), self._in_head
        self._parse(data)
        if begun is None or self._request is not begun or self._refused or not self._in_message:
            return
        begun.size += len(data)
        if in_head and self._in_head:
            begun.head += len(data)
            if begun.head > MAX_HEAD:
                self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
        elif begun.size > MAX_MESSAGE:
            self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)

    def _parse(self, data: memoryview) -> None:
        while True:
            try:
                self._parser.feed_data(data)
                return
            except httptools.HttpParserUpgrade as upgrade:
                # The request was answered as plain HTTP/1.1 (on_headers_complete let through
                # only upgrades without a body): what follows it is the next request.
                data = data[int(upgrade.args[0]) :]
            except httptools.HttpParserError as exc:  # callbacks' exceptions arrive wrapped
                refused = exc.__context__
                status = refused.status if isinstance(refused, _Refused) else None
                self._refuse(status or HTTPStatus.BAD_REQUEST)
                return

    # --- parser callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._request = _Request()
        self._in_head = self._in_message = True
        self._server.idle.pop(self, None)
        self._arm(REQUEST_DEADLINE)

    def on_url(self, url: bytes) -> None:
        self._request.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._request.headers.append((name.lower(), value))
        if len(self._request.headers) > MAX_HEADERS:
            raise _Refused(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)

    def on_headers_complete(self) -> None:
        self._in_head = False
        request = self._request
        request.method = self._parser.get_method().decode("ascii")
        request.keep_alive = bool(self._parser.should_keep_alive())
        if self._parser.should_upgrade():
            _check_upgrade(request)
        request.path, request.query = _target(request.url)
        if (b"expect", b"100-continue") in request.headers and self._transport is not None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._request.body += body
        if len(self._request.body) > MAX_BODY:
            raise _Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_message = False
        self._pending.append(self._request)
        self._update_reading()
        self._next()

    # --- answering -----------------------------------------------------------------------------

    def _next(self) -> None:
        if self._busy or self._write_paused or self._closing or not self._pending:
            return
        request = self._pending.popleft()
        if request.refusal is not None:
            self._send_refusal(request.refusal)
            return
        self._busy = True
        asyncio.get_running_loop().create_task(self._answer(request))

    async def _answer(self, request: _Request) -> None:
        response: dict[str, Any] = {}
        body = bytes(request.body)

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            response[message["type"]] = message

        try:
            await self._server.app(_scope(request, self._client), receive, send)
            start, sent = response["http.response.start"], response["http.response.body"]
            self._write(start["status"], start["headers"], sent.get("body", b""), request)
        except Exception:
            log.exception("endpoint: internal error")
            request.keep_alive = False
            self._write(500, [(b"content-type", b"application/json")], b"{}", request)
        self._busy = False
        if not request.keep_alive:
            self.close()
            return
        self._continue()

    def _continue(self) -> None:
        """After an answer, or once answers drain: read again if nothing stops it, then answer
        the next request or rest until one comes."""
        self._update_reading()
        if self._closing or self._write_paused:
            return
        self._read()
        if self._pending:
            self._next()
        elif not (self._busy or self._in_message or self._closing):
            self._rest()

    def _write(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, request: _Request
    ) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        lines = [b"HTTP/1.1 %d %s" % (status, HTTPStatus(status).phrase.encode())]
        lines += [name + b": " + value for name, value in headers]
        if not request.keep_alive:
            lines.append(b"connection: close")
        if request.method == "HEAD":  # the headers GET would have, and no body (RFC 9110 9.3.2)
            body = b""
        self._transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)

    def _refuse(self, status: HTTPStatus) -> None:
        """A request that cannot be parsed or is too big: nothing after it is read, the requests
        before it are answered, then it is, and the connection closes."""
        self._refused = True
        self._pending.append(_Request(refusal=status))
        self._update_reading()
        self._next()

    def _send_refusal(self, status: HTTPStatus) -> None:
        if self._transport is not None and not self._transport.is_closing():
            body = b'{"error":"%s"}' % status.phrase.lower().replace(" ", "_").encode()
            self._transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (status, status.phrase.encode(), len(body), body)
            )
        self.close()

    # --- limits --------------------------------------------------------------------------------

    def _reading(self) -> bool:
        """Read only while answers can be written, few requests wait and none was refused: what
        a client that sends without reading makes the server hold stays bounded."""
        return not (
            self._closing
            or self._write_paused
            or self._refused
            or len(self._pending) > MAX_PIPELINED
        )

    def _update_reading(self) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        if self._reading():
            self._transport.resume_reading()
        else:
            self._transport.pause_reading()

    def _rest(self) -> None:
        """Between requests: the keep-alive timeout runs, and the connection is the newest idle
        one (the last to be closed to make room)."""
        self._server.idle.pop(self, None)
        self._server.idle[self] = None
        self._arm(KEEP_ALIVE)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = asyncio.get_running_loop().call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        """A deadline passed (the request's, the idle one, or answers that did not drain): the
        connection is dropped at once, what is buffered for it with it. `close()` would wait
        for the buffer to drain, and a client that never reads would keep its slot for good."""
        self._closing = True
        self._server.leave(self)
        if self._transport is not None:
            with contextlib.suppress(Exception):
                self._transport.abort()


class _Refused(Exception):
    def __init__(self, status: HTTPStatus) -> None:
        self.status = status


def _check_upgrade(request: _Request) -> None:
    """CONNECT is not served. Other upgrades (`Upgrade: websocket`, `h2c`: `curl --http2`) are
    answered as plain HTTP/1.1, as RFC 9110 7.8 allows, except with a body: llhttp ends such a
    request at its headers and would read the body as the next one."""
    if request.method == "CONNECT" or any(
        name in (b"content-length", b"transfer-encoding") and value.strip() != b"0"
        for name, value in request.headers
    ):
        raise _Refused(HTTPStatus.BAD_REQUEST)


def _target(url: bytes) -> tuple[str, bytes]:
    """The path (decoded) and query of a request target: origin form (`/path?query`), or absolute
    form (`http://host/path?query`, which RFC 9112 3.2.2 has servers accept; its host is not
    used). Any other target is a 400, never an error from inside the app."""
    try:
        parsed = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError:
        raise _Refused(HTTPStatus.BAD_REQUEST) from None
    path = parsed.path
    if parsed.schema is not None:
        if parsed.schema.lower() not in (b"http", b"https") or not parsed.host:
            raise _Refused(HTTPStatus.BAD_REQUEST)
        path = path or b"/"
    if path is None:
        raise _Refused(HTTPStatus.BAD_REQUEST)
    return unquote(path.decode("latin-1")), parsed.query or b""


def _scope(request: _Request, client: tuple[str, int] | None) -> dict[str, Any]:
    return {
        "type": "http",
        "method": request.method,
        "path": request.path,
        "query_string": request.query,
        "headers": request.headers,
        "client": client,
    }
