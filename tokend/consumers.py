"""Telling consumers that keep a token in memory that a new one was published (`on_publish:` on
any sink): once the sink's write is durable, run a command and/or signal a process named by a pid
file (like spiffe-helper's renew signal).

A command runs without a shell, with a timeout (then its process group is killed), with a small
environment of its own (never tokend's, which may hold `{env:}` secrets): `TOKEND_TOKEN`,
`TOKEND_SINK`, `TOKEND_EXPIRES_ON`, and the token itself only with `env: true`. Its output is
logged on one line, redacted. Notifications run in the background, one at a time per sink; publishes
that arrive meanwhile are coalesced into one more run with the newest token. Nothing here can
hold up a refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from typing import Any

from tokend.consumer_options import OnPublish, SignalOptions
from tokend.redaction import redactor
from tokend.token import Token

log = logging.getLogger("tokend.consumers")

_OUTPUT_LIMIT = 4096
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


class ConsumerNotifier:
    """Runs one sink's `on_publish` after each durable write."""

    __slots__ = ("_options", "_pending", "_running", "results", "sink_name", "token_name")

    def __init__(self, options: OnPublish, token_name: str, sink_name: str) -> None:
        self._options = options
        self.token_name = token_name
        self.sink_name = sink_name
        self._running: asyncio.Task[None] | None = None
        self._pending: Token | None = None
        self.results = {"success": 0, "error": 0, "timeout": 0}

    def published(self, token: Token) -> None:
        """`token` is durably in the sink: tell the consumer (in the background)."""
        if self._running is not None:
            self._pending = token  # one more run after this one, with the newest token
            return
        self._running = asyncio.get_running_loop().create_task(self._notify_all(token))

    async def close(self) -> None:
        """Wait for a notification under way (its own timeout bounds it)."""
        if self._running is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._running

    async def _notify_all(self, token: Token) -> None:
        try:
            current: Token | None = token
            while current is not None:
                await self._notify(current)
                current, self._pending = self._pending, None
        finally:
            self._running = None

    async def _notify(self, token: Token) -> None:
        outcomes = []
        if self._options.command is not None:
            outcomes.append(await self._run_command(token))
        if self._options.signal is not None:
            outcomes.append(self._send_signal(self._options.signal))
        worst = (
            "timeout" if "timeout" in outcomes else "error" if "error" in outcomes else "success"
        )
        self.results[worst] += 1

    async def _run_command(self, token: Token) -> str:
        argv = self._options.command or ()
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=self._environment(token),
                start_new_session=True,  # its own process group: a timeout kills its children
            )
        except OSError as exc:
            self._warn("cannot run %s: %s", argv[0], exc.strerror or type(exc).__name__)
            return "error"
        timeout = self._options.timeout.total_seconds()
        try:
            output = await asyncio.wait_for(_bounded_output(process), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            self._warn("%s killed after %gs (timeout)", argv[0], timeout)
            return "timeout"
        status = await process.wait()
        text = redactor.shown(output.decode(errors="replace").strip(), 300)
        if status != 0:
            self._warn("%s exited with status %d: %s", argv[0], status, text or "(no output)")
            return "error"
        log.debug("sink %s: on_publish %s: %s", self.sink_name, argv[0], text, extra=self._extra)
        return "success"

    def _send_signal(self, options: SignalOptions) -> str:
        name = f"SIG{options.name}"
        try:
            pid = int(options.pid_file.read_text(encoding="utf-8").strip())
            os.kill(pid, signal.Signals[name])
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            self._warn("cannot signal the process in %s: %s", options.pid_file, reason)
            return "error"
        return "success"

    def _environment(self, token: Token) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", _DEFAULT_PATH),
            "TOKEND_TOKEN": self.token_name,
            "TOKEND_SINK": self.sink_name,
            "TOKEND_EXPIRES_ON": str(int(token.expires_at.timestamp())),
        }
        for key in ("LANG", "LC_ALL", "TZ"):
            if key in os.environ:
                env[key] = os.environ[key]
        if self._options.env:
            env |= {"TOKEND_ACCESS_TOKEN": token.value, "TOKEND_TOKEN_TYPE": token.token_type}
        return env

    def _warn(self, message: str, *args: Any) -> None:
        log.warning(f"sink %s: on_publish: {message}", self.sink_name, *args, extra=self._extra)

    @property
    def _extra(self) -> dict[str, str]:
        return {"token": self.token_name}


async def _bounded_output(process: asyncio.subprocess.Process) -> bytes:
    """The first `_OUTPUT_LIMIT` bytes of the command's output; the rest is read and dropped,
    so a chatty command neither blocks on a full pipe nor fills tokend's memory."""
    stream = process.stdout
    kept = b""
    while stream is not None and (chunk := await stream.read(65536)):
        if len(kept) < _OUTPUT_LIMIT:
            kept += chunk[: _OUTPUT_LIMIT - len(kept)]
    return kept
