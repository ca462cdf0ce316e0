"""The `endpoint:` block: where the local token endpoint listens and what it speaks.

A leaf module (secrets, durations, addresses only), so the config model can use it without
importing the server.
"""

from __future__ import annotations

import grp
import os
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tokend.durations import PositiveDuration
from tokend.paths import ConfigPath
from tokend.secrets import SecretRef
from tokend.transport import is_loopback, split_listen

DEFAULT_ENDPOINT_LISTEN = "127.0.0.1:9465"
APP_SERVICE_PATH = "/msi/token"
IMDS_PATH = "/metadata/identity/oauth2/token"
REQUESTTOKEN_PATH = "/requesttoken"
UNIX_PREFIX = "unix:"

Protocol = Literal["app_service", "imds"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsOptions(_Model):
    certificate: ConfigPath
    """PEM certificate (chain) the endpoint presents."""
    key: ConfigPath
    """PEM private key of the certificate."""


class IdentityAliases(_Model):
    """How SDKs may name one of tokend's identities besides its `client_id`."""

    principal_id: str | None = None
    """The object (principal) ID: App Service's `principal_id` / `object_id`, IMDS's `object_id`."""
    mi_res_id: str | None = None
    """An Azure resource ID: App Service's `mi_res_id`, IMDS's `msi_res_id`."""


class EndpointOptions(_Model):
    listen: str = DEFAULT_ENDPOINT_LISTEN
    """`host:port` (loopback unless `allow_remote`), or `unix:/path/to.sock`."""
    socket_mode: str = Field(default="0660", pattern=r"^0?[0-7]{3}$")
    """Mode of the Unix socket (octal)."""
    socket_group: str | None = None
    """Group of the Unix socket: the clients' group."""
    allow_remote: bool = False
    """Allow a non-loopback `listen` (only with `tls`)."""
    tls: TlsOptions | None = None
    protocols: list[Protocol] = Field(default_factory=lambda: list[Protocol](["app_service"]))
    """`app_service` (header secret) and/or `imds` (no secret: any local process may ask)."""
    path: str = Field(default=APP_SERVICE_PATH, pattern=r"^/[A-Za-z0-9/._-]*$")
    """Path of the App Service protocol (`IDENTITY_ENDPOINT` ends with it)."""
    header_secret: SecretRef | None = None
    """The `X-IDENTITY-HEADER` value; by default a new random one at every start."""
    env_file: ConfigPath | None = None
    """Where to write `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` (mode 0600) for clients to source;
    default: `$RUNTIME_DIRECTORY/endpoint.env` under systemd. Required when the header secret
    is generated and there is no default."""
    wait: PositiveDuration = timedelta(seconds=5)
    """How long a request waits for a token's first acquisition before a 503."""
    compat: Literal["requesttoken"] | None = None
    """`requesttoken`: the original helper's `POST /requesttoken` (password identities)."""
    tokens: list[str] | None = None
    """Which tokens it serves (default: every configured token)."""
    identities: dict[str, IdentityAliases] = Field(default_factory=dict)
    """Per identity name: the principal ID and resource ID SDKs may select it by."""
    default_identity: str | None = None
    """Which identity answers a request that names none, when several serve the resource."""

    @field_validator("listen")
    @classmethod
    def _address(cls, listen: str) -> str:
        if listen.startswith(UNIX_PREFIX):
            path = listen[len(UNIX_PREFIX) :]
            if not path.startswith("/"):
                raise ValueError("a Unix socket needs an absolute path: unix:/run/tokend/ep.sock")
            if not path.isprintable() or "'" in path:  # it is written into the env file
                raise ValueError("a Unix socket path must be printable, without quotes")
        else:
            split_listen(listen)
        return listen

    @model_validator(mode="after")
    def _reachable_only_safely(self) -> EndpointOptions:
        if self.socket_path is None:
            host, _ = split_listen(self.listen)
            if not is_loopback(host) and not (self.allow_remote and self.tls):
                raise ValueError(
                    f"listen: {self.listen} is reachable from other machines: tokens would "
                    "travel in the clear to anyone; set allow_remote: true and tls, or listen "
                    "on loopback or a Unix socket"
                )
        elif self.tls:
            raise ValueError("tls applies to TCP listeners only, not to a Unix socket")
        if self.socket_group and self.socket_path is None:
            raise ValueError("socket_group applies to a Unix socket only")
        if not self.protocols and self.compat is None:
            raise ValueError("no protocol to serve: give protocols or compat")
        return self

    @property
    def socket_path(self) -> str | None:
        if self.listen.startswith(UNIX_PREFIX):
            return self.listen[len(UNIX_PREFIX) :]
        return None

    @property
    def mode(self) -> int:
        return int(self.socket_mode, 8)

    def resolved_env_file(self) -> Path | None:
        if self.env_file is not None:
            return self.env_file
        runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
        return Path(runtime) / "endpoint.env" if runtime else None

    def base_url(self) -> str:
        """How clients reach the listener (`http://localhost` for a Unix socket)."""
        if self.socket_path is not None:
            return "http://localhost"
        host, port = split_listen(self.listen)
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def app_service_url(self) -> str:
        return self.base_url() + self.path


def group_problem(group: str) -> str | None:
    try:
        grp.getgrnam(group)
    except KeyError:
        return f"no such group '{group}'"
    return None
