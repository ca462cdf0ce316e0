"""What tokend's listener serves: /metrics, /healthz, /readyz and /status.

Nothing served here contains a secret or a token value.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tokend.clock import Clock
from tokend.engine import Engine
from tokend.metrics import Metrics
from tokend.resources import Resources
from tokend.status import status_pieces

_PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def create_app(
    engine: Engine, metrics: Metrics, clock: Clock, resources: Resources | None = None
) -> Starlette:
    async def metrics_endpoint(request: Request) -> Response:
        # Off the event loop: with a series per token, 20,000 tokens take seconds to render,
        # and refreshes and probes must not wait for them. Collectors only read.
        body = await asyncio.to_thread(metrics.render)
        return Response(body, media_type=_PROMETHEUS_TEXT)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        now = clock.now()
        waiting = engine.unready(now)
        if not waiting:
            return PlainTextResponse("ready\n")
        return PlainTextResponse("not ready: " + ", ".join(waiting) + "\n", status_code=503)

    async def status(request: Request) -> Response:
        shown = request.query_params.get("tokens", "all")
        if shown not in ("all", "problems"):
            return PlainTextResponse("tokens must be all or problems\n", status_code=400)
        pieces = status_pieces(engine, clock.now(), resources, problems=shown == "problems")
        return StreamingResponse(_yielding(pieces), media_type="application/json")

    return Starlette(
        routes=[
            Route("/metrics", metrics_endpoint),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/status", status),
        ]
    )


async def _yielding(pieces: Iterator[str]) -> AsyncIterator[str]:
    """`pieces` (the empty ones not sent), handing the event loop back after each: refreshes
    and probes go on while a large `/status` is taken."""
    for piece in pieces:
        if piece:
            yield piece
        await asyncio.sleep(0)
