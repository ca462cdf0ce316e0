"""Every kind of identity-provider fault: its classification, the exact time of the next try
(on a fake clock, with randomness pinned), and what the sinks hold meanwhile."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from datetime import timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from starlette.responses import Response

from tests.conftest import entra_identity
from tests.support import idp as faults
from tests.support.clock import FakeClock
from tests.support.harness import Harness
from tests.support.idp import CLIENT_SECRET, FakeIdp
from tokend.config import Config
from tokend.engine import Phase
from tokend.engine.job import TokenJob
from tokend.oauth import HttpSettings, PermanentError, TransientError
from tokend.sinks.file import FileSinkOptions

S = timedelta(seconds=1)
M = timedelta(minutes=1)


class NoJitter(random.Random):
    """Every random draw is 0: no jitter, so planned times are exact."""

    def random(self) -> float:
        return 0.0


def _config(idp: FakeIdp, tmp_path: Path) -> Config:
    return Config.model_validate(
        {
            "identities": {"app": entra_identity(idp, CLIENT_SECRET)},
            "tokens": {
                "crm": {
                    "identity": "app",
                    "resource": "https://crm.example",
                    "sinks": [
                        {"type": "file", "path": str(tmp_path / "crm.token")},
                        {"type": "file", "path": str(tmp_path / "crm.json"), "format": "json"},
                    ],
                }
            },
        }
    )


async def _after_first_refresh_fails(
    idp: FakeIdp, tmp_path: Path, clock: FakeClock, fault: faults.Fault, count: int = 1
) -> tuple[TokenJob, Any, list[timedelta]]:
    """Obtain a token, then meet `fault` `count` times at the planned refresh. Returns the job,
    the first token, and each planned next try, as offsets from its failed attempt."""
    h = Harness(_config(idp, tmp_path), clock, http=HttpSettings(read_timeout=1.0), rand=NoJitter())
    scheduler = h.scheduler
    try:
        await h.start()
        await scheduler.run_until(clock.now())
        job = h.job()
        first = job.token
        assert job.next_run == first.obtained_at + 50 * M  # 1-hour token, 10-minute threshold
        idp.fail(*[fault] * count)
        offsets = []
        for _ in range(count):
            attempt_at = scheduler.due("crm")
            await scheduler.run_until(attempt_at)
            offsets.append(job.next_run - attempt_at)
        return job, first, offsets
    finally:
        await h.stop()


FAULTS = [
    # (fault factory given the time of the attempt, class, code, next try after the attempt)
    (lambda at: faults.too_many_requests("7"), TransientError, "http_429", 7 * S),
    (
        lambda at: faults.too_many_requests(format_datetime(at + 42 * S, usegmt=True)),
        TransientError,
        "http_429",
        42 * S,
    ),
    (lambda at: faults.html(502), TransientError, "http_502", 1 * S),
    (lambda at: faults.hang(3.0), TransientError, "timeout", 1 * S),
    (lambda at: faults.truncated_json(), TransientError, "not_json", 1 * S),
    (
        lambda at: faults.token_body({"token_type": "Bearer", "expires_in": 3599}),
        TransientError,
        "malformed",
        1 * S,
    ),
    (
        lambda at: faults.entra_error(503, "temporarily_unavailable", 50001),
        TransientError,
        "temporarily_unavailable",
        1 * S,
    ),
    (
        lambda at: faults.entra_error(401, "invalid_client", 7000215),
        PermanentError,
        "invalid_client/7000215",
        5 * M,
    ),
    (
        lambda at: faults.entra_error(400, "invalid_grant", 50126),
        PermanentError,
        "invalid_grant/50126",
        5 * M,
    ),
    (
        lambda at: faults.entra_error(400, "invalid_request", 50196),
        TransientError,
        "loop_detected",
        5 * M,
    ),
]


@pytest.mark.parametrize(("make_fault", "kind", "code", "next_try"), FAULTS)
def test_fault(
    idp: FakeIdp, tmp_path: Path, make_fault: Any, kind: type, code: str, next_try: timedelta
) -> None:
    clock = FakeClock()
    fault = make_fault(clock.now() + 50 * M)
    job, first, offsets = asyncio.run(_after_first_refresh_fails(idp, tmp_path, clock, fault))
    assert isinstance(job.last_error, kind)
    assert job.last_error.code == code
    assert offsets == [next_try]
    assert job.results["permanent_error" if kind is PermanentError else "transient_error"] == 1
    expected_phase = Phase.FAILING if kind is PermanentError else Phase.RETRYING
    assert job.phase(clock.now()) is expected_phase
    # The sinks still hold the last good token.
    assert (tmp_path / "crm.token").read_text() == first.value
    assert first.value in (tmp_path / "crm.json").read_text()
    assert job.publisher.all_hold_valid_token(clock.now())


def test_transient_backoff_doubles(idp: FakeIdp, tmp_path: Path) -> None:
    clock = FakeClock()
    _, _, offsets = asyncio.run(
        _after_first_refresh_fails(idp, tmp_path, clock, faults.html(502), count=10)
    )
    # 1, 2, 4 ... 128 s (the 9th try at 54:15); 256 s would pass the last chance, a safety
    # margin (5 min for a 1 h token) before expiry: the 10th try is at 55:00; from then on, half
    # the time left (150 s).
    assert offsets == [S * 2**n for n in range(8)] + [45 * S, 150 * S]


def test_retries_never_planned_after_expiry(idp: FakeIdp, tmp_path: Path) -> None:
    """429 asking for an hour while the token has 10 minutes left: the next try comes at the
    last chance, a safety margin (5 min for a 1 h token) before expiry."""
    clock = FakeClock()
    job, first, _ = asyncio.run(
        _after_first_refresh_fails(idp, tmp_path, clock, faults.too_many_requests("3600"))
    )
    assert job.next_run == first.expires_at - 5 * M


def test_a_failure_is_logged_once_until_it_changes(
    idp: FakeIdp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Trace ids differ on every response; the same error code is still the same problem."""
    clock = FakeClock()
    invalid = faults.entra_error(401, "invalid_client", 7000215)
    caplog.set_level("DEBUG", logger="tokend")

    async def scenario() -> None:
        await _after_first_refresh_fails(idp, tmp_path, clock, invalid, count=3)

    asyncio.run(scenario())
    failures = [r for r in caplog.records if "refresh failed" in r.getMessage()]
    assert [r.levelname for r in failures] == ["ERROR", "DEBUG", "DEBUG"]
    caplog.clear()
    asyncio.run(_after_first_refresh_fails(idp, tmp_path, clock, faults.html(502), count=2))
    levels = [r.levelname for r in caplog.records if "refresh failed" in r.getMessage()]
    assert levels == ["WARNING", "DEBUG"]


def test_a_slow_last_chance_still_withdraws_at_the_expiry_instant(
    idp: FakeIdp, tmp_path: Path
) -> None:
    """The last try before expiry takes 0.5 s and fails: the next run (which withdraws the dead
    token) comes at the expiry instant, never after it."""
    clock = FakeClock()
    withdrawn = tmp_path / "withdraw.token"

    async def slow_failure() -> Response:
        clock.advance(0.5)
        return Response("busy", status_code=503)

    config = _config(idp, tmp_path)
    sink = FileSinkOptions(type="file", path=str(withdrawn), on_expiry="withdraw")
    spec = dataclasses.replace(config.tokens["crm"], sinks=[sink])
    config = config.model_copy(update={"tokens": {"crm": spec}})

    async def scenario() -> None:
        h = Harness(config, clock, rand=NoJitter())
        scheduler = h.scheduler
        try:
            await h.start()
            await scheduler.run_until(clock.now())
            expires = h.job().token.expires_at  # type: ignore[union-attr]
            # Every try fails; those in the last 2 s take 0.5 s each.
            idp.policy = lambda request: (
                slow_failure if clock.now() >= expires - 2 * S else faults.html(502)
            )
            await scheduler.run_until(expires - S / 1000)
            assert withdrawn.exists() and scheduler.due("crm") == expires
            tries = [at for at, key in scheduler.runs if key == "crm"]
            assert len([at for at in tries if at >= expires - 5 * M]) >= 8  # the last part
            await scheduler.run_until(expires)
            assert not withdrawn.exists()
        finally:
            await h.stop()

    asyncio.run(scenario())
