"""What `tokend check` (and `tokend run`, before it starts) finds wrong with the `endpoint:` block
on this machine: the address cannot be listened on, the Unix socket's directory or group does not
exist, the TLS certificate and key do not make a pair, the header secret is generated but nobody
could read it (or would not survive an env file), the env file cannot be written."""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Iterator
from pathlib import Path

from tokend.endpoint.options import EndpointOptions, TlsOptions, group_problem
from tokend.secrets import SecretError, SecretReference
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
    env_file = options.resolved_env_file()
    if "app_service" in options.protocols and options.header_secret is None and env_file is None:
        yield (
            "header_secret: generated at each start, and nothing tells it to clients: "
            "set env_file (or header_secret)"
        )
    if options.header_secret is not None and (problem := _secret_problem(options.header_secret)):
        yield f"header_secret: {problem}"
    if env_file is not None and (problem := _env_file_problem(env_file)):
        yield f"env_file: {problem}"


def _secret_problem(reference: SecretReference) -> str | None:
    try:
        value = reference.resolve().reveal()
    except SecretError:
        return None  # reported with every other secret reference
    return header_secret_problem(value)


def _env_file_problem(env_file: Path) -> str | None:
    """Why tokend could not write the env file at start, as far as this machine says."""
    if env_file.is_dir():
        return f"{env_file} is a directory"
    if not env_file.parent.is_dir():
        return f"the directory {env_file.parent} does not exist"
    if not os.access(env_file.parent, os.W_OK | os.X_OK):
        return f"cannot write in {env_file.parent} (permissions)"
    return None


_HEADER_SECRET = re.compile(r"[\x21-\x26\x28-\x7e]([\x20-\x26\x28-\x7e]*[\x21-\x26\x28-\x7e])?")
"""Printable ASCII but the single quote, not starting or ending with a space."""


def header_secret_problem(value: str) -> str | None:
    """Why `value` cannot be the header secret, or None. It is sent as an HTTP header value
    (which HTTP trims of spaces at its ends) and written single-quoted into the env file and
    `tokend endpoint env`'s `export` lines, where every character but the single quote stands
    for itself: a `'` or a line break would end it there early, and what follows would run in
    the shell that sources it."""
    if not _HEADER_SECRET.fullmatch(value):
        return (
            "must be printable ASCII without a single quote, and not start or end with a space "
            "(it is an HTTP header value, written single-quoted into an env file)"
        )
    return None


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
