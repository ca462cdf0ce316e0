"""The sink contract. A sink knows how to write a token somewhere; it does not know when.

The publisher (`tokend.engine.publisher`) decides when, retries failures on each sink's own
schedule, and keeps only the newest token for a sink that is behind. A sink raises `SinkError` with
a one-line reason naming the place it writes to; it never puts a token value in that text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from pydantic import ConfigDict
from pydantic import dataclasses as pydantic_dataclasses

from tokend.oauth.token import Token

if TYPE_CHECKING:
    from tokend.vault import VaultSession


class SinkError(Exception):
    """Publishing failed. `str()` is one line naming the sink's target and what went wrong."""


@dataclass(frozen=True, slots=True)
class SinkContext:
    """What a sink is told about the token it serves, at construction."""

    token_name: str
    sink_name: str
    vault: VaultSession | None = field(default=None, compare=False)
    """The process's Vault session, when the config has a `vault:` block (shared by every sink
    and secret reference that uses Vault, so tokend logs in once)."""


OPTIONS_CONFIG = ConfigDict(extra="forbid")
"""Config of every per-token options class: unknown keys are errors."""


@pydantic_dataclasses.dataclass(config=OPTIONS_CONFIG, frozen=True, slots=True, kw_only=True)
class SinkOptionsBase:
    """Options every sink type has. Each type's options class adds its own `type` literal.

    Options classes are slotted pydantic dataclasses rather than models: one exists per sink,
    and a model instance carries a dict and a set (~630 bytes against ~180): 4.5 MB at 10,000."""

    name: str | None = None
    """The sink's label in metrics and status (default: its type, numbered if repeated)."""
    on_expiry: Literal["keep", "withdraw"] = "keep"
    """When the token expires with no replacement: leave the dead value (`keep`), or remove it
    (`withdraw`) so consumers fail fast instead of calling APIs with an expired token."""

    def target(self) -> str:
        """What this sink writes to, e.g. `file /run/tokend/crm.token`; two sinks may not share
        one (config validation rejects it)."""
        raise NotImplementedError

    def preflight(self) -> list[str]:
        """Problems this machine would cause at the first write, found without writing (for
        `tokend check`); one short line each, naming the target."""
        return []

    def preflight_remote(self, context: SinkContext) -> list[str]:
        """Problems found by asking the service this sink writes to (for `tokend check`), still
        without writing: a missing mount, a policy that forbids the write. Runs after
        `preflight()`, blocking; one short line each."""
        return []


class Sink(Protocol):
    name: str

    async def publish(self, token: Token) -> None:
        """Make `token` the current value at this sink. Raises `SinkError`."""
        ...

    async def withdraw(self) -> None:
        """Remove the published value, so consumers fail fast instead of using a dead token."""
        ...

    async def close(self) -> None: ...
