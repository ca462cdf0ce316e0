"""Serving an ASGI app over real HTTP on 127.0.0.1 (a free port) from a background thread.

tokend's own `HttpListener` binds and listens before serving, so connections made right away
wait in the kernel's backlog: no start-up polling needed.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import uvicorn

from tests.support.pki import CertPair
from tokend.server import HttpListener, bind_tcp
from tokend.untrusted import json_or_none


@contextmanager
def serve(app: Any, tls: CertPair | None = None) -> Iterator[str]:
    """Serve `app` until the block ends; yields its base URL (`http://127.0.0.1:PORT`, or
    `https://` with `tls`: the server's certificate and key)."""
    if tls is not None:
        with _serve_tls(app, tls) as url:
            yield url
        return
    listener = HttpListener("127.0.0.1", 0)
    thread = threading.Thread(target=asyncio.run, args=(listener.serve(app),), daemon=True)
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


def post_json(url: str, body: object, *, source: str = "127.0.0.1") -> tuple[int, Any]:
    """POST `body` as JSON to `url` from the local address `source` (any of 127.0.0.0/8): the
    status, and the answer's JSON (None if it is not JSON). Blocking: from async code, run it
    with `asyncio.to_thread`."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(
        parts.hostname or "", parts.port, timeout=10, source_address=(source, 0)
    )
    try:
        headers = {"Content-Type": "application/json"}
        connection.request("POST", parts.path, json.dumps(body), headers)
        response = connection.getresponse()
        return response.status, json_or_none(response.read())
    finally:
        connection.close()
