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

from tokend.server import HttpListener


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve `app` until the block ends; yields its base URL (`http://127.0.0.1:PORT`)."""
    listener = HttpListener(app, "127.0.0.1", 0)
    thread = threading.Thread(target=asyncio.run, args=(listener.serve(),), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.address[1]}"
    finally:
        listener.stop()
        thread.join(10)


def free_port() -> int:
    """A port free on 127.0.0.1 right now, for a process under test to listen on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
