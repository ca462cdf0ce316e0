"""`tokend once`: acquire and publish every token once, retrying what may pass until a deadline,
then exit. An init container or a cron job runs it, often: it loads no scheduler library, no
listener and no metrics, only the config, the HTTP client and the sinks.
"""

from __future__ import annotations

import logging

from tokend.assemble import Assembly, http_settings
from tokend.clock import SYSTEM_CLOCK, Clock
from tokend.config import Config
from tokend.engine.scheduler import NoScheduler
from tokend.oauth import TokenClient

log = logging.getLogger("tokend")


class _Unmeasured:
    def observe(self, amount: float) -> None:
        return None  # no metrics to feed: the process ends in a moment


async def run_once(config: Config, clock: Clock = SYSTEM_CLOCK, timeout: float = 120.0) -> bool:
    """Acquire and publish every token once, retrying what may pass for up to `timeout`
    seconds. True only if every token reached every sink."""
    client = TokenClient(http_settings(config), clock=clock)
    assembly = Assembly(
        acquirer=client, scheduler=NoScheduler(), durations=_Unmeasured(), clock=clock
    )
    engine = assembly.engine
    try:
        assembly.build(config)  # inside: a sink that cannot be built must not leak the client
        ok = await engine.refresh_all(timeout)
    finally:
        await assembly.stop()
        await client.aclose()
    published = sum(view.published for view in engine.query(clock.now()))
    log.log(
        logging.INFO if ok else logging.ERROR,
        "once: %d of %d tokens published to all their sinks",
        published,
        len(engine.jobs),
    )
    return ok
