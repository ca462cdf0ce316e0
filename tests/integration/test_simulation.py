"""A simulated day against a flaky identity provider: 10 tokens of 1-hour lifetime, about 30 %
of requests failing at random, and outage windows shorter than the refresh threshold.

A consumer reads every sink every simulated minute. The property: whenever a sink holds an
expired token, tokend did everything it could: it tried right up to the end (a last-chance
attempt just before expiry) and that attempt failed. Otherwise every read gets a valid token.
Real HTTP to the fake Entra ID, real files, virtual time: the day passes in seconds.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from tests.conftest import entra_identity
from tests.support import idp as faults
from tests.support.clock import FakeClock
from tests.support.harness import Harness
from tests.support.idp import CLIENT_SECRET, FakeIdp, RecordedRequest
from tokend.config import Config
from tokend.engine import Engine

TOKENS = 10
DAY = timedelta(hours=24)
THRESHOLD = timedelta(minutes=10)
S = timedelta(seconds=1)


@dataclass
class FlakyIdp:
    """Decides each request's fate from the fake clock: outages, then a 30 % coin."""

    clock: FakeClock
    rng: random.Random
    outages: list[tuple[datetime, datetime]]
    attempts: dict[str, list[tuple[datetime, bool]]] = field(default_factory=dict)

    def __call__(self, request: RecordedRequest) -> faults.Fault | None:
        now = self.clock.now()
        down = any(start <= now < end for start, end in self.outages)
        fails = down or self.rng.random() < 0.3
        self.attempts.setdefault(request.form["resource"], []).append((now, not fails))
        if not fails:
            return None
        return self.rng.choice(
            [
                faults.html(502),
                faults.too_many_requests("2"),
                faults.entra_error(503, "temporarily_unavailable", 50001),
                faults.truncated_json(),
            ]
        )


def _outages(start: datetime, rng: random.Random) -> list[tuple[datetime, datetime]]:
    """An outage of 2 to 9 minutes every 1 to 3 hours."""
    windows, at = [], start
    while at < start + DAY:
        at += timedelta(minutes=rng.uniform(60, 180))
        windows.append((at, at + timedelta(minutes=rng.uniform(2, 9))))
    return windows


def test_a_day_against_a_flaky_identity_provider(idp: FakeIdp, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    start = clock.now()
    rng = random.Random(20261123)
    flaky = FlakyIdp(clock, rng, _outages(start, rng))
    idp.policy = flaky
    config = Config.model_validate(
        {
            "identities": {"app": entra_identity(idp, CLIENT_SECRET)},
            "tokens": {
                f"t{i}": {
                    "identity": "app",
                    "resource": f"https://api{i}.example",
                    "sinks": [{"type": "file", "path": str(tmp_path / f"t{i}.token")}],
                }
                for i in range(TOKENS)
            },
            "defaults": {"refresh_threshold": "10m", "startup_spread": "30s"},
        }
    )
    reads = 0
    min_remaining = DAY
    gaps: list[tuple[str, datetime, datetime]] = []  # token, expired at, read at

    async def simulate() -> Engine:
        nonlocal reads, min_remaining
        h = Harness(config, clock, rand=random.Random(7))
        engine, scheduler = h.engine, h.scheduler

        async def consumer() -> None:
            nonlocal reads, min_remaining
            now = clock.now()
            for name, job in engine.jobs.items():
                (slot,) = job.publisher.slots
                if slot.held is None:
                    continue  # before the first token: nothing published yet
                reads += 1
                assert (tmp_path / f"{name}.token").read_text() == slot.held.value
                if slot.held.is_valid(now):
                    min_remaining = min(min_remaining, slot.held.expires_at - now)
                else:
                    gaps.append((name, slot.held.expires_at, now))
            scheduler.schedule("consumer", now + timedelta(minutes=1), consumer)

        await h.start()
        scheduler.schedule("consumer", start + timedelta(minutes=1), consumer)
        try:
            await scheduler.run_until(start + DAY)
        finally:
            await h.stop()
        return engine

    engine = asyncio.run(simulate())

    for name, expired_at, _ in gaps:
        resource = config.tokens[name].resource
        tries = [(at, ok) for at, ok in flaky.attempts[resource] if at < expired_at]
        last_at, last_ok = tries[-1]
        assert expired_at - S <= last_at < expired_at, f"{name}: no last-chance attempt"
        assert not last_ok, f"{name}: a successful attempt was not published"
    for resource, tries in flaky.attempts.items():  # after a failure, never idle past max backoff
        waits = [b[0] - a[0] for a, b in itertools.pairwise(tries) if not a[1]]
        assert max(waits) <= timedelta(minutes=5), resource

    requests = sum(len(tries) for tries in flaky.attempts.values())
    failures = sum(not ok for tries in flaky.attempts.values() for _, ok in tries)
    refreshes = sum(job.results["success"] for job in engine.jobs.values())
    expired_reads = len({(name, expired_at) for name, expired_at, _ in gaps})
    assert refreshes >= TOKENS * 24
    assert reads > TOKENS * 24 * 50
    with capsys.disabled():
        print(
            f"\n  simulated 24 h, {TOKENS} tokens of 1 h, {len(flaky.outages)} outages of 2-9 min, "
            f"30 % random failures: {requests} requests, {refreshes} refreshes, "
            f"{failures} failures ({failures / requests:.0%}); consumer reads: {reads}, "
            f"minimum remaining lifetime {min_remaining}, expiries with every chance "
            f"taken and failed: {expired_reads} ({len(gaps)} reads of an expired token)"
        )
