"""Which tokens keep their own series with `metrics.per_token: problems`: a table of cases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tokend.engine import Phase, SinkView, TokenView
from tokend.metrics import LATE, needs_attention

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _sink(failures: int = 0) -> SinkView:
    return SinkView(
        name="file",
        held_expires_at=NOW + timedelta(hours=1),
        holds_valid_token=True,
        required_for_ready=True,
        last_success=NOW,
        failures=failures,
        last_error=None,
        published=1,
        errors=failures,
    )


def _view(**changes: Any) -> TokenView:
    fields: dict[str, Any] = {
        "name": "crm",
        "phase": Phase.FRESH,
        "token": None,
        "valid": True,
        "published": True,
        "ready": True,
        "next_refresh": NOW + timedelta(minutes=50),
        "last_success": NOW,
        "failures": 0,
        "last_error": None,
        "refreshes": {"success": 1, "transient_error": 0, "permanent_error": 0},
        "sinks": (_sink(),),
    }
    return TokenView(**(fields | changes))


@pytest.mark.parametrize(
    ("changes", "attention"),
    [
        ({}, False),
        ({"next_refresh": None}, False),
        ({"next_refresh": NOW - LATE + timedelta(seconds=1)}, False),  # due, not a minute late
        ({"next_refresh": NOW - LATE - timedelta(seconds=1)}, True),
        ({"valid": False}, True),  # never acquired, or expired
        ({"failures": 1}, True),
        ({"sinks": (_sink(), _sink(failures=2))}, True),
    ],
)
def test_needs_attention(changes: dict[str, Any], attention: bool) -> None:
    assert needs_attention(_view(**changes), NOW - LATE) is attention
