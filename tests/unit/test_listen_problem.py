"""`tokend check` asks whether each `listen:` address can be listened on now
(`transport.listen_problem`): a free port can, a port another listener holds cannot, a port
whose last connection lingers in TIME_WAIT can (the listener sets SO_REUSEADDR, and so does the
probe), and a host that does not resolve is named."""

from __future__ import annotations

import socket

from tests.support.servers import free_port
from tokend.transport import listen_problem


def test_a_free_port_can_be_listened_on() -> None:
    assert listen_problem(f"127.0.0.1:{free_port()}") is None


def test_a_port_another_listener_holds_is_named_with_the_reason() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert listen_problem(f"127.0.0.1:{port}") == (
            f"cannot listen on 127.0.0.1:{port}: Address already in use"
            " (is tokend already running with this config?)"
        )


def test_a_port_in_time_wait_can_be_listened_on_again() -> None:
    """A restarted tokend binds where its predecessor served a scrape a moment ago."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        served, _ = listener.accept()
        served.close()  # the server closes first: its side of the connection waits in TIME_WAIT
        client.recv(1)
        client.close()
    with socket.socket() as plain:  # without SO_REUSEADDR the port is still taken
        try:
            plain.bind(("127.0.0.1", port))
        except OSError:
            pass
        else:  # pragma: no cover - a kernel without TIME_WAIT on loopback: nothing to tell
            return
    assert listen_problem(f"127.0.0.1:{port}") is None


def test_a_host_that_does_not_resolve_is_named() -> None:
    assert listen_problem("no-such-host.invalid:9464") == (
        "cannot resolve host 'no-such-host.invalid'"
    )
