"""`tokend.oauth.network`: httpcore2's network backend on asyncio transports, against raw TCP
peers on loopback. What a pool relies on: a request leaves in one piece when its answer is
read, an idle connection whose peer hung up says so (and is replaced, not reused), big answers
are read whole through flow control, and every failure is the httpcore2 error httpx2 maps."""

from __future__ import annotations

import asyncio
import functools
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import httpcore2
import pytest

from tokend.oauth.http import Clients
from tokend.oauth.network import HAPPY_EYEBALLS_DELAY, AsyncioBackend, AsyncioStream

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


def in_a_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """A coroutine test run in a fresh event loop (fixtures passed through)."""

    @functools.wraps(test)
    def run(**fixtures: Any) -> None:
        asyncio.run(test(**fixtures))

    return run


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll the event loop until `condition` holds (I/O reaching the other side)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


@asynccontextmanager
async def connected() -> AsyncIterator[tuple[AsyncioStream, socket.socket]]:
    """A stream from the backend and the peer's end of it, a plain blocking socket."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        stream = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)
        assert isinstance(stream, AsyncioStream)
        peer, _ = listener.accept()
        try:
            yield stream, peer
        finally:
            await stream.aclose()
            peer.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ),
        0,
    )
    return head + await reader.readexactly(length)


@in_a_loop
async def test_the_clients_pool_runs_on_the_asyncio_backend() -> None:
    """httpx2 takes no network backend: `Clients` swaps its transport's pool for one built
    with ours. If httpx2 renames the attribute, this fails instead of silently going back to
    anyio."""
    clients = Clients(deadline=5, connect_timeout=5, max_connections=4)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ANSWER)
        await writer.drain()

    async with serving(answer) as port:
        reply = await clients.exchange("GET", f"http://127.0.0.1:{port}/")
        assert (reply.status, reply.body) == (200, b"ok")
        (client,) = clients._clients.values()
        pool = client._transport._pool  # type: ignore[attr-defined]
        assert isinstance(pool._network_backend, AsyncioBackend)
        assert len(pool.connections) == 1
    await clients.aclose()


@in_a_loop
async def test_a_request_leaves_in_one_write_when_its_answer_is_read() -> None:
    async with connected() as (stream, peer):
        peer.setblocking(False)
        await stream.write(b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\n", timeout=5)
        await stream.write(b"body", timeout=5)
        with pytest.raises(BlockingIOError):
            peer.recv(1024)
        reading = asyncio.create_task(stream.read(1024, timeout=5))
        await until(lambda: _readable(peer))
        assert peer.recv(1024) == b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody"
        peer.sendall(ANSWER)
        assert await reading == ANSWER


@in_a_loop
async def test_an_idle_connection_whose_peer_hung_up_is_replaced() -> None:
    """The peer closes a keep-alive connection after its answer: the pool must see it as
    expired (asyncio was told of the FIN) and open a new one, not send into the dead one."""
    connections = 0

    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(ANSWER)
        await writer.drain()
        writer.close()

    pool = httpcore2.AsyncConnectionPool(network_backend=AsyncioBackend())
    async with serving(answer_once) as port, pool:
        first = await pool.request("GET", f"http://127.0.0.1:{port}/")
        assert first.status == 200
        (idle,) = pool.connections
        await until(idle.has_expired)
        second = await pool.request("GET", f"http://127.0.0.1:{port}/")
        assert (second.status, second.content, connections) == (200, b"ok", 2)


@in_a_loop
async def test_an_idle_connection_is_not_expired_while_its_peer_keeps_it() -> None:
    async with connected() as (stream, peer):
        assert stream.get_extra_info("is_readable") is False
        peer.close()
        await until(lambda: stream.get_extra_info("is_readable") is True)
        assert await stream.read(1024, timeout=5) == b""


@in_a_loop
async def test_an_answer_larger_than_the_read_buffer_is_read_whole() -> None:
    """Past 256 KiB unread the socket stops being read; reading resumes it."""
    body = bytes(range(256)) * 2400  # 600 KiB
    sent = asyncio.Event()

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(body)
        await writer.drain()
        writer.close()
        sent.set()

    async with serving(big) as port:
        stream = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)
        assert isinstance(stream, AsyncioStream)
        await sent.wait()
        received = bytearray()
        while chunk := await stream.read(65536, timeout=5):
            received += chunk
        assert received == body
        await stream.aclose()


@in_a_loop
async def test_a_reset_connection_is_a_read_error() -> None:
    async with connected() as (stream, peer):
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # with a zero linger: RST, not FIN
        with pytest.raises(httpcore2.ReadError, match="reset"):
            await stream.read(1024, timeout=5)
        await stream.write(b"GET / HTTP/1.1\r\n\r\n", timeout=5)
        with pytest.raises(httpcore2.WriteError, match=r"^the connection is closed$"):
            await stream.read(1024, timeout=5)


@in_a_loop
async def test_a_silent_peer_is_a_read_timeout() -> None:
    async with connected() as (stream, _):
        with pytest.raises(httpcore2.ReadTimeout, match=r"nothing received within 0\.05s"):
            await stream.read(1024, timeout=0.05)


@in_a_loop
async def test_a_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, never listening: refused
        with pytest.raises(
            httpcore2.ConnectError, match=rf"^Connection refused \(127\.0\.0\.1:{port}\)$"
        ):
            await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)


@in_a_loop
async def test_unix_sockets_are_refused() -> None:
    with pytest.raises(httpcore2.ConnectError, match="over TCP only"):
        await AsyncioBackend().connect_unix_socket("/tmp/none.sock")


def _readable(sock: socket.socket) -> bool:
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return False


@in_a_loop
async def test_resolved_addresses_are_raced_happy_eyeballs_style(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A black-holed IPv6 route must not hold the connection until it times out: the next
    address is tried after `HAPPY_EYEBALLS_DELAY` (asyncio's own implementation, switched on)."""
    loop = asyncio.get_running_loop()
    asked: dict[str, Any] = {}
    original = loop.create_connection

    async def create_connection(*args: Any, **kwargs: Any) -> Any:
        asked.update(kwargs)
        return await original(*args, **kwargs)

    monkeypatch.setattr(loop, "create_connection", create_connection)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        stream = await AsyncioBackend().connect_tcp("127.0.0.1", listener.getsockname()[1])
        await stream.aclose()
    assert asked["happy_eyeballs_delay"] == HAPPY_EYEBALLS_DELAY == 0.25
