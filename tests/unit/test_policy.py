"""Refresh policy, backoff and retry timing: pure functions, table-driven."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tokend.backoff import Backoff
from tokend.engine.policy import RefreshPolicy, retry_at, safety_margin, startup_at
from tokend.token import Token

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
S = timedelta(seconds=1)
M = timedelta(minutes=1)
H = timedelta(hours=1)


def _token(lifetime: timedelta, refresh_in: timedelta | None = None) -> Token:
    return Token(
        value="v",
        token_type="Bearer",
        expires_at=T0 + lifetime,
        obtained_at=T0,
        refresh_on=T0 + refresh_in if refresh_in else None,
    )


@pytest.mark.parametrize(
    ("lifetime", "threshold", "refresh_in", "jitter", "rand", "expected"),
    [
        (H, 10 * M, None, 0.0, 0.0, T0 + 50 * M),  # threshold before expiry
        (H, 10 * M, None, 0.1, 1.0, T0 + 44 * M),  # jitter: up to 10 % of lifetime earlier
        (H, 10 * M, None, 0.1, 0.5, T0 + 47 * M),
        (20 * M, 10 * M, None, 0.0, 0.0, T0 + 10 * M),  # lifetime == 2x threshold: half-life
        (25 * M, 10 * M, None, 0.0, 0.0, T0 + 15 * M),  # 2.5x threshold: threshold wins
        (60 * S, 10 * M, None, 0.0, 0.0, T0 + 30 * S),  # short-lived: half-life
        (60 * S, 10 * M, None, 0.1, 1.0, T0 + 24 * S),
        (24 * H, 10 * M, 12 * H, 0.0, 0.0, T0 + 12 * H),  # refresh_in sooner than threshold
        (H, 10 * M, 55 * M, 0.0, 0.0, T0 + 50 * M),  # refresh_in later: threshold wins
        (H, 5 * M, None, 0.0, 0.0, T0 + 55 * M),  # per-token threshold
        (2 * S, 10 * M, None, 0.5, 1.0, T0 + S),  # never sooner than 1 s after obtaining
    ],
)
def test_refresh_at(
    lifetime: timedelta,
    threshold: timedelta,
    refresh_in: timedelta | None,
    jitter: float,
    rand: float,
    expected: datetime,
) -> None:
    policy = RefreshPolicy(threshold=threshold, jitter=jitter)
    assert policy.refresh_at(_token(lifetime, refresh_in), rand) == expected


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [
        (1, 0.0, 1 * S),
        (2, 0.0, 2 * S),
        (3, 0.0, 4 * S),
        (9, 0.0, 256 * S),
        (10, 0.0, 5 * M),  # capped
        (500, 0.0, 5 * M),  # no overflow
        (3, 1.0, 3 * S),  # jitter shortens by up to a quarter
        (1, 1.0, 1 * S),  # never below min
        (10, 1.0, 225 * S),
    ],
)
def test_backoff(attempt: int, rand: float, expected: timedelta) -> None:
    assert Backoff(min=S, max=5 * M).delay(attempt, rand) == expected


def _held(remaining: timedelta, lifetime: timedelta = H) -> Token:
    """A token obtained `lifetime` before it expires, `remaining` from now (T0)."""
    expires = T0 + remaining
    return Token(value="v", token_type="Bearer", expires_at=expires, obtained_at=expires - lifetime)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"attempt": 1}, T0 + S),
        ({"attempt": 4}, T0 + 8 * S),
        ({"attempt": 1, "hard": True}, T0 + 5 * M),  # permanent / loop detected: max
        ({"attempt": 1, "retry_after": 30.0}, T0 + 30 * S),  # Retry-After is a floor
        ({"attempt": 9, "retry_after": 30.0}, T0 + 256 * S),  # backoff longer: backoff
        # A 1 h token valid 7 min more: its last chance is 5 min (the margin) before expiry;
        # no backoff, Retry-After or loop detection plans past it.
        ({"attempt": 1, "hard": True, "holding": _held(7 * M)}, T0 + 2 * M),
        ({"attempt": 1, "retry_after": 600.0, "holding": _held(7 * M)}, T0 + 2 * M),
        ({"attempt": 1, "holding": _held(7 * M)}, T0 + S),  # sooner anyway: unchanged
        # Inside the margin: half the time left, again and again, never past expiry.
        ({"attempt": 5, "hard": True, "holding": _held(4 * M)}, T0 + 2 * M),
        ({"attempt": 5, "holding": _held(10 * S)}, T0 + 5 * S),
        ({"attempt": 5, "holding": _held(1.5 * S)}, T0 + S),  # never sooner than min...
        ({"attempt": 5, "holding": _held(S / 2)}, T0 + S / 2),  # ...but not past expiry
        ({"attempt": 5, "retry_after": 30.0, "holding": _held(10 * S)}, T0 + 10 * S),
        # Short tokens: the margin is 10 % of the lifetime, at least 5 s, at most half of it.
        ({"attempt": 1, "hard": True, "holding": _held(60 * S, 2 * M)}, T0 + 48 * S),
        ({"attempt": 1, "hard": True, "holding": _held(60 * S, 5 * S)}, T0 + 57.5 * S),
        ({"attempt": 1, "hard": True, "holding": _held(-S)}, T0 + 5 * M),  # already expired
        ({"attempt": 3, "holding": _held(timedelta(0))}, T0 + 4 * S),  # expiring this instant
    ],
)
def test_retry_at(kwargs: dict[str, object], expected: datetime) -> None:
    assert retry_at(now=T0, backoff=Backoff(min=S, max=5 * M), rand=0.0, **kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("lifetime", "margin"),
    [(H, 5 * M), (2 * H, 5 * M), (30 * M, 3 * M), (2 * M, 12 * S), (20 * S, 5 * S), (6 * S, 3 * S)],
)
def test_safety_margin(lifetime: timedelta, margin: timedelta) -> None:
    assert safety_margin(lifetime) == margin


@pytest.mark.parametrize(
    ("index", "count", "spread", "expected"),
    [
        (0, 1, 10 * S, T0),
        (0, 4, 10 * S, T0),
        (1, 4, 10 * S, T0 + 2.5 * S),
        (3, 4, 10 * S, T0 + 7.5 * S),
        (5, 10, timedelta(0), T0),
    ],
)
def test_startup_spread(index: int, count: int, spread: timedelta, expected: datetime) -> None:
    assert startup_at(T0, index, count, spread) == expected
