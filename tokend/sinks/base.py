"""The sink contract and the registry of sink types. A sink knows how to write a token
somewhere; it does not know when.

The publisher (`tokend.engine.publisher`) decides when, retries failures on each sink's own
schedule, and keeps only the newest token for a sink that is behind. A sink raises a
`TokendError` (its own `SinkError`, or the error of the shared client it writes through) with a
one-line reason naming the place it writes to; never a token value in that text.

Adding a sink type: one module with an options class (a subclass of `SinkOptionsBase` with a
`type` literal) and a sink class, registered with `SINKS.register(...)`, plus its tag and
module name in `SINKS`'s built-ins. Nothing else names it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, TypeGuard

from pydantic import ConfigDict
from pydantic import dataclasses as pydantic_dataclasses

from tokend.consumer_options import OnPublish
from tokend.errors import TokendError
from tokend.registry import Registry
from tokend.token import Token

if TYPE_CHECKING:
    from tokend.resources import Resources


class SinkError(TokendError):
    """Publishing failed. `str()` is one line naming the sink's target and what went wrong."""

    def __init__(self, message: str, *, code: str = "sink_error", transient: bool = False) -> None:
        super().__init__(message, code=code, transient=transient)


@dataclass(frozen=True, slots=True)
class SinkContext:
    """What a sink is told about the token it serves, at construction."""

    token_name: str
    sink_name: str
    resources: Resources | None = field(default=None, compare=False)
    """The process's shared clients (a Vault session...), for sinks that write through one."""


OPTIONS_CONFIG = ConfigDict(extra="forbid")
"""Config of every per-token options class: unknown keys are errors."""


@pydantic_dataclasses.dataclass(config=OPTIONS_CONFIG, frozen=True, slots=True, kw_only=True)
class SinkOptionsBase:
    """Options every sink type has. Each type's options class adds its own `type` literal.

    Options classes are slotted pydantic dataclasses rather than models: one exists per sink,
    and a model instance carries a dict and a set (~630 bytes against ~180): 4.5 MB at 10,000."""

    needs: ClassVar[tuple[str, ...]] = ()
    """Shared resources (config sections) this sink type writes through, e.g. `("vault",)`."""

    type: str
    name: str | None = None
    """The sink's label in metrics and status (default: its type, numbered if repeated)."""
    on_expiry: Literal["keep", "withdraw"] = "keep"
    """When the token expires with no replacement: leave the dead value (`keep`), or remove it
    (`withdraw`) so consumers fail fast instead of calling APIs with an expired token."""
    on_publish: OnPublish | None = None
    """Tell consumers that keep the token in memory: a command and/or a signal after each
    durable write (`tokend.consumers`)."""
    required_for_ready: bool | None = None
    """Whether readiness (`/readyz`, systemd READY) waits for this sink to hold a valid token.
    Default: the sink type's (true for a file the pod's own app reads; false for a shared
    remote store such as Vault, whose outage should not take every pod out of service)."""

    def waits_for_ready(self) -> bool:
        """`required_for_ready`, or the sink type's default when not set."""
        if self.required_for_ready is not None:
            return self.required_for_ready
        return SINKS[self.type].required_for_ready

    def target(self) -> str:
        """What this sink writes to, e.g. `file /run/tokend/crm.token`; two sinks may not share
        one (config validation rejects it)."""
        raise NotImplementedError

    def resolved_target(self) -> str:
        """`target()` with what this machine resolves it to (symbolic links followed): two
        sinks may not share one either (`tokend check` and start-up reject it)."""
        return self.target()

    def preflight(self) -> list[str]:
        """Problems this machine would cause at the first write, found without writing (for
        `tokend check`, start-up and reloads); one short line each, naming the target."""
        return []

    def warnings(self) -> list[str]:
        """Settings that work but deserve a second look (a token readable by other users)."""
        return []

    def preflight_remote(self, context: SinkContext) -> list[str]:
        """Problems found by asking the service this sink writes to (for `tokend check`), still
        without writing: a missing mount, a policy that forbids the write. Runs after
        `preflight()`, blocking; one short line each."""
        return []


class Sink(Protocol):
    name: str

    async def publish(self, token: Token) -> None:
        """Make `token` the current value at this sink. Raises `TokendError`."""
        ...

    async def withdraw(self) -> None:
        """Remove the published value, so consumers fail fast instead of using a dead token."""
        ...

    async def close(self) -> None: ...


class VerifyingSink(Sink, Protocol):
    """A sink that can tell, cheaply, whether what it holds is still tokend's token (optional:
    a sink type that writes where others may change or delete the value, such as a shared
    remote store). The publisher asks every `verify_interval` (jittered), and at once when
    another sink of the same type recovers after failures; `False` makes it deliver again."""

    verify_interval: timedelta
    """How often to ask; zero: only after a recovery."""

    async def verify(self, token: Token) -> bool:
        """Is `token`, the last one this sink was given, still what it holds, unchanged by
        anyone else? One cheap read. Raises `TokendError` when it cannot tell now."""
        ...


def can_verify(sink: Sink) -> TypeGuard[VerifyingSink]:
    return callable(getattr(sink, "verify", None)) and hasattr(sink, "verify_interval")


@dataclass(frozen=True)
class SinkType:
    options: type[SinkOptionsBase]
    build: Callable[[Any, SinkContext], Sink]
    """(options, context) -> the sink."""
    required_for_ready: bool = True
    """Default of `required_for_ready` for sinks of this type."""
    shared: bool = False
    """It writes to a store that every replica of tokend shares (a Vault path, a Kubernetes
    Secret): with leader election, only the leader publishes there."""


SINKS: Registry[SinkType] = Registry(
    "sink type",
    builtins={
        "file": "tokend.sinks.file",
        "vault": "tokend.sinks.vault",
        "kubernetes": "tokend.sinks.kubernetes",
    },
)


def is_shared(options: SinkOptionsBase) -> bool:
    """Does this sink write to a store shared between replicas (see `SinkType.shared`)?"""
    return SINKS[options.type].shared


def build_sink(options: SinkOptionsBase, context: SinkContext) -> Sink:
    return SINKS[options.type].build(options, context)


def sink_labels(sinks: Sequence[SinkOptionsBase]) -> list[str]:
    """Each sink's name in metrics and status: its `name`, else its type (numbered if the token
    has several of that type)."""
    labels = []
    for index, sink in enumerate(sinks):
        same_type = [i for i, other in enumerate(sinks) if other.type == sink.type]
        if sink.name:
            labels.append(sink.name)
        elif len(same_type) == 1:
            labels.append(sink.type)
        else:
            labels.append(f"{sink.type}-{same_type.index(index) + 1}")
    return labels
