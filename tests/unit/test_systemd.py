"""tokend.systemd against a Unix datagram socket that listens the way systemd does, on a path and
on an abstract `@name`: READY, STATUS, RELOADING with MONOTONIC_USEC, STOPPING, WATCHDOG."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import secrets
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from tokend.logs import JournalPriorityFormatter, TextFormatter, syslog_priority, writes_to_journal
from tokend.systemd import Notifier, format_status


class FakeSystemd:
    """The receiving end of $NOTIFY_SOCKET."""

    def __init__(self, sock: socket.socket, notify_socket: str) -> None:
        self.sock = sock
        self.notify_socket = notify_socket

    def receive(self, timeout: float = 5) -> dict[str, str]:
        self.sock.settimeout(timeout)
        message = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in message.split("\n"))

    def nothing_pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        return False


@pytest.fixture(params=["path", "abstract"])
def systemd(request: pytest.FixtureRequest) -> Iterator[FakeSystemd]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with tempfile.TemporaryDirectory(prefix="sd") as short:  # socket paths max out at 108 bytes
        if request.param == "path":
            path = str(Path(short) / "notify")
            sock.bind(path)
            name = path
        else:
            name = f"@tokend-test-{secrets.token_hex(6)}"
            sock.bind("\0" + name[1:])
        try:
            yield FakeSystemd(sock, name)
        finally:
            sock.close()


def test_ready_status_reloading_stopping(systemd: FakeSystemd) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": systemd.notify_socket})
    assert notifier.enabled

    assert notifier.ready("3/3 tokens valid, next refresh in 4m05s")
    assert systemd.receive() == {
        "READY": "1",
        "STATUS": "3/3 tokens valid, next refresh in 4m05s",
    }

    assert notifier.status("2/3 tokens valid")
    assert systemd.receive() == {"STATUS": "2/3 tokens valid"}

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading("reloading the config")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    message = systemd.receive()
    assert message["RELOADING"] == "1"
    assert before <= int(message["MONOTONIC_USEC"]) <= after
    assert message["STATUS"] == "reloading the config"
    assert notifier.ready()
    assert systemd.receive() == {"READY": "1"}

    assert notifier.stopping()
    assert systemd.receive() == {"STOPPING": "1"}

    assert notifier.extend_timeout(90)
    assert systemd.receive() == {"EXTEND_TIMEOUT_USEC": "90000000"}
    notifier.close()


def test_status_stays_one_line(systemd: FakeSystemd) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": systemd.notify_socket})
    notifier.status("first\nREADY=1")  # a newline would smuggle in another field
    assert systemd.receive() == {"STATUS": "first READY=1"}


def test_watchdog_pings_every_half_interval(systemd: FakeSystemd) -> None:
    env = {"NOTIFY_SOCKET": systemd.notify_socket, "WATCHDOG_USEC": "30000000"}
    notifier = Notifier.from_environment(env)
    assert notifier.watchdog_interval == 15.0
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 3:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(notifier.run_watchdog(sleep=sleep))
    assert slept == [15.0, 15.0, 15.0]
    assert [systemd.receive() for _ in range(3)] == [{"WATCHDOG": "1"}] * 3
    assert systemd.nothing_pending()


def test_watchdog_skips_pings_while_unhealthy(systemd: FakeSystemd) -> None:
    env = {"NOTIFY_SOCKET": systemd.notify_socket, "WATCHDOG_USEC": "2000000"}
    notifier = Notifier.from_environment(env)
    health = iter([True, False, False, True])
    rounds = 0

    async def sleep(_seconds: float) -> None:
        nonlocal rounds
        rounds += 1
        if rounds == 4:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(notifier.run_watchdog(healthy=lambda: next(health), sleep=sleep))
    assert [systemd.receive() for _ in range(2)] == [{"WATCHDOG": "1"}] * 2
    assert systemd.nothing_pending()


def test_a_stuck_event_loop_stops_the_pings(systemd: FakeSystemd) -> None:
    """The point of pinging from the event loop: while the loop is blocked, no ping leaves, so
    systemd's watchdog fires. (The block is the behaviour under test, not a wait.)"""
    env = {"NOTIFY_SOCKET": systemd.notify_socket, "WATCHDOG_USEC": "40000"}  # ping every 20 ms
    notifier = Notifier.from_environment(env)
    blocked = threading.Event()
    release = threading.Event()

    async def main() -> None:
        pinger = asyncio.create_task(notifier.run_watchdog())
        await asyncio.sleep(0.1)
        blocked.set()
        release.wait(5)  # the loop is stuck here: no task runs
        pinger.cancel()

    runner = threading.Thread(target=asyncio.run, args=(main(),))
    runner.start()
    assert systemd.receive() == {"WATCHDOG": "1"}
    assert blocked.wait(5)
    while not systemd.nothing_pending():  # drain pings sent before the loop got stuck
        pass
    systemd.sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        systemd.sock.recv(4096)
    release.set()
    runner.join(5)


def test_watchdog_for_another_process_is_ignored(systemd: FakeSystemd) -> None:
    env = {"NOTIFY_SOCKET": systemd.notify_socket, "WATCHDOG_USEC": "2000000"}
    assert Notifier.from_environment({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval
    other = Notifier.from_environment({**env, "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None
    asyncio.run(other.run_watchdog())  # returns at once
    assert systemd.nothing_pending()


@pytest.mark.parametrize(
    "environ",
    [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "relative/path"}, {"WATCHDOG_USEC": "1000"}],
)
def test_no_systemd_means_no_op(environ: dict[str, str]) -> None:
    notifier = Notifier.from_environment(environ)
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert notifier.ready() is False
    assert notifier.stopping() is False
    asyncio.run(notifier.run_watchdog())


def test_a_vanished_socket_is_reported_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    with caplog.at_level(logging.WARNING, "tokend.systemd"):
        assert notifier.ready() is False
    assert "could not notify systemd (READY=1)" in caplog.text


def test_format_status() -> None:
    assert (
        format_status(12, 12, timedelta(minutes=4)) == "12/12 tokens valid, next refresh in 4m00s"
    )
    assert format_status(0, 3, None) == "0/3 tokens valid"


@pytest.mark.parametrize(
    ("level", "priority"),
    [
        (logging.DEBUG, 7),
        (logging.INFO, 6),
        (logging.WARNING, 4),
        (logging.ERROR, 3),
        (logging.CRITICAL, 2),
    ],
)
def test_syslog_priority(level: int, priority: int) -> None:
    assert syslog_priority(level) == priority


def test_journal_prefix_on_every_line_of_a_record() -> None:
    formatter = JournalPriorityFormatter(TextFormatter())
    record = logging.LogRecord("tokend", logging.WARNING, __file__, 1, "refresh failed", (), None)
    assert formatter.format(record).startswith("<4>")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("tokend", logging.ERROR, __file__, 1, "bad", (), sys.exc_info())
    lines = formatter.format(record).split("\n")
    assert len(lines) > 2
    assert all(line.startswith("<3>") for line in lines)


def test_journal_stream_is_recognised_by_device_and_inode(tmp_path: Path) -> None:
    with (tmp_path / "stderr").open("w") as stream:
        info = os.fstat(stream.fileno())
        assert writes_to_journal(stream, {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})
        assert not writes_to_journal(stream, {"JOURNAL_STREAM": f"{info.st_dev}:1"})
        assert not writes_to_journal(stream, {})
        assert not writes_to_journal(stream, {"JOURNAL_STREAM": "garbage"})
    assert not writes_to_journal(io.StringIO(), {"JOURNAL_STREAM": "1:2"})
