"""`tokend.oauth.network._Receiver`, the protocol under every pooled connection, driven by hand
with a transport that records what it is asked: flow control (a peer that sends more than is
read is paused, and resumed once the reader has caught up), the end of the peer's stream, and
writes waiting for the socket buffer to drain."""

from __future__ import annotations

import asyncio
from typing import Any

from tokend.oauth.network import _READ_LIMIT, AsyncioStream, _Receiver


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.written: list[bytes] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return False


def connected() -> tuple[_Receiver, RecordingTransport]:
    receiver, transport = _Receiver(), RecordingTransport()
    receiver.connection_made(transport)
    return receiver, transport


def test_a_peer_that_sends_more_than_is_read_is_paused_then_resumed() -> None:
    async def scenario() -> None:
        receiver, transport = connected()
        stream = AsyncioStream(transport, receiver)
        receiver.data_received(b"x" * _READ_LIMIT)
        assert transport.calls == []  # at the limit: still reading
        receiver.data_received(b"x")
        assert (transport.calls, receiver.reading_paused) == (["pause"], True)
        await stream.read(_READ_LIMIT // 2, timeout=1)
        assert transport.calls == ["pause"]  # more than half still unread
        await stream.read(1, timeout=1)
        assert (transport.calls, receiver.reading_paused) == (["pause", "resume"], False)

    asyncio.run(scenario())


def test_the_end_of_the_peers_stream_wakes_a_reader_and_closes_the_connection() -> None:
    async def scenario() -> None:
        receiver, transport = connected()
        stream = AsyncioStream(transport, receiver)
        reading = asyncio.create_task(stream.read(10, timeout=1))
        await asyncio.sleep(0)  # the read is waiting now
        assert receiver.eof_received() is False  # False: asyncio closes our side too
        assert receiver.ended is True
        assert stream.get_extra_info("is_readable") is True
        assert await reading == b""

    asyncio.run(scenario())


def test_a_write_waits_while_the_socket_buffer_is_full() -> None:
    async def scenario() -> None:
        receiver, transport = connected()
        stream = AsyncioStream(transport, receiver)
        receiver.pause_writing()
        writing = asyncio.create_task(stream.write(b"x" * (1 << 17), timeout=1))  # over the cork
        await asyncio.sleep(0)
        assert not writing.done()
        receiver.resume_writing()
        await writing
        assert receiver.drained is None
        await stream.write(b"y" * (1 << 17), timeout=1)  # nothing to wait for now
        assert [data[:1] for data in transport.written] == [b"x", b"y"]

    asyncio.run(scenario())
