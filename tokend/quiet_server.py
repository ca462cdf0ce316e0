"""uvicorn as tokend's listeners run it: on a socket tokend bound, without uvicorn's signal
handlers, and without its main loop's ten wake-ups a second."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import uvicorn


class QuietServer(uvicorn.Server):
    """Sleeps until asked to stop, so an idle tokend uses no CPU."""

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            date_header=False,  # uvicorn refreshes it by polling; an absent Date beats a stale one
        )
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
