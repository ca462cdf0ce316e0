"""systemd integration in a few lines of socket code: readiness and status notifications
(sd_notify) and a watchdog that pings from the event loop. (Journald priority prefixes are in
`tokend.logs`.)

The notify protocol is one datagram of `KEY=value` lines to the Unix socket named by
`$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket), so no library is needed (the PyPI
ones are unmaintained or bind libsystemd). Everything here is a no-op when tokend does not run
under systemd, and nothing raises: a lost notification must never stop token refreshes.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta

from tokend.clock import format_span

log = logging.getLogger("tokend.systemd")

Sleep = Callable[[float], Awaitable[None]]


class Notifier:
    """Sends sd_notify messages to the service manager, if there is one.

    Build one per process with `Notifier.from_environment()`; its methods return whether the
    message was handed to systemd (False when not under systemd or the send failed).
    """

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._socket: socket.socket | None = None

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] | None = None, *, pid: int | None = None
    ) -> Notifier:
        """Read `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID` (the watchdog applies only
        if `$WATCHDOG_PID` is unset or names this process, as sd_watchdog_enabled() does)."""
        env = os.environ if environ is None else environ
        return cls(_socket_address(env.get("NOTIFY_SOCKET", "")), _watchdog_usec(env, pid))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings: half of `WatchdogSec=`, as systemd recommends."""
        if not self.enabled or not self.watchdog_usec:
            return None
        return self.watchdog_usec / 2 / 1_000_000

    def ready(self, status: str | None = None) -> bool:
        """Start-up (or a reload) is complete: `Type=notify` units become active now."""
        return self.notify("READY=1", *_status(status))

    def status(self, text: str) -> bool:
        """A one-line status shown by `systemctl status`."""
        return self.notify(*_status(text))

    def reloading(self, status: str | None = None) -> bool:
        """A reload starts; send `ready()` when it is done. `MONOTONIC_USEC` is required by
        `Type=notify-reload` (systemd 253+) and harmless before."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *_status(status))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for `seconds` more before the start (or stop) times out, e.g. while waiting for
        many tokens' first publication."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def notify(self, *fields: str) -> bool:
        if self.address is None or not fields:
            return False
        message = "\n".join(fields).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)  # never stall the event loop on a full queue
            self._socket.sendto(message, self.address)
        except OSError as exc:
            level = logging.DEBUG if exc.errno == errno.EAGAIN else logging.WARNING
            log.log(level, "could not notify systemd (%s): %s", fields[0], exc.strerror or exc)
            return False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    async def run_watchdog(
        self, healthy: Callable[[], bool] | None = None, sleep: Sleep = asyncio.sleep
    ) -> None:
        """Ping the watchdog every `watchdog_interval` until cancelled; run it as a task on the
        daemon's event loop, so a stuck loop stops the pings and systemd restarts tokend.
        With `healthy`, a ping is skipped while it returns False. Returns at once if systemd
        asked for no watchdog."""
        interval = self.watchdog_interval
        if interval is None:
            return
        was_healthy = True
        while True:
            is_healthy = healthy is None or healthy()
            if is_healthy:
                self.watchdog()
            elif was_healthy:
                log.error("not pinging the systemd watchdog: tokend is not healthy")
            was_healthy = is_healthy
            await sleep(interval)


def format_status(valid: int, total: int, next_refresh: timedelta | None) -> str:
    """`12/12 tokens valid, next refresh in 4m05s`: the STATUS= line `systemctl status` shows."""
    text = f"{valid}/{total} tokens valid"
    if next_refresh is not None:
        text += f", next refresh in {format_span(next_refresh)}"
    return text


def _status(text: str | None) -> list[str]:
    return [] if text is None else ["STATUS=" + " ".join(text.splitlines())]


def _socket_address(value: str) -> str | None:
    """`/run/systemd/notify` as is; `@name` is the abstract socket `\\0name`; anything else
    (unset, relative, `vsock:`) means no service manager we can talk to."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value:
        log.warning("ignoring NOTIFY_SOCKET=%r: not a Unix socket path or @name", value)
    return None


def _watchdog_usec(env: Mapping[str, str], pid: int | None) -> int | None:
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    owner = env.get("WATCHDOG_PID")
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None  # meant for another process (e.g. our parent)
    return usec if usec > 0 else None


# --- journald ----------------------------------------------------------------------------------
