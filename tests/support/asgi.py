"""A GET through an ASGI app on the test's own event loop: no server, no client library."""

from __future__ import annotations

import asyncio
from typing import Any


async def asgi_get(app: Any, path: str) -> tuple[int, bytes]:
    """The status and body of GET `path` (with its query, if any). The client stays connected
    until the answer is whole, as a real one does: after the request, `receive` waits (a
    streamed answer listens for a disconnect meanwhile)."""
    path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [],
        "scheme": "http",
        "server": ("127.0.0.1", 9464),
        "root_path": "",
        "http_version": "1.1",
    }
    requested = False
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if requested:
            await asyncio.Event().wait()  # connected until the app is done with us
        requested = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body
