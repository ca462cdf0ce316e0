"""Publishing tokens: the sink contract (`Sink`), its options base and the registry of sink types.

Concrete sink types live in their own modules and register themselves in `SINKS`; nothing outside
them names one.
"""

from tokend.sinks.base import (
    SINKS,
    Sink,
    SinkContext,
    SinkError,
    SinkOptionsBase,
    SinkType,
    VerifyingSink,
    build_sink,
    can_verify,
    is_shared,
    sink_labels,
)

__all__ = [
    "SINKS",
    "Sink",
    "SinkContext",
    "SinkError",
    "SinkOptionsBase",
    "SinkType",
    "VerifyingSink",
    "build_sink",
    "can_verify",
    "is_shared",
    "sink_labels",
]
