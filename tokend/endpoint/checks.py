"""What `tokend check` (and `tokend run`, before it starts) finds wrong with the `endpoint:` block
on this machine: the address cannot be listened on, the Unix socket's directory or group does not
exist, the TLS certificate and key do not make a pair, the header secret is generated but nobody
could read it."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from pathlib import Path

from tokend.endpoint.options import EndpointOptions, TlsOptions, group_problem
from tokend.transport import listen_problem


def endpoint_problems(options: EndpointOptions, listen: bool) -> list[str]:
    """One line per problem; `listen`: also whether the address can be bound now."""
    return list(_problems(options, listen))


def _problems(options: EndpointOptions, listen: bool) -> Iterator[str]:
    path = options.socket_path
    if path is not None:
        directory = Path(path).parent
        if not directory.is_dir():
            yield f"listen: the directory {directory} does not exist"
        elif not os.access(directory, os.W_OK | os.X_OK):
            yield f"listen: cannot create a socket in {directory} (permissions)"
        if options.socket_group and (problem := group_problem(options.socket_group)):
            yield f"socket_group: {problem}"
    elif listen and (problem := listen_problem(options.listen)):
        yield f"listen: {problem}"
    if options.tls and (problem := tls_problem(options.tls)):
        yield f"tls: {problem}"
    if "app_service" in options.protocols and options.header_secret is None:
        env_file = options.resolved_env_file()
        if env_file is None:
            yield (
                "header_secret: generated at each start, and nothing tells it to clients: "
                "set env_file (or header_secret)"
            )
        elif not env_file.parent.is_dir():
            yield f"env_file: the directory {env_file.parent} does not exist"


def tls_problem(tls: TlsOptions) -> str | None:
    """Why the certificate and key cannot serve TLS, or None."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(tls.certificate, tls.key)
    except ssl.SSLError:
        return f"{tls.certificate} and {tls.key} are not a matching PEM certificate and key"
    except OSError as exc:
        return f"cannot read {exc.filename or tls.certificate}: {exc.strerror}"
    return None
