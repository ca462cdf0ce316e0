"""The engine on virtual time: real HTTP to the fake Entra ID, real files, a fake clock.

Hours of token lifetimes pass in a moment; every planned time is checked exactly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import stat
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.conftest import entra_identity
from tests.support import idp as faults
from tests.support.clock import FakeClock
from tests.support.harness import Harness
from tests.support.idp import CLIENT_SECRET, FakeIdp
from tokend.clock import format_span
from tokend.config import Config
from tokend.engine import Phase
from tokend.engine.once import refresh_once

M = timedelta(minutes=1)
H = timedelta(hours=1)
T = TypeVar("T")


def _config(
    idp: FakeIdp,
    tmp_path: Path,
    tokens: int = 1,
    http: dict[str, Any] | None = None,
    **token_options: Any,
) -> Config:
    return Config.model_validate(
        {
            "identities": {"app": entra_identity(idp, CLIENT_SECRET)},
            "tokens": {
                ("crm" if index == 0 else f"crm{index}"): {
                    "identity": "app",
                    "resource": "https://crm.example",
                    "sinks": [{"type": "file", "path": str(tmp_path / f"crm{index}.token")}],
                    **token_options,
                }
                for index in range(tokens)
            },
            "defaults": {"startup_spread": "10s"},
            "http": http or {},
        }
    )


def _run(idp: FakeIdp, tmp_path: Path, scenario: Callable[[Harness], Awaitable[T]], **kw: Any) -> T:
    async def main() -> T:
        harness = Harness(_config(idp, tmp_path, **kw), FakeClock())
        try:
            return await scenario(harness)
        finally:
            await harness.stop()

    return asyncio.run(main())


def test_refreshes_ahead_of_the_threshold_for_hours(idp: FakeIdp, tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.start()
        await h.run_for(6 * H)
        job = h.job()
        runs = [at for at, key in h.scheduler.runs if key == "crm"]
        # 1-hour tokens, 10-minute threshold, up to 6 minutes of jitter: every 44 to 50 minutes.
        gaps = [later - earlier for earlier, later in itertools.pairwise(runs)]
        assert 7 <= len(runs) <= 9
        assert all(44 * M <= gap <= 50 * M for gap in gaps), gaps
        assert job.results["success"] == len(runs)
        assert (tmp_path / "crm0.token").read_text() == job.token.value
        assert job.phase(h.clock.now()) is Phase.FRESH

    _run(idp, tmp_path, scenario)
    assert idp.provider.issued["test-client"] >= 7


def test_startup_is_spread_only_when_there_are_many(idp: FakeIdp, tmp_path: Path) -> None:
    """More first acquisitions than concurrent requests are spread over startup_spread; a
    handful start at once, so readiness is not delayed for nothing."""

    async def scenario(h: Harness) -> list[timedelta]:
        start = h.clock.now()
        await h.start()
        await h.run_for(M)
        return sorted(at - start for at, _ in h.scheduler.runs)

    many = _run(idp, tmp_path, scenario, tokens=4, http={"max_concurrent_requests": 3})
    assert many == [timedelta(seconds=s) for s in (0, 2.5, 5, 7.5)]
    few = _run(idp, tmp_path, scenario, tokens=4, http={"max_concurrent_requests": 4})
    assert few == [timedelta(0)] * 4


def test_retry_after_sets_the_next_attempt(idp: FakeIdp, tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        idp.fail(faults.too_many_requests("30"))
        start = h.clock.now()
        await h.start()
        await h.run_for(timedelta(seconds=1))
        job = h.job()
        assert job.phase(h.clock.now()) is Phase.RETRYING
        assert job.next_run == start + timedelta(seconds=30)
        await h.run_for(M)
        assert job.phase(h.clock.now()) is Phase.FRESH
        assert [at - start for at, _ in h.scheduler.runs] == [timedelta(0), timedelta(seconds=30)]

    _run(idp, tmp_path, scenario)


def test_failures_keep_the_last_good_token_until_it_expires(
    idp: FakeIdp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(h: Harness) -> None:
        await h.start()
        await h.run_for(timedelta(seconds=1))
        job = h.job()
        first = job.token
        sink_file = tmp_path / "crm0.token"
        assert sink_file.read_text() == first.value
        # From now on the secret is rejected: an operator must act.
        idp.fail(*[faults.entra_error(401, "invalid_client", 7000215)] * 40)
        await h.run_for(first.expires_at - h.clock.now() - timedelta(seconds=2))
        assert job.phase(h.clock.now()) is Phase.FAILING
        assert job.token is first
        assert sink_file.read_text() == first.value
        assert h.engine.is_ready(h.clock.now())
        # Permanent failures retry at the maximum backoff until the last chance, a safety margin
        # (5 min) before expiry; from there at half the time left: several last tries.
        await h.run_for(timedelta(seconds=2))
        last_chance = first.expires_at - 5 * M
        attempts = [at for at, key in h.scheduler.runs if key == "crm"][1:]
        before = [at for at in attempts if at <= last_chance]
        gaps = [b - a for a, b in itertools.pairwise(before)]
        assert all(225 * timedelta(seconds=1) <= gap <= 5 * M for gap in gaps[:-1]), gaps
        assert before[-1] == last_chance
        last_part = [at for at in attempts if last_chance < at <= first.expires_at]
        assert len(last_part) >= 5 and last_part[-1] == first.expires_at
        assert job.phase(h.clock.now()) is Phase.EXPIRED
        assert not h.engine.is_ready(h.clock.now())
        await h.run_for(6 * M)  # one more failed try after the expiry
        (expired,) = [r for r in caplog.records if "expired at" in r.getMessage()]  # once
        head, _, tail = expired.getMessage().partition(" - ")  # (the error's trace ids vary)
        assert (expired.levelname, head, expired.__dict__.get("token")) == (
            "ERROR",
            f"token expired at {first.expires_at:%Y-%m-%dT%H:%M:%SZ} with no replacement "
            "(last error: 127.0.0.1: HTTP 401 invalid_client (AADSTS7000215)",
            "crm",
        )
        assert tail.endswith(
            "); consumers now hold an expired token unless their sink withdraws it"
        )
        assert sink_file.read_text() == first.value  # on_expiry: keep (the default)
        idp.reset()
        await h.run_for(6 * M)
        assert job.phase(h.clock.now()) is Phase.FRESH
        assert job.token is not first
        assert sink_file.read_text() == job.token.value

    with caplog.at_level(logging.INFO, "tokend"):
        _run(idp, tmp_path, scenario)


def test_a_failing_sink_is_retried_alone_and_gets_the_newest_token(
    idp: FakeIdp, tmp_path: Path
) -> None:
    late_dir = tmp_path / "late"

    async def scenario(h: Harness) -> None:
        start = h.clock.now()
        await h.start()
        await h.run_for(timedelta(0))
        job = h.job()
        healthy, broken = job.publisher.slots
        assert healthy.held is job.token
        assert broken.held is None and broken.failures == 1
        assert "does not exist" in str(broken.last_error)
        retry_key = "crm/sink/file-2"
        assert h.scheduler.due(retry_key) == start + timedelta(seconds=1)  # its own backoff
        await h.run_for(2 * H)  # several refreshes while the sink keeps failing
        assert job.results["success"] >= 2
        assert broken.failures > 3
        late_dir.mkdir()
        await h.run_for(6 * M)  # within one max-backoff step
        assert broken.held is job.token  # the newest token, not a backlog of old ones
        assert (late_dir / "crm.token").read_text() == job.token.value
        assert h.scheduler.due(retry_key) is None

    _run(
        idp,
        tmp_path,
        scenario,
        sinks=[
            {"type": "file", "path": str(tmp_path / "crm.token")},
            {"type": "file", "path": str(late_dir / "crm.token")},
        ],
    )


def test_single_flight(idp: FakeIdp, tmp_path: Path) -> None:
    async def scenario(h: Harness) -> list[bool]:
        job = h.job()
        return list(await asyncio.gather(refresh_once(job), refresh_once(job), refresh_once(job)))

    assert _run(idp, tmp_path, scenario) == [True, True, True]
    assert len(idp.token_requests) == 1


def test_readiness_needs_every_sink(idp: FakeIdp, tmp_path: Path) -> None:
    async def scenario(h: Harness) -> list[bool]:
        seen = [h.engine.is_ready(h.clock.now())]
        await h.refresh_all()
        seen.append(h.engine.is_ready(h.clock.now()))
        return seen

    assert _run(idp, tmp_path, scenario) == [False, True]


def test_refresh_all_reports_any_failure(idp: FakeIdp, tmp_path: Path) -> None:
    async def scenario(h: Harness) -> bool:
        idp.fail(faults.html(502))
        return await h.refresh_all()

    assert _run(idp, tmp_path, scenario, tokens=3) is False


def test_once_retries_a_failure_that_may_pass_until_its_deadline(
    idp: FakeIdp, tmp_path: Path
) -> None:
    """`tokend once --timeout`: a transient failure is tried again after the backoff (here
    10 ms, no Retry-After) while that ends before the deadline; without a timeout, once."""

    async def scenario(h: Harness) -> list[tuple[bool, int]]:
        seen = []
        idp.fail(faults.html(502))
        seen.append((await h.engine.refresh_all(), len(idp.token_requests)))
        idp.fail(faults.html(502))
        seen.append((await h.engine.refresh_all(timeout=0.5), len(idp.token_requests)))
        return seen

    backoff = {"min": "0.01s", "max": "0.02s"}
    assert _run(idp, tmp_path, scenario, backoff=backoff) == [(False, 1), (True, 3)]


def test_settled_waits_for_the_request_in_flight(idp: FakeIdp, tmp_path: Path) -> None:
    """What the local endpoint does for a reader that comes before the first token."""

    async def scenario(h: Harness) -> list[object]:
        await h.engine.settled("nope")  # no such token: nothing to wait for
        await h.engine.settled("crm")  # nothing in flight
        request = asyncio.get_running_loop().create_task(refresh_once(h.job()))
        await asyncio.sleep(0)  # the request is on its way
        await h.engine.settled("crm")
        seen: list[object] = [h.job().token is not None, len(idp.token_requests)]
        await request
        return seen

    assert _run(idp, tmp_path, scenario) == [True, 1]


def test_tokens_without_a_valid_token_wait_for_one_probe_of_their_endpoint(
    idp: FakeIdp, tmp_path: Path
) -> None:
    """An outage with nothing to protect: both tokens wait at the endpoint for one probe (10 s,
    jittered), not each on its own backoff; a failed probe plans the next; a successful one
    wakes the other token at once."""

    async def scenario(h: Harness) -> None:
        idp.fail(*[faults.html(502)] * 3)  # both first attempts and the first probe
        await h.start()
        await h.run_for(timedelta(0))
        first, second = h.job("crm"), h.job("crm1")
        probe = h.scheduler.due(f"probe/{first.endpoint}")
        assert probe is not None and first.next_run == second.next_run == probe
        assert probe - h.clock.now() <= timedelta(seconds=10)
        await h.run_for(probe - h.clock.now())  # the probe fails: one request, planned again
        assert len(idp.token_requests) == 3
        again = h.scheduler.due(f"probe/{first.endpoint}")
        assert again is not None and again > h.clock.now()
        await h.run_for(again - h.clock.now())
        assert first.token is not None and second.token is not None
        assert len(idp.token_requests) == 5
        counts = sorted(job.transient_errors for job in (first, second))
        assert counts == [1, 2]  # the one that probed failed twice

    _run(idp, tmp_path, scenario, tokens=2)


def test_each_refresh_failure_is_one_line_saying_what_next(
    idp: FakeIdp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The line an operator reads: what kind of failure, which attempt, the error, when the next
    try is (when the daemon plans one) and what is still held; the same error again at DEBUG."""

    async def scenario(h: Harness) -> list[tuple[str, str, object]]:
        idp.fail(faults.html(502))
        await h.engine.refresh_all()  # `tokend once`: nothing planned
        expected = [
            (
                "WARNING",
                f"refresh failed (transient, attempt 1): {h.job().last_error}; no valid token",
                "crm",
            )
        ]
        await h.start()
        await h.run_for(timedelta(seconds=1))
        job = h.job()
        assert job.token is not None
        idp.fail(*[faults.entra_error(401, "invalid_client", 7000215)] * 2)
        for attempt, level in ((1, "ERROR"), (2, "DEBUG")):
            await refresh_once(job)
            assert job.next_run is not None and job.last_error is not None
            now = h.clock.now()
            expected.append(
                (
                    level,
                    f"refresh failed (needs operator action, attempt {attempt}): "
                    f"{job.last_error}; next try in {format_span(job.next_run - now)}; "
                    f"current token valid {format_span(job.token.expires_at - now)} more",
                    "crm",
                )
            )
        seen = [
            (record.levelname, record.getMessage(), record.__dict__.get("token"))
            for record in caplog.records
            if record.getMessage().startswith("refresh failed")
        ]
        assert seen == expected
        return seen

    with caplog.at_level(logging.DEBUG, "tokend.refresh"):
        _run(idp, tmp_path, scenario)


def test_each_refresh_and_each_recovery_is_one_line(
    idp: FakeIdp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(h: Harness) -> list[tuple[str, str, object]]:
        await h.start()
        await h.run_for(timedelta(0))
        job = h.job()
        assert job.token is not None and job.next_run is not None
        first, planned = job.token, job.next_run - h.clock.now()
        idp.fail(faults.html(502))
        await refresh_once(job)
        await refresh_once(job)
        assert job.token is not None and job.next_run is not None
        second, replanned = job.token, job.next_run - h.clock.now()
        lines = [
            (record.levelname, record.getMessage(), record.__dict__.get("token"))
            for record in caplog.records
            if record.name == "tokend.refresh" and "refresh failed" not in record.getMessage()
        ]
        expected = [
            (
                f"refreshed: expires {token.expires_at:%Y-%m-%dT%H:%M:%SZ} (in "
                f"{format_span(token.expires_at - h.clock.now())}), next refresh in "
                f"{format_span(plan)}, took "
            )
            for token, plan in ((first, planned), (second, replanned))
        ]
        assert [
            line[1].startswith(text) for line, text in zip(lines[::2], expected, strict=True)
        ] == [
            True,
            True,
        ]
        assert [(level, token) for level, _, token in lines] == [("INFO", "crm")] * 3
        assert lines[1][1] == "recovered after 1 failed attempts"
        return lines

    with caplog.at_level(logging.INFO, "tokend.refresh"):
        _run(idp, tmp_path, scenario)


def test_an_unexpected_error_while_acquiring_is_an_internal_error_that_may_pass(
    idp: FakeIdp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in a grant (any exception that is not a TokendError) is logged with its traceback
    and counts as a transient failure, retried like an outage; its message names only the
    exception's type."""

    class Broken:
        async def acquire(self, request: object) -> None:
            raise KeyError("secret-looking detail")

    async def scenario(h: Harness) -> None:
        job = h.job()
        job.kit = dataclasses.replace(job.kit, acquirer=Broken())
        await refresh_once(job)
        error = job.last_error
        assert error is not None
        assert (str(error), error.code, error.transient) == (
            "unexpected KeyError",
            "internal",
            True,
        )
        (logged,) = [r for r in caplog.records if r.exc_info]
        assert (logged.levelname, logged.getMessage(), logged.__dict__.get("token")) == (
            "ERROR",
            "unexpected error while acquiring",
            "crm",
        )

    with caplog.at_level(logging.INFO, "tokend"):
        _run(idp, tmp_path, scenario)


def test_restart_resumes_stored_tokens_without_a_request(idp: FakeIdp, tmp_path: Path) -> None:
    """A restarted tokend (same state_dir) publishes the stored token at once and refreshes it
    on the original schedule; no request is made at start, even with the IdP failing."""
    state_dir = tmp_path / "state"
    config = _config(idp, tmp_path).model_copy(update={"state_dir": state_dir})
    clock = FakeClock()

    async def first_life() -> Any:
        h = Harness(config, clock)
        await h.start()
        await h.run_for(M)
        await h.stop()
        return h.job().token

    async def second_life() -> tuple[Any, datetime | None]:
        h = Harness(config, clock)
        (tmp_path / "crm0.token").unlink()  # e.g. a tmpfs emptied by a reboot
        idp.fail(faults.html(502))  # the IdP is down at the time of the restart
        await h.start()
        job = h.job()
        due = h.scheduler.due("crm")
        await h.stop()
        return job, due

    stored = asyncio.run(first_life())
    state_file = state_dir / "crm.json"
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    requests_before = len(idp.token_requests)
    clock.advance(10 * M)
    job, due = asyncio.run(second_life())
    assert len(idp.token_requests) == requests_before  # nothing asked of the IdP
    assert job.token == stored
    assert (tmp_path / "crm0.token").read_text() == stored.value
    assert job.publisher.all_hold_valid_token(clock.now())
    assert due is not None and stored.obtained_at + 44 * M <= due <= stored.obtained_at + 50 * M


def test_stored_token_is_ignored_when_the_request_changed(idp: FakeIdp, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    config = _config(idp, tmp_path).model_copy(update={"state_dir": state_dir})

    async def life(cfg: Config) -> int:
        h = Harness(cfg, FakeClock())
        await h.start()
        await h.run_for(timedelta(0))
        await h.stop()
        return len(idp.token_requests)

    assert asyncio.run(life(config)) == 1
    spec = dataclasses.replace(config.tokens["crm"], resource="https://other.example")
    changed = config.model_copy(update={"tokens": {"crm": spec}})
    assert asyncio.run(life(changed)) == 2  # a new request for the new resource
    (state_dir / "crm.json").write_text("{not json")
    assert asyncio.run(life(changed)) == 3  # unreadable state: ignored, logged, re-acquired


def test_on_expiry_withdraw_removes_only_that_sinks_value(idp: FakeIdp, tmp_path: Path) -> None:
    keep_file, withdraw_file = tmp_path / "keep.token", tmp_path / "withdraw.token"

    async def scenario(h: Harness) -> None:
        await h.start()
        await h.run_for(timedelta(0))
        job = h.job()
        first = job.token
        idp.fail(*[faults.html(502)] * 100)  # a long outage
        await h.run_for(first.expires_at - h.clock.now() - timedelta(seconds=1))
        assert withdraw_file.read_text() == first.value  # valid until the very end
        await h.run_for(timedelta(seconds=1))
        assert job.phase(h.clock.now()) is Phase.EXPIRED
        assert not withdraw_file.exists()
        assert keep_file.read_text() == first.value
        idp.reset()
        await h.run_for(6 * M)  # the IdP is back: within one max-backoff step
        assert withdraw_file.read_text() == job.token.value
        assert keep_file.read_text() == job.token.value

    _run(
        idp,
        tmp_path,
        scenario,
        sinks=[
            {"type": "file", "path": str(keep_file)},
            {"type": "file", "path": str(withdraw_file), "on_expiry": "withdraw"},
        ],
    )


def test_refresh_times_are_jittered_when_acquired_and_when_resumed(
    idp: FakeIdp, tmp_path: Path
) -> None:
    """Tokens obtained together must not all refresh in the same second: each refresh is planned
    a random part of 10 % of the lifetime before the threshold (50 min for 1-hour tokens), both
    after a request and when a stored token is resumed at start."""
    state_dir = tmp_path / "state"
    config = _config(idp, tmp_path, tokens=10).model_copy(update={"state_dir": state_dir})
    clock = FakeClock()

    def early_by(h: Harness) -> list[timedelta]:
        """How long before the unjittered time (expiry - threshold) each refresh is planned."""
        jobs = h.engine.jobs.values()
        return [job.token.expires_at - 10 * M - job.next_run for job in jobs]  # type: ignore[union-attr,operator]

    async def life() -> list[timedelta]:
        h = Harness(config, clock)
        try:
            await h.start()
            await h.run_for(M)  # the start-up spread is 10 s
            return early_by(h)
        finally:
            await h.stop()

    for jitter in (asyncio.run(life()), asyncio.run(life())):  # acquired, then resumed
        assert all(timedelta(0) < early <= 6 * M for early in jitter), jitter
        assert len(set(jitter)) == 10
        assert max(jitter) - min(jitter) > 2 * M
    assert len(idp.token_requests) == 10  # the second life resumed every stored token


def test_tokens_built_alike_share_one_job_kit_and_one_slot_kit(
    idp: FakeIdp, tmp_path: Path
) -> None:
    """What jobs and sinks work with is one shared object per distinct combination, not a copy
    each (at 100,000 tokens, ~5 MB a copy). A token with a backoff of its own gets its own."""

    async def main() -> None:
        def token(index: int, **options: Any) -> dict[str, Any]:
            sink = {"type": "file", "path": str(tmp_path / f"{index}.token")}
            return {
                "identity": "app",
                "resource": "https://crm.example",
                "sinks": [sink],
                **options,
            }

        tokens = {f"crm{index}": token(index) for index in range(3)}
        tokens["own"] = token(3, backoff={"min": "2s", "max": "1m"})
        identities = {"app": entra_identity(idp, CLIENT_SECRET)}
        harness = Harness(Config.model_validate({"identities": identities, "tokens": tokens}))
        try:
            jobs = list(harness.engine.jobs.values())
            slots = [job.publisher.slots[0] for job in jobs]
            assert jobs[0].kit is jobs[1].kit is jobs[2].kit
            assert slots[0].kit is slots[1].kit is slots[2].kit
            assert jobs[3].kit is not jobs[0].kit and slots[3].kit is not slots[0].kit
            assert jobs[3].kit.backoff.min == timedelta(seconds=2)
        finally:
            await harness.stop()

    asyncio.run(main())
