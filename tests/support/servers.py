"""Serving an ASGI app over real HTTP on 127.0.0.1 (a free port) from a background thread.

tokend's own `HttpListener` binds and listens before serving, so connections made right away
wait in the kernel's backlog: no start-up polling needed.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from tests.support.pki import CertPair
from tokend.server import HttpListener, bind_tcp


@contextmanager
def serve(app: Any, tls: CertPair | None = None) -> Iterator[str]:
    """Serve `app` until the block ends; yields its base URL (`http://127.0.0.1:PORT`, or
    `https://` with `tls`: the server's certificate and key)."""
    if tls is not None:
        with _serve_tls(app, tls) as url:
            yield url
        return
    listener = HttpListener(app, "127.0.0.1", 0)
    thread = threading.Thread(target=asyncio.run, args=(listener.serve(),), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.address[1]}"
    finally:
        listener.stop()
        thread.join(10)


@contextmanager
def _serve_tls(app: Any, tls: CertPair) -> Iterator[str]:
    """uvicorn terminating TLS (tokend's own listener serves plain HTTP on loopback only)."""
    sock = bind_tcp("127.0.0.1", 0)
    config = uvicorn.Config(
        app,
        ssl_certfile=str(tls.cert),
        ssl_keyfile=str(tls.key),
        log_config=None,
        access_log=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=asyncio.run, args=(server.serve([sock]),), daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def free_port() -> int:
    """A port free on 127.0.0.1 right now, for a process under test to listen on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
