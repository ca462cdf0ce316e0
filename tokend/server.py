"""The HTTP listener: /metrics, /healthz, /readyz and /status. Binds 127.0.0.1 by default.

Nothing served here contains a secret or a token value.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tokend.clock import Clock
from tokend.engine import Engine
from tokend.metrics import Metrics
from tokend.resources import Resources
from tokend.status import engine_status

_PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def create_app(
    engine: Engine, metrics: Metrics, clock: Clock, resources: Resources | None = None
) -> Starlette:
    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type=_PROMETHEUS_TEXT)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        now = clock.now()
        waiting = [view.name for view in engine.query(now) if not view.ready]
        if not waiting:
            return PlainTextResponse("ready\n")
        return PlainTextResponse("not ready: " + ", ".join(waiting) + "\n", status_code=503)

    async def status(request: Request) -> Response:
        return JSONResponse(engine_status(engine, clock.now(), resources))

    return Starlette(
        routes=[
            Route("/metrics", metrics_endpoint),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/status", status),
        ]
    )


class ListenError(Exception):
    """The listener could not bind; the text names the address."""


class HttpListener:
    """uvicorn serving the app on a socket tokend binds itself, so a busy port is a clear error
    rather than uvicorn exiting the process, and signals stay tokend's to handle."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        self._socket = bind_tcp(host, port)
        self.address = self._socket.getsockname()[:2]
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            date_header=False,  # uvicorn refreshes it by polling; an absent Date beats a stale one
        )
        self._server = _QuietServer(config)

    async def serve(self) -> None:
        await self._server.serve(sockets=[self._socket])

    def stop(self) -> None:
        """Stop serving; callable from any thread."""
        self._server.request_stop()


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers and without its main loop's ten wake-ups a second:
    it sleeps until asked to stop, so an idle tokend uses no CPU."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._stop_requested = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.on_tick(0)  # sets the default headers once
        if not self.should_exit:
            await self._stop_requested.wait()

    def request_stop(self) -> None:
        self.should_exit = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop_requested.set)


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
