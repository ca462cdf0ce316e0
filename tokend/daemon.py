"""The long-running process (`tokend run`): engine, scheduler and HTTP listener, and the signals
that steer it. (`tokend once` is `tokend.once`: none of this.)

SIGTERM and SIGINT stop it cleanly: nothing new starts, runs in progress (and their sink writes)
finish within `SHUTDOWN_TIMEOUT`, sinks close, exit status 0. Sink files are replaced atomically,
so even a kill at any instant never leaves a partial file. SIGHUP reloads the config; a config
that does not load is rejected with its error lines and tokend carries on with the old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
from collections.abc import Callable
from dataclasses import InitVar, dataclass
from typing import TYPE_CHECKING

from tokend import heap
from tokend.assemble import Assembly, http_settings, run_limit
from tokend.clock import SYSTEM_CLOCK, Clock
from tokend.config import Config
from tokend.configfile import LoadedConfig
from tokend.engine import ApsScheduler, Engine
from tokend.errors import ConfigError
from tokend.metrics import Metrics
from tokend.oauth import TokenClient
from tokend.server import HttpListener
from tokend.service import ServiceReporter
from tokend.transport import split_listen

if TYPE_CHECKING:
    from tokend.endpoint.service import Endpoint
    from tokend.resources import Resources

log = logging.getLogger("tokend")

SHUTDOWN_TIMEOUT = 10.0
FIRST_ROUND_WAIT = 1.0
"""Seconds the listener waits, at most, for the first acquisitions before serving."""


@dataclass
class Daemon:
    """A running tokend, assembled from a config; `run()` serves until `stop()` or a signal."""

    config: Config
    clock: Clock = SYSTEM_CLOCK
    reload_config: Callable[[], LoadedConfig] | None = None
    """Reads the config again for SIGHUP; raises `ConfigError`. None: reload is not possible."""
    custom_scheduler: InitVar[ApsScheduler | None] = None
    """Default: an `ApsScheduler` running at most `run_limit(config)` jobs at once."""

    def __post_init__(self, custom_scheduler: ApsScheduler | None) -> None:
        self.metrics = Metrics(self.clock, self.config.metrics.per_token)
        self.client = TokenClient(http_settings(self.config), clock=self.clock)
        self.scheduler = custom_scheduler or ApsScheduler(concurrency=run_limit(self.config))
        self.assembly = Assembly(
            acquirer=self.client,
            scheduler=self.scheduler,
            durations=self.metrics.refresh_duration,
            clock=self.clock,
        )
        self.assembly.build(self.config)
        self.engine = self.assembly.engine
        self.metrics.watch(self.engine, self.assembly.resources)
        self.listener: HttpListener | None = None
        if self.config.listen:
            self.listener = HttpListener(*split_listen(self.config.listen))  # binds now
        self.endpoint = _endpoint(
            self.config, self.engine, self.metrics, self.clock, self.assembly.resources
        )
        self.service = ServiceReporter(
            self.engine, self.clock, ready_when_started=self.config.systemd_ready == "started"
        )
        self._stopping = asyncio.Event()
        self._reloading = asyncio.Lock()
        self._reload_pending = False
        self._reload_tasks: set[asyncio.Task[bool]] = set()
        self._first_round: asyncio.Task[None] | None = None
        self._freezing: asyncio.Task[None] | None = None

    def stop(self) -> None:
        self._stopping.set()

    async def run(self, on_started: Callable[[], None] | None = None) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
        # A burst of signals fills asyncio's wakeup pipe; losing a wakeup byte is harmless (the
        # handler has run), so no "Exception ignored ... BlockingIOError" on stderr for it.
        signal.set_wakeup_fd(signal.set_wakeup_fd(-1), warn_on_full_buffer=False)
        endpoint = asyncio.create_task(self.endpoint.serve()) if self.endpoint else None
        self.scheduler.start()
        await self.engine.start()
        self._first_round = asyncio.create_task(self._first_round_done())
        self._freezing = asyncio.create_task(self._freeze_once_settled(self._first_round))
        serving = None
        if self.listener:
            serving = asyncio.create_task(self._serve(self.listener, self._first_round))
        self.service.start(self._first_round)
        log.info(
            "started: %d tokens, %d identities%s",
            len(self.config.tokens),
            len(self.config.identities),
            f", listening on http://{self.config.listen}" if self.listener else "",
        )
        if on_started:
            on_started()
        await self._stopping.wait()
        if self.endpoint and endpoint:
            self.endpoint.stop()
            await endpoint
        return await self._shut_down(serving)

    async def _first_round_done(self) -> None:
        """Returns once the acquisitions due at start are done and their tokens delivered."""
        await self.scheduler.settle()
        await self.engine.deliveries.idle()

    async def _serve(self, listener: HttpListener, first_round: asyncio.Task[None]) -> None:
        """Serve /metrics, /status and the probes once the first round is done, or after
        `FIRST_ROUND_WAIT`: loading the web stack blocks the event loop for tens of
        milliseconds, which the first tokens need not wait for. Probes that connect meanwhile
        wait in the bound socket's backlog."""
        await asyncio.wait({first_round}, timeout=FIRST_ROUND_WAIT)
        from tokend.status_app import create_app  # noqa: PLC0415 - see above

        app = create_app(self.engine, self.metrics, self.clock, self.assembly.resources)
        await listener.serve(app)

    async def _freeze_once_settled(self, first_round: asyncio.Task[None]) -> None:
        """Once the first round is done, what it built lives as long as the config: out of the
        garbage collector's way, and what start-up freed back to the system (`tokend.heap`), as
        it is from then on every `heap.TRIM_INTERVAL`."""
        await asyncio.wait({first_round})
        heap.freeze_long_lived()
        heap.keep_releasing_free_memory(self.scheduler, self.clock)

    async def _shut_down(self, serving: asyncio.Task[None] | None) -> int:
        log.info("stopping: letting refreshes in progress finish")
        if self._freezing is not None:
            self._freezing.cancel()
        # A reload that has begun finishes (it may be swapping jobs); one still waiting is
        # dropped. Both before the scheduler and the thread pool go away under them.
        await asyncio.gather(*self._reload_tasks, return_exceptions=True)
        await self.service.stopping()
        self.engine.wind_down()
        finished = await self.scheduler.stop(SHUTDOWN_TIMEOUT)
        if not finished:
            log.warning("stopped refreshes still running after %.0fs", SHUTDOWN_TIMEOUT)
        await self.assembly.stop(SHUTDOWN_TIMEOUT)
        await self.client.aclose()
        if self.listener and serving:
            if not self.listener.serving:
                serving.cancel()  # still waiting for the first round: nothing to wind down
            self.listener.stop()
            await asyncio.gather(serving, return_exceptions=True)
        if self._first_round is not None:
            # Last: what waits for it (the listener, systemd's readiness check) has been
            # stopped, so nothing takes its end for a finished start and begins serving.
            self._first_round.cancel()
        log.info("stopped")
        return 0

    def _on_stop_signal(self, signum: int) -> None:
        log.info("received %s", signal.Signals(signum).name)
        self.stop()

    def _on_hangup(self) -> None:
        if self._stopping.is_set():
            log.info("received SIGHUP while stopping: not reloading")
            return
        if self._reload_pending:
            log.debug("received SIGHUP: a reload is already waiting to read the config")
            return
        log.info("received SIGHUP: reloading the config")
        self._reload_pending = True
        task = asyncio.create_task(self._reload_for_signal())
        self._reload_tasks.add(task)
        task.add_done_callback(self._reload_tasks.discard)

    async def _reload_for_signal(self) -> bool:
        """One reload runs at a time, and at most one more waits: signals that arrive meanwhile
        join it (it reads the config as it is when it starts)."""
        async with self._reloading:
            self._reload_pending = False
            if self._stopping.is_set():
                return False
            self.service.reloading()
            accepted = False
            try:
                accepted = await self._reload_locked()
            finally:  # systemd waits for READY=1 after RELOADING=1, whatever happened
                self.service.reloaded(accepted)
            return accepted

    async def reload(self) -> bool:
        """Apply the config as it is now on disk. False (and the old config kept) if it is bad."""
        async with self._reloading:
            return await self._reload_locked()

    async def _reload_locked(self) -> bool:
        accepted = await self._read_and_apply()
        heap.release_free_memory()  # what reading and comparing the config took, now dropped
        return accepted

    async def _read_and_apply(self) -> bool:
        if self.reload_config is None:
            log.warning("reload: this daemon has no config file to read again")
            return False
        try:
            loaded = await asyncio.to_thread(self.reload_config)
        except ConfigError as exc:
            for line in exc.lines:
                log.error("reload rejected: %s", line)
            log.error("reload rejected: carrying on with the config loaded before")
            return False
        except Exception as exc:  # whatever reading failed on, the old config stays
            log.error(
                "reload rejected: reading the config failed (%s: %s); carrying on with the "
                "config loaded before",
                type(exc).__name__,
                exc,
            )
            return False
        for warning in loaded.warnings:
            log.warning("%s", warning)
        for key in ("listen", "http", "endpoint"):
            if getattr(loaded.config, key) != getattr(self.config, key):
                log.warning("reload: changes to %s take effect at the next restart", key)
        summary = await self.assembly.reload(loaded.config)
        if summary.added or summary.changed or summary.removed:
            heap.freeze_long_lived()  # the tokens it replaced: their cycles are collected
        self.metrics.configure(loaded.config.metrics.per_token)
        if self.endpoint:
            self.endpoint.reconfigure(loaded.config)
        self.config = loaded.config
        log.info("reloaded: %s", summary)
        return True


def run_daemon(
    config: Config,
    *,
    reload_config: Callable[[], LoadedConfig],
    announce: str | None = None,
    dev_idp: bool = False,
) -> int:
    """Run tokend until a signal stops it (and, for `tokend dev`, the development identity
    provider beside it); `announce` is printed once started. Raises `ListenError`."""
    _allow_many_open_files()
    return asyncio.run(_run_until_stopped(config, reload_config, announce, dev_idp))


OPEN_FILES = 65536
"""The soft limit on open files tokend asks for (up to the hard limit)."""


def _allow_many_open_files() -> None:
    """The soft limit on open files raised towards the hard one. systemd starts services at
    1,024, which the endpoint's clients (up to a thousand connections) could use up, leaving
    tokend none for its own requests and files; the low default only matters to select(), and
    asyncio polls with epoll. Not past `OPEN_FILES`: the programs tokend runs inherit it, and some
    close every descriptor up to it one by one. The hard limit is left as it is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES if hard == resource.RLIM_INFINITY else min(OPEN_FILES, hard)
    if soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def _run_until_stopped(
    config: Config,
    reload_config: Callable[[], LoadedConfig],
    announce: str | None,
    dev_idp: bool,
) -> int:
    companions = [_dev_idp()] if dev_idp else []
    daemon = Daemon(config, reload_config=reload_config)
    tasks = [asyncio.create_task(listener.serve(app)) for listener, app in companions]
    try:
        return await daemon.run(
            on_started=(lambda: print(announce, flush=True)) if announce else None
        )
    finally:
        for listener, _ in companions:
            listener.stop()
        await asyncio.gather(*tasks)


def _dev_idp() -> tuple[HttpListener, object]:
    """The development identity provider's listener (bound) and app, for `tokend dev`."""
    from tokend.devidp import DEV_IDP_LISTEN, dev_idp_app  # noqa: PLC0415 - `tokend dev` only

    return HttpListener(*split_listen(DEV_IDP_LISTEN)), dev_idp_app()


def _endpoint(
    config: Config, engine: Engine, metrics: Metrics, clock: Clock, resources: Resources
) -> Endpoint | None:
    """The local token endpoint, when configured (binds now: a busy port stops the start)."""
    if config.endpoint is None:
        return None
    from tokend.endpoint.service import Endpoint  # noqa: PLC0415 - only when configured

    return Endpoint(
        config,
        config.endpoint,
        engine=engine,
        metrics=metrics,
        clock=clock,
        resources=resources,
    )
