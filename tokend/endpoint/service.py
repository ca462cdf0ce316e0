"""The endpoint as a running part of the daemon: its own listener (loopback TCP, a Unix socket
with a mode and group, or TLS when remote clients are allowed), the header secret, and the env
file that tells clients `IDENTITY_ENDPOINT` and `IDENTITY_HEADER`.

The listener is separate from the metrics one on purpose: a metrics port is often opened to
Prometheus; the token port must not be.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import secrets
import socket
import ssl
import stat
from pathlib import Path

from tokend.clock import Clock
from tokend.config import Config
from tokend.endpoint.app import EndpointApp, Handler
from tokend.endpoint.catalog import Catalog, password_identities
from tokend.endpoint.checks import header_secret_problem, tls_problem
from tokend.endpoint.compat import RequestToken
from tokend.endpoint.http import HttpServer
from tokend.endpoint.options import REQUESTTOKEN_PATH, EndpointOptions
from tokend.endpoint.supply import Supply
from tokend.engine import Engine
from tokend.files import write_atomic
from tokend.metrics import Metrics
from tokend.redaction import redactor
from tokend.resources import Resources
from tokend.secrets import SecretError
from tokend.server import ListenError, bind_tcp
from tokend.transport import split_listen

log = logging.getLogger("tokend.endpoint")


class Endpoint:
    """Built (and bound) with the daemon; `serve()` runs it, `stop()` ends it."""

    def __init__(
        self,
        config: Config,
        options: EndpointOptions,
        *,
        engine: Engine,
        metrics: Metrics,
        clock: Clock,
        resources: Resources | None = None,
    ) -> None:
        self.options = options
        self.header_secret, self.generated = _header_secret(options)
        self.env_file = options.resolved_env_file()
        supply = Supply(engine, clock, options.wait)
        self.compat = RequestToken(config, options, supply, resources) if options.compat else None
        routes: dict[str, tuple[str, Handler]] = {}
        if self.compat is not None:
            routes[REQUESTTOKEN_PATH] = ("requesttoken", self.compat)
        self.app = EndpointApp(
            options,
            catalog=Catalog(config, options),
            supply=supply,
            metrics=metrics,
            header_secret=self.header_secret,
            extra_routes=routes,
        )
        self.listener = self._bound_and_announced()

    def _bound_and_announced(self) -> HttpServer:
        """The listener, bound; then the env file written, so that a start that cannot bind
        (another tokend serves there) never replaces the running one's header secret, and one
        that cannot write the file stops here instead of serving a secret nobody can read."""
        sock = _bind(self.options)
        try:
            tls = _tls_context(self.options)
            if self.env_file is not None:
                self._write_env_file(self.env_file)
        except BaseException:
            sock.close()
            if self.options.socket_path:
                with contextlib.suppress(OSError):
                    os.unlink(self.options.socket_path)
            raise
        return HttpServer(self.app, sock, tls)

    async def serve(self) -> None:
        log.info("%s", self.announcement())
        await self.listener.serve()

    def stop(self) -> None:
        self.listener.stop()
        if self.options.socket_path:
            with contextlib.suppress(OSError):
                os.unlink(self.options.socket_path)

    def reconfigure(self, config: Config) -> None:
        """A reload: serve the tokens of the new config. Listener and protocol changes take
        effect at the next restart."""
        options = config.endpoint or self.options
        self.app.catalog = Catalog(config, options)
        if self.compat is not None:
            self.compat.identities = password_identities(config, options)

    def announcement(self) -> str:
        """What clients export, without the secret itself."""
        options = self.options
        where = f"on {options.listen}" + (" (TLS)" if options.tls else "")
        parts = [f"local token endpoint {where}: {', '.join(options.protocols)}"]
        if options.compat:
            parts.append(f"compat {options.compat}")
        line = "; ".join(parts)
        if "app_service" not in options.protocols:
            return line
        if self.env_file is not None:
            source = f"in {self.env_file}"
        elif self.generated:
            source = "generated (set env_file to share it)"
        else:
            source = "from endpoint.header_secret"
        return (
            f"{line}; IDENTITY_ENDPOINT={options.app_service_url()}, IDENTITY_HEADER {source} "
            "(`tokend endpoint env` prints both)"
        )

    def _write_env_file(self, path: Path) -> None:
        try:
            write_atomic(path, env_lines(self.options, self.header_secret).encode(), mode=0o600)
        except OSError as exc:
            raise ListenError(f"endpoint.env_file: cannot write {path}: {exc.strerror}") from None


def env_lines(options: EndpointOptions, header_secret: str | None) -> str:
    """Shell- and systemd-`EnvironmentFile=`-readable assignments for clients."""
    lines = []
    if options.socket_path:
        lines.append(f"# a Unix socket: curl --unix-socket {options.socket_path} ...")
    if "app_service" in options.protocols:
        lines.append(f"IDENTITY_ENDPOINT='{options.app_service_url()}'")
        if header_secret is not None:
            lines.append(f"IDENTITY_HEADER='{header_secret}'")
    if "imds" in options.protocols:
        imds = f"AZURE_POD_IDENTITY_AUTHORITY_HOST='{options.base_url()}'"
        # With both, SDKs choose App Service; the IMDS line is for those that speak only IMDS.
        lines.append(f"# {imds}" if "app_service" in options.protocols else imds)
    return "\n".join(lines) + "\n"


class EnvironmentUnknown(Exception):
    """`tokend endpoint env` cannot tell the header secret; the text says why."""


def client_environment(options: EndpointOptions) -> str:
    """`tokend endpoint env`: `export` lines for a shell (`eval "$(tokend endpoint env)"`). The
    header secret comes from its reference, or from the env file the running tokend wrote."""
    secret = None
    if "app_service" in options.protocols:
        if options.header_secret is not None:
            try:
                secret = options.header_secret.resolve().reveal()
            except SecretError as exc:
                raise EnvironmentUnknown(f"endpoint.header_secret: {exc}") from None
            where = "endpoint.header_secret"
        else:
            secret = _written_header(options.resolved_env_file())
            where = f"IDENTITY_HEADER in {options.resolved_env_file()}"
        if problem := header_secret_problem(secret):
            raise EnvironmentUnknown(f"{where}: {problem}")
    return "".join(
        f"{line}\n" if line.startswith("#") else f"export {line}\n"
        for line in env_lines(options, secret).splitlines()
    )


def _written_header(env_file: Path | None) -> str:
    if env_file is None:
        raise EnvironmentUnknown(
            "the header secret is generated at each start and no env_file is set: set "
            "endpoint.env_file (or endpoint.header_secret)"
        )
    try:
        text = env_file.read_text()
    except FileNotFoundError:
        raise EnvironmentUnknown(
            f"{env_file} does not exist: is tokend running with this config?"
        ) from None
    except OSError as exc:
        raise EnvironmentUnknown(f"cannot read {env_file}: {exc.strerror}") from None
    for line in text.splitlines():
        if line.startswith("IDENTITY_HEADER="):
            return line.split("=", 1)[1].strip("'")
    raise EnvironmentUnknown(f"{env_file} holds no IDENTITY_HEADER")


def _header_secret(options: EndpointOptions) -> tuple[str, bool]:
    """The `X-IDENTITY-HEADER` value, and whether it was generated for this start."""
    if options.header_secret is None:
        value = secrets.token_urlsafe(32)
        redactor.add_secret(value)
        return value, True
    try:
        value = options.header_secret.resolve().reveal()
    except SecretError as exc:
        raise ListenError(f"endpoint.header_secret: {exc}") from None
    if problem := header_secret_problem(value):
        raise ListenError(f"endpoint.header_secret: {problem}")
    return value, False


def _tls_context(options: EndpointOptions) -> ssl.SSLContext | None:
    if options.tls is None:
        return None
    if problem := tls_problem(options.tls):
        raise ListenError(f"endpoint.tls: {problem}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(options.tls.certificate, options.tls.key)
    return context


def _bind(options: EndpointOptions) -> socket.socket:
    path = options.socket_path
    if path is None:
        return bind_tcp(*split_listen(options.listen))
    return bind_unix(path, options.mode, options.socket_group)


def bind_unix(path: str, mode: int, group: str | None) -> socket.socket:
    """A listening Unix socket at `path` with `mode` and `group`, created private and opened up
    only after its owner is set. A stale socket file (tokend killed) is replaced; any other
    file is not."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise ListenError(f"cannot listen on unix:{path}: a file that is not a socket is there")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
        if group is not None:
            os.chown(path, -1, grp.getgrnam(group).gr_gid)
        os.chmod(path, mode)
    except (OSError, KeyError) as exc:
        sock.close()
        reason = exc.strerror if isinstance(exc, OSError) else f"no such group '{group}'"
        raise ListenError(f"cannot listen on unix:{path}: {reason}") from None
    finally:
        os.umask(old_umask)
    sock.listen(128)
    sock.setblocking(False)
    return sock
