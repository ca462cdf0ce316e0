"""Publishing tokens: the sink contract and the registry of sink types.

Adding a sink type: one module with an options model and a class, plus one entry in `_BUILDERS`
and in the `SinkOptions` union below. Nothing in the engine names a concrete sink.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field

from tokend.sinks.base import Sink, SinkContext, SinkError, SinkOptionsBase
from tokend.sinks.file import FileSink, FileSinkOptions
from tokend.sinks.vault import VaultSink, VaultSinkOptions

SinkOptions = Annotated[FileSinkOptions | VaultSinkOptions, Field(discriminator="type")]

_BUILDERS: dict[str, Callable[[Any, SinkContext], Sink]] = {
    "file": FileSink,
    "vault": VaultSink,
}

SINK_TYPES = tuple(_BUILDERS)


def build_sink(options: SinkOptions, context: SinkContext) -> Sink:
    return _BUILDERS[options.type](options, context)


__all__ = [
    "SINK_TYPES",
    "Sink",
    "SinkContext",
    "SinkError",
    "SinkOptions",
    "SinkOptionsBase",
    "build_sink",
]
