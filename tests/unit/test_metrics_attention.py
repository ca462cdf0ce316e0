"""Which tokens keep their own series with `metrics.per_token: problems`: a table of cases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tokend.engine.query import OVERDUE, needs_attention

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _attention(**changes: Any) -> bool:
    token: dict[str, Any] = {
        "valid": True,
        "failures": 0,
        "sink_failing": False,
        "next_refresh": NOW + timedelta(minutes=50),
    }
    return needs_attention(**(token | changes), late=NOW - OVERDUE)


@pytest.mark.parametrize(
    ("changes", "attention"),
    [
        ({}, False),
        ({"next_refresh": None}, False),
        ({"next_refresh": NOW - OVERDUE + timedelta(seconds=1)}, False),  # due, not a minute late
        ({"next_refresh": NOW - OVERDUE - timedelta(seconds=1)}, True),
        ({"valid": False}, True),  # never acquired, or expired
        ({"failures": 1}, True),
        ({"sink_failing": True}, True),
    ],
)
def test_needs_attention(changes: dict[str, Any], attention: bool) -> None:
    assert _attention(**changes) is attention
