"""`on_publish:` of a sink, as the config gives it: what `tokend.consumers` runs after each
durable write. (Its own module: `tokend check` validates these and loads no event loop.)"""

from __future__ import annotations

import signal
from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tokend.durations import PositiveDuration
from tokend.paths import ConfigPath


class SignalOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pid_file: ConfigPath
    name: str = "HUP"

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        name = name.upper().removeprefix("SIG")
        if (
            name not in signal.Signals.__members__
            and f"SIG{name}" not in signal.Signals.__members__
        ):
            raise ValueError(f"'{name}' is not a signal name such as HUP or USR1")
        return name


class OnPublish(BaseModel):
    """`on_publish:` of a sink."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: tuple[str, ...] | None = Field(default=None, min_length=1)
    """argv, run without a shell."""
    timeout: PositiveDuration = timedelta(seconds=10)
    env: bool = False
    """Put the token itself in the command's environment (`TOKEND_ACCESS_TOKEN`)."""
    signal: SignalOptions | None = None

    @model_validator(mode="after")
    def _something(self) -> OnPublish:
        if self.command is None and self.signal is None:
            raise ValueError("give a command, a signal, or both")
        return self
