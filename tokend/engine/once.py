"""`tokend once`: acquire a token and publish it to every sink, waiting for them, retrying
failures that may pass until a deadline. The daemon's own loop (`TokenJob`'s scheduled runs)
never waits for sinks; this is for init containers and cron jobs that exit when done."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable

from tokend.engine.job import TokenJob
from tokend.token import Token

Sleep = Callable[[float], Awaitable[None]]


async def refresh_once(
    job: TokenJob, deadline: float | None = None, sleep: Sleep = asyncio.sleep
) -> bool:
    """True when a new token was obtained and every sink has it. A failure that may pass (of the
    request or of a sink) is tried again after the backoff while that ends before `deadline`
    (event-loop time; None: one attempt); one that needs an operator ends it at once. A token
    obtained is kept across the retries of a failing sink: it is not requested again."""
    loop = asyncio.get_running_loop()
    token: Token | None = None
    for attempt in itertools.count(1):
        token = token or await job.acquire()
        if token is not None and await job.publisher.publish(token):
            return True
        error = job.last_error if token is None else job.publisher.last_error()
        if deadline is None or error is None or not error.transient:
            return False
        delay = job.retry_delay(attempt, error)
        if loop.time() + delay > deadline:
            return False
        await sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
