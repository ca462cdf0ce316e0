"""`tokend.oauth.network`, the parts test_network.py leaves out: what a connection reports about
itself (addresses, socket, options set, a local address to bind), a write past the cork limit
leaving at once, the timeouts of connecting, of the TLS handshake and of a write, TLS checking
the name it was given, a handshake refused, and the lines a failed connection reads."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from pathlib import Path

import httpcore2
import pytest

from tests.integration.test_network import ANSWER, connected, in_a_loop, read_request, until
from tests.support.pki import CertificateAuthority
from tokend.oauth.http import Clients
from tokend.oauth.network import AsyncioBackend, _connect_failure


@in_a_loop
async def test_a_connection_reports_its_addresses_and_socket_and_binds_where_asked() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    keepalive = (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    streams = [
        await AsyncioBackend().connect_tcp(
            "127.0.0.1", port, timeout=5, local_address="127.0.0.2", socket_options=[keepalive]
        )
        for _ in range(2)
    ]
    try:
        for stream in streams:
            client = stream.get_extra_info("client_addr")
            assert client[0] == "127.0.0.2" and client[1] not in (0, 1)
            assert stream.get_extra_info("server_addr") == ("127.0.0.1", port)
            sock = stream.get_extra_info("socket")
            assert sock.getsockname() == client
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert stream.get_extra_info("ssl_object") is None  # plain TCP
            assert stream.get_extra_info("compression") is None  # not asked of a socket
    finally:
        for stream in streams:
            await stream.aclose()
        listener.close()


@in_a_loop
async def test_a_write_past_the_cork_limit_leaves_without_waiting_for_a_read() -> None:
    async with connected() as (stream, peer):
        peer.setblocking(False)
        received = bytearray()

        def arrived() -> bool:
            with contextlib.suppress(BlockingIOError):
                received.extend(peer.recv(1 << 20))
            return len(received) == (1 << 16) + 1

        await stream.write(b"x" * (1 << 16), timeout=5)  # at the limit: held
        assert not arrived()  # a write of its own would be in the peer's buffer already
        await stream.write(b"y", timeout=5)  # past it: sent
        await until(arrived)
        assert bytes(received) == b"x" * (1 << 16) + b"y"


@in_a_loop
async def test_no_time_to_connect_or_to_shake_hands_is_a_connect_timeout() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        with pytest.raises(httpcore2.ConnectTimeout, match=r"^no connection within 0s$"):
            await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=0)
        stream = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)
        peer, _ = listener.accept()  # a peer that never answers the ClientHello
        with pytest.raises(httpcore2.ConnectTimeout, match=r"^no TLS handshake within 0\.05s$"):
            await stream.start_tls(ssl.create_default_context(), "localhost", timeout=0.05)
        peer.setblocking(False)
        await until(lambda: _ended(peer))  # the ClientHello, then the end: tokend closed its side
        peer.close()
    finally:
        listener.close()


@in_a_loop
async def test_a_peer_that_does_not_speak_tls_is_a_connect_error() -> None:
    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()

    server = await asyncio.start_server(plain, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        stream = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)
        with pytest.raises(httpcore2.ConnectError, match=r"WRONG_VERSION_NUMBER|wrong version"):
            await stream.start_tls(ssl.create_default_context(), "localhost", timeout=5)


@in_a_loop
async def test_a_host_that_does_not_resolve_and_unix_sockets_read_as_they_are() -> None:
    with pytest.raises(httpcore2.ConnectError, match=r"^\[Errno -2\] Name or service not known$"):
        await AsyncioBackend().connect_tcp("no-such-host.invalid", 443, timeout=5)
    with pytest.raises(httpcore2.ConnectError, match=r"^tokend's clients connect over TCP only$"):
        await AsyncioBackend().connect_unix_socket("/tmp/none.sock")


def test_a_failure_without_an_errno_reads_as_asyncio_put_it() -> None:
    """asyncio raises an OSError without errno when every address of a host failed
    differently; an errno of 1 is a real one (EPERM: a firewall rule)."""
    several = OSError("Multiple exceptions: [Errno 111] a, [Errno 113] b")
    assert _connect_failure(several, "idp", 443) == str(several)
    assert _connect_failure(OSError(1, "x"), "idp", 443) == "Operation not permitted (idp:443)"


@in_a_loop
async def test_the_backend_sleeps_as_long_as_asked() -> None:
    started = time.monotonic()
    await AsyncioBackend().sleep(0.05)
    assert time.monotonic() - started >= 0.05


def _ended(sock: socket.socket) -> bool:
    try:
        while sock.recv(4096):
            pass
    except BlockingIOError:
        return False
    return True


@in_a_loop
async def test_a_write_the_peer_never_takes_is_a_write_timeout() -> None:
    async with connected() as (stream, _):  # the peer never reads: the socket's buffers fill up
        with pytest.raises(httpcore2.WriteTimeout, match=r"^nothing sent within 0\.05s$"):
            await stream.write(b"x" * (32 << 20), timeout=0.05)


@in_a_loop
async def test_an_idle_connection_with_unread_bytes_is_readable() -> None:
    """A peer that sent something unasked on an idle keep-alive connection: the pool must not
    reuse it (the bytes would be read as the next answer)."""
    async with connected() as (stream, peer):
        peer.sendall(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        await until(lambda: stream.get_extra_info("is_readable") is True)


def test_the_pool_keeps_httpx2s_limits_and_the_clients_tls_context() -> None:
    """The pool that replaces httpx2's keeps what `Clients` asked of httpx2: at most
    `max_connections` open and kept, idle ones expired after httpx2's 5 s (a peer or a NAT
    that drops idle connections silently), certificates checked with the client's context."""
    clients = Clients(deadline=5, connect_timeout=5, max_connections=4)
    client = clients._client(None, direct=True, tls=True)
    pool = client._transport._pool  # type: ignore[attr-defined]
    limits = (pool._max_connections, pool._max_keepalive_connections, pool._keepalive_expiry)
    assert limits == (4, 4, 5.0)
    assert pool._ssl_context is not None and pool._ssl_context.verify_mode == ssl.CERT_REQUIRED
    asyncio.run(clients.aclose())


def test_tls_checks_the_name_it_was_given(tmp_path: Path) -> None:
    asyncio.run(_tls_checks_the_name_it_was_given(tmp_path))


async def _tls_checks_the_name_it_was_given(tmp_path: Path) -> None:
    authority = CertificateAuthority(tmp_path, "network test CA")
    server_pair = authority.issue("server", "127.0.0.1", server_ips=("127.0.0.1",))
    serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    serving.load_cert_chain(server_pair.cert, server_pair.key)
    trusting = ssl.create_default_context(cafile=str(authority.cert))

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            writer.write(await reader.read(5))
            await writer.drain()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=serving)
    async with server:
        port = server.sockets[0].getsockname()[1]
        plain = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)
        stream = await plain.start_tls(trusting, "127.0.0.1", timeout=5)
        assert stream.get_extra_info("ssl_object").server_hostname == "127.0.0.1"
        await stream.write(b"hello", timeout=5)
        assert await stream.read(5, timeout=5) == b"hello"
        await stream.aclose()
        other = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)
        with pytest.raises(httpcore2.ConnectError, match=r"match|mismatch"):
            await other.start_tls(trusting, "idp.example", timeout=5)


REMOTE_IDP = "10.255.255.1"  # not on this machine, so the proxy is used; never dialled itself


class TunnelProxy:
    """An HTTP CONNECT proxy on loopback that sends every tunnel to one local port, counting
    the tunnels open at once and where each was asked to go."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.open = 0
        self.most = 0
        self.asked: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.asked.append(head.split(b" ")[1].decode())
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.target_port
        )
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.open += 1
        self.most = max(self.most, self.open)
        try:
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        finally:
            self.open -= 1


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@in_a_loop
async def test_a_peer_behind_a_proxy_gets_the_configured_trust_and_connection_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A remote IdP through `HTTPS_PROXY` goes through httpx2's own proxy transport, which must
    still trust the configured CA bundle and keep to the connection cap."""
    authority = CertificateAuthority(tmp_path, "proxy test CA")
    pair = authority.issue("idp", REMOTE_IDP, server_ips=(REMOTE_IDP,))
    serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    serving.load_cert_chain(pair.cert, pair.key)

    async def idp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            while await read_request(reader):
                await asyncio.sleep(0.05)  # answers overlap, so a cap can show
                writer.write(ANSWER)
                await writer.drain()

    server = await asyncio.start_server(idp, "127.0.0.1", 0, ssl=serving)
    proxy = TunnelProxy(server.sockets[0].getsockname()[1])
    tunnels = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{tunnels.sockets[0].getsockname()[1]}")
    clients = Clients(deadline=10, connect_timeout=5, max_connections=2)
    async with server, tunnels:
        url = f"https://{REMOTE_IDP}/token"
        answers = await asyncio.gather(
            *(clients.exchange("POST", url, ca_bundle=authority.cert) for _ in range(6))
        )
        await clients.aclose()
    assert [answer.body for answer in answers] == [b"ok"] * 6
    assert proxy.asked[0] == f"{REMOTE_IDP}:443"
    assert proxy.most == 2
