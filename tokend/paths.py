"""Paths in config: every key that names a file or a directory is a `ConfigPath`.

`Path("")` is `.`, the working directory (`/` under systemd), so a key written as `""` would
quietly mean "here": `state_dir: ""` passed `tokend check`, then tokend never saved its state
(as root, it wrote its temp files in `/`). An empty path is an error naming the key instead.
A module of its own, as `tokend.durations`, so every config model can use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator

EMPTY_PATH = "must not be empty: give a path"


def _not_empty(value: Any) -> Any:
    if value == "":
        raise ValueError(EMPTY_PATH)
    return value


ConfigPath = Annotated[Path, BeforeValidator(_not_empty)]
"""A file or directory path a config key names; never empty."""
