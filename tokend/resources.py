"""Shared resources: clients that many sinks, credentials and secret references use together
(a Vault session today; a Kubernetes API client, a JWKS cache tomorrow).

A resource kind registers a top-level config section (`vault:`) and how to create its client
from that section. `Resources` creates each client the first time something asks for it, one per
distinct settings, and closes it once nothing uses it any more (after a reload) or at shutdown.
A sink or credential never builds a shared client itself: it asks its `Resources`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from tokend.clock import SYSTEM_CLOCK, Clock, Scheduler
from tokend.errors import TokendError
from tokend.registry import Registry

log = logging.getLogger("tokend.resources")


class Resource(Protocol):
    async def close(self) -> None:
        """Release the client (from the event loop)."""
        ...

    def close_sync(self) -> None:
        """Release the client, for callers without an event loop (`tokend check`)."""
        ...


@dataclass(frozen=True, slots=True)
class Environment:
    """What a resource may depend on: the time, and (in a running daemon) a scheduler for its
    own upkeep, such as renewing a login. `tokend check` has no scheduler."""

    clock: Clock = SYSTEM_CLOCK
    scheduler: Scheduler | None = None
    resources: Resources | None = None
    """The other shared clients, for a resource built on one (leader election on the
    Kubernetes client); filled in by `Resources`."""


OptionsT = TypeVar("OptionsT")
ClientT = TypeVar("ClientT", bound=Resource)


@dataclass(frozen=True)
class ResourceKind(Generic[OptionsT, ClientT]):
    """A kind of shared client, registered under the name of its config section."""

    section: str
    """The top-level config key holding its options, e.g. `vault`."""
    options: type[OptionsT]
    create: Callable[[OptionsT, Environment], ClientT]
    summary: str
    """What the section must say, for messages: `address, auth`."""
    default: Callable[[], OptionsT] | None = None
    """Options to use when the section is absent; None: the section is required."""
    check: Callable[[ClientT], list[str]] | None = None
    """Problems found by using the client without changing anything (for `tokend check`), one
    line each, starting with the key they concern inside the section (`auth: ...`)."""
    status: Callable[[ClientT, datetime], dict[str, Any]] | None = None
    """The client's section of `/status` (JSON; with a one-line `summary` for `tokend status`),
    from what it knows already: no request is made."""
    metrics: Callable[[list[ClientT]], Iterable[Any]] | None = None
    """Prometheus metric families for the clients in use, read at scrape time: no request."""
    leadership: bool = False
    """The client decides whether this replica leads (leader election): the composition root
    hands it to the engine, which writes shared sinks only while it leads."""


RESOURCES: Registry[ResourceKind[Any, Any]] = Registry(
    "shared resource",
    builtins={
        "vault": "tokend.vault",
        "jwks": "tokend.oauth.jwks",
        "kubernetes": "tokend.kube",
        "leader_election": "tokend.kube.election",
    },
)


class MissingSection(TokendError):
    """Something needs a resource whose config section is absent (config validation prevents)."""


class Resources:
    """The shared clients of one process, created lazily from the config's sections."""

    def __init__(self, sections: Mapping[str, Any], environment: Environment | None = None) -> None:
        self._sections = dict(sections)
        self._environment = dataclasses.replace(environment or Environment(), resources=self)
        self._clients: dict[tuple[str, Any], Any] = {}
        self._in_use: set[tuple[str, Any]] = set()

    def get(self, kind: ResourceKind[OptionsT, ClientT]) -> ClientT:
        """The client for `kind` with the configured settings; created on first use."""
        options = self._settings(kind.section)
        if options is None:
            raise MissingSection(
                f"needs a top-level {kind.section}: block ({kind.summary})", code="missing_section"
            )
        key = (kind.section, options)
        client: ClientT | None = self._clients.get(key)
        if client is None:
            client = self._clients[key] = kind.create(options, self._environment)
        self._in_use.add(key)
        return client

    def provide(self, kind: ResourceKind[OptionsT, ClientT], client: ClientT) -> None:
        """Use `client` for `kind` under the current settings instead of creating one (for a
        program that embeds tokend's parts and owns its clients, and for tests)."""
        key = (kind.section, self._settings(kind.section))
        self._clients[key] = client
        self._in_use.add(key)

    def configure(self, sections: Mapping[str, Any]) -> None:
        """New settings (a reload). Clients whose settings are unchanged stay; `close_unused()`
        releases the others once the parts built from the old settings have stopped."""
        self._sections = dict(sections)
        self._in_use = {key for key in self._clients if self._settings(key[0]) == key[1]}

    def _settings(self, section: str) -> Any:
        options = self._sections.get(section)
        if options is None and (default := RESOURCES[section].default) is not None:
            options = default()
        return options

    async def close_unused(self) -> None:
        """Close every client nobody asked for since `configure` (call after the parts built
        from the old settings have stopped)."""
        for key in [key for key in self._clients if key not in self._in_use]:
            await self._close(key)

    async def close(self) -> None:
        for key in reversed(list(self._clients)):  # a client may use one made before it
            await self._close(key)

    def close_sync(self) -> None:
        for client in self._clients.values():
            client.close_sync()
        self._clients.clear()

    def in_use(self) -> list[tuple[ResourceKind[Any, Any], Any]]:
        """The clients the current config uses, with their kinds (for `/status` and
        `/metrics`, which only read them; `/metrics` from a worker thread, so the clients are
        listed at once, before a reload on the event loop can add one)."""
        clients = list(self._clients.items())
        return [(RESOURCES[key[0]], client) for key, client in clients if key in self._in_use]

    def check(self) -> dict[str, list[str]]:
        """What each client in use finds wrong by trying (`tokend check`), by config section."""
        problems: dict[str, list[str]] = {}
        for (section, _options), client in list(self._clients.items()):
            check = RESOURCES[section].check
            if found := check(client) if check else []:
                problems.setdefault(section, []).extend(found)
        return problems

    async def _close(self, key: tuple[str, Any]) -> None:
        client = self._clients.pop(key)
        try:
            await client.close()
        except Exception:
            log.exception("%s: error while closing", key[0])
