"""The whole `/status` document at once, for tests (the listener sends it in pieces)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from tokend.engine import Engine
from tokend.resources import Resources
from tokend.status import status_pieces


def engine_status(
    engine: Engine, now: datetime, resources: Resources | None = None, *, problems: bool = False
) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(
        "".join(status_pieces(engine, now, resources, problems=problems))
    )
    return document
