"""What tokend's listener serves: /metrics, /healthz, /readyz and /status.

Nothing served here contains a secret or a token value.
"""

from __future__ import annotations

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
        waiting = engine.unready(now)
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
