"""The HTTP listener: a socket tokend binds itself (127.0.0.1 by default), served by uvicorn.

Binding and serving are two steps: the socket is bound at start (a busy port is a clear error
before anything else happens), and the web stack (uvicorn, starlette: tens of milliseconds to
import) loads only when serving begins, so `tokend run` can publish its first tokens first.
Connections made in between wait in the socket's backlog.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from tokend.errors import TokendError

if TYPE_CHECKING:
    from tokend.quiet_server import QuietServer


class ListenError(TokendError):
    """The listener could not bind; the text names the address."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="listen")


class HttpListener:
    """A bound socket; `serve(app)` serves an ASGI app on it with uvicorn, without uvicorn's
    signal handlers (signals stay tokend's to handle)."""

    def __init__(self, host: str, port: int) -> None:
        self._socket = bind_tcp(host, port)
        self.address = self._socket.getsockname()[:2]
        self._server: QuietServer | None = None
        self._stopped = False

    async def serve(self, app: Any) -> None:
        """Serve `app` until `stop()` (at once if it came first)."""
        from tokend.quiet_server import QuietServer  # noqa: PLC0415 - see the module docstring

        if self._stopped:
            return
        self._server = QuietServer(app)
        await self._server.serve(sockets=[self._socket])

    @property
    def serving(self) -> bool:
        return self._server is not None

    def stop(self) -> None:
        """Stop serving (or close the socket, if serving never began); callable from any
        thread."""
        self._stopped = True
        if self._server is not None:
            self._server.request_stop()
        else:
            self._socket.close()


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio sets TCP_NODELAY on accepted connections only then, and
    # without it every response waits ~40 ms (Nagle against the client's delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock
