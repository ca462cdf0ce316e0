"""The network layer under tokend's HTTP clients: httpcore2's `AsyncNetworkBackend` on asyncio's
own transports.

httpcore2 reaches the network through anyio by default. At 100,000 tokens (~300 refreshes a
second) that layer was a third of the event loop's time (bench/RESULTS.md section 7): every
request asked each idle pooled connection whether its peer had hung up, which through anyio
built a dict of socket attributes and made a `poll()` system call per connection, twice per
request; each read and write entered a cancel scope; a request went out in two `send()` calls.
Here a connection's `asyncio.Protocol` already knows whether the peer hung up (it is told), a
read waits on one future, and a request's head and body leave in one write: the first read of
the answer sends what was written (`write` only stores, up to `_CORK_LIMIT`).
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import Iterable
from typing import Any, cast

import httpcore2

_CORK_LIMIT = 1 << 16
"""Written bytes held for the next read at most: a token request is well under a kilobyte."""
HAPPY_EYEBALLS_DELAY = 0.25
"""Seconds before the next resolved address is tried beside a connection attempt still pending
(RFC 8305, as anyio did): a host whose IPv6 route is black-holed still reaches the IdP's IPv4."""
_READ_LIMIT = 1 << 18
"""Received bytes buffered before the socket stops being read (flow control)."""


class AsyncioBackend(httpcore2.AsyncNetworkBackend):
    """Opens TCP connections with `loop.create_connection` (resolved addresses raced Happy
    Eyeballs style, `TCP_NODELAY` set) and upgrades them with `loop.start_tls`."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = (local_address, 0) if local_address else None
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_connection(
                    _Receiver,
                    host,
                    port,
                    local_addr=local,
                    happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY,
                )
        except TimeoutError:
            raise httpcore2.ConnectTimeout(f"no connection within {timeout:g}s") from None
        except OSError as exc:
            raise httpcore2.ConnectError(_connect_failure(exc, host, port)) from exc
        sock = transport.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        return AsyncioStream(transport, protocol)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore2.AsyncNetworkStream:
        raise httpcore2.ConnectError("tokend's clients connect over TCP only")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def _connect_failure(exc: OSError, host: str, port: int) -> str:
    """`Connection refused (host:port)` rather than asyncio's `Connect call failed (...)`."""
    if exc.errno and exc.errno > 0 and not isinstance(exc, socket.gaierror):
        return f"{os.strerror(exc.errno)} ({host}:{port})"
    return str(exc)


class _Receiver(asyncio.Protocol):
    """What arrived on a connection and has not been read yet, and whether the peer is gone."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = bytearray()
        self.ended = False
        self.error: BaseException | None = None
        self.arrived: asyncio.Future[None] | None = None
        self.drained: asyncio.Future[None] | None = None
        self.reading_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received += data
        if len(self.received) > _READ_LIMIT and self.transport is not None:
            self.transport.pause_reading()
            self.reading_paused = True
        self._wake()

    def eof_received(self) -> bool:
        self.ended = True
        self._wake()
        return False  # close our side too: an HTTP/1.1 peer that ends its side is done

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        self.error = exc
        self._wake()
        self.resume_writing()

    def pause_writing(self) -> None:
        self.drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.drained = None

    def _wake(self) -> None:
        if self.arrived is not None and not self.arrived.done():
            self.arrived.set_result(None)


class AsyncioStream(httpcore2.AsyncNetworkStream):
    def __init__(self, transport: asyncio.Transport, receiver: _Receiver) -> None:
        self._transport = transport
        self._receiver = receiver
        self._corked: list[bytes] = []
        self._corked_size = 0

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        await self._uncork(timeout)
        receiver = self._receiver
        if not receiver.received and not receiver.ended:
            receiver.arrived = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await receiver.arrived
            except TimeoutError:
                raise httpcore2.ReadTimeout(f"nothing received within {timeout:g}s") from None
            finally:
                receiver.arrived = None
        if not receiver.received and receiver.error is not None:
            raise httpcore2.ReadError(str(receiver.error)) from receiver.error
        data = bytes(receiver.received[:max_bytes])
        del receiver.received[:max_bytes]
        if receiver.reading_paused and len(receiver.received) <= _READ_LIMIT // 2:
            receiver.reading_paused = False
            self._transport.resume_reading()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        self._corked.append(buffer)
        self._corked_size += len(buffer)
        if self._corked_size > _CORK_LIMIT:
            await self._uncork(timeout)

    async def aclose(self) -> None:
        self._corked.clear()
        self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(
                    self._transport, self._receiver, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError:
            self._transport.close()
            raise httpcore2.ConnectTimeout(f"no TLS handshake within {timeout:g}s") from None
        except OSError as exc:  # ssl.SSLError, a refused certificate among them
            self._transport.close()
            raise httpcore2.ConnectError(str(exc)) from exc
        tls = cast(asyncio.Transport, transport)  # typeshed allows None; CPython never returns it
        self._receiver.transport = tls
        return AsyncioStream(tls, self._receiver)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # asked of idle connections: has the peer hung up?
            return bool(self._receiver.received) or self._receiver.ended
        name = {"client_addr": "sockname", "server_addr": "peername"}.get(info, info)
        if name in ("ssl_object", "sockname", "peername", "socket"):
            return self._transport.get_extra_info(name)
        return None

    async def _uncork(self, timeout: float | None) -> None:
        """Send what `write` held, in one piece; wait while the socket's buffer is full."""
        if not self._corked:
            return
        data = self._corked[0] if len(self._corked) == 1 else b"".join(self._corked)
        self._corked.clear()
        self._corked_size = 0
        if self._transport.is_closing():
            raise httpcore2.WriteError("the connection is closed")
        self._transport.write(data)
        if (drained := self._receiver.drained) is not None:
            try:
                async with asyncio.timeout(timeout):
                    await drained
            except TimeoutError:
                raise httpcore2.WriteTimeout(f"nothing sent within {timeout:g}s") from None
