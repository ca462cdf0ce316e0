"""The HTTP listener's own socket."""

from __future__ import annotations

import socket

import pytest

from tokend.server import HttpListener, ListenError


def test_listening_socket_is_tcp_so_responses_are_not_delayed() -> None:
    """asyncio turns on TCP_NODELAY for accepted connections only when the listening socket's
    proto is TCP; without it each response waited ~40 ms on loopback (Nagle vs delayed ACK)."""
    listener = HttpListener(host="127.0.0.1", port=0)
    try:
        assert listener._socket.proto == socket.IPPROTO_TCP
    finally:
        listener._socket.close()


def test_busy_port_is_one_clear_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ListenError) as caught:
            HttpListener(host="127.0.0.1", port=port)
    assert str(caught.value) == f"cannot listen on 127.0.0.1:{port}: Address already in use"
