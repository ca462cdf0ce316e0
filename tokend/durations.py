"""Durations in config: `600`, `"600s"`, `"10m"`, `"1h"`, `"1d"`, `"500ms"`.

A module of its own so that every config model (the `vault:` block, sink options) can use the same
spelling without importing `tokend.config`, which imports them.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator

from tokend.redaction import redactor

_DURATION = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m|h|d)?")
_LONGEST = 365 * 86400
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: Any) -> timedelta:
    """`600` and `"600"` are seconds; `"600s"`, `"10m"`, `"1h"`, `"1d"`, `"500ms"` name a unit."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("expected a duration such as 600, 600s, 10m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(value.strip())
        if not match:
            shown = redactor.shown(value, 40)  # one line, whatever the config holds
            raise ValueError(f"'{shown}' is not a duration such as 600, 600s, 10m or 1h")
        seconds = float(match["number"]) * _UNIT_SECONDS[match["unit"]]
    if not math.isfinite(seconds) or seconds > _LONGEST:
        raise ValueError("a duration must be finite and at most 365 days")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return timedelta(seconds=seconds)


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than zero")
    return value


PositiveDuration = Annotated[Duration, AfterValidator(_positive)]

__all__ = ["Duration", "PositiveDuration", "parse_duration"]
