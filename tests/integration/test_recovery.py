"""When the identity provider heals, every consumer is whole again within seconds, and nothing
storms it meanwhile; a permanent failure is retried as soon as its cause may have changed; a
reload never lets a stopped job publish. Virtual time, real HTTP to the fake Entra ID."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import entra_identity
from tests.support import idp as faults
from tests.support.clock import FakeClock
from tests.support.harness import Harness
from tests.support.idp import CLIENT_SECRET, FakeIdp, RecordedRequest, running_idp
from tokend.config import Config
from tokend.engine import Phase
from tokend.engine.state import StateStore, fingerprint

S = timedelta(seconds=1)
M = timedelta(minutes=1)


@pytest.fixture(scope="module")
def short_idp() -> Iterator[FakeIdp]:
    """Tokens that live 60 s, as in the field report: expiry comes fast in an outage."""
    with running_idp(lifetime=timedelta(seconds=60)) as server:
        yield server


@pytest.fixture
def idp60(short_idp: FakeIdp) -> Iterator[FakeIdp]:
    short_idp.reset()
    yield short_idp
    short_idp.reset()


def _config(idp: FakeIdp, tmp_path: Path, count: int, **token: Any) -> Config:
    return Config.model_validate(_document(idp, tmp_path, count, **token))


def _document(idp: FakeIdp, tmp_path: Path, count: int, **token: Any) -> dict[str, Any]:
    """`count` tokens by the v1 endpoint (resource) and `count` by the v2 one (scope)."""
    tokens: dict[str, Any] = {}
    for index in range(count):
        for version, target in (
            ("v1", {"resource": f"https://api{index}.example"}),
            ("v2", {"scopes": [f"https://api{index}.example/.default"]}),
        ):
            name = f"{version}-{index}"
            sink = {"type": "file", "path": str(tmp_path / f"{name}.token"), "format": "json"}
            tokens[name] = {"identity": "app", **target, "sinks": [sink], **token}
    return {
        "identities": {"app": entra_identity(idp, CLIENT_SECRET)},
        "tokens": tokens,
        "defaults": {"startup_spread": 0},
        "listen": None,
    }


def _expires(token_file: Path) -> datetime:
    """What a consumer learns from the file: `expires_on` (whole seconds)."""
    return datetime.fromtimestamp(json.loads(token_file.read_text())["expires_on"], UTC)


def test_after_an_outage_every_consumer_is_whole_again_within_15_s(
    idp60: FakeIdp, tmp_path: Path
) -> None:
    clock = FakeClock()
    start = clock.now()
    outage = (start + 2 * M, start + 12 * M)  # 10 minutes: every 60 s token expires within it
    requests: list[tuple[datetime, str]] = []

    def policy(request: RecordedRequest) -> faults.Fault | None:
        requests.append((clock.now(), _endpoint(request)))
        return faults.html(502) if outage[0] <= clock.now() < outage[1] else None

    idp60.policy = policy
    config = _config(idp60, tmp_path, count=10)
    stale_reads: list[datetime] = []  # when a consumer read an expired token, after the heal

    async def scenario() -> None:
        h = Harness(config, clock)
        scheduler = h.scheduler

        async def consumer() -> None:
            now = clock.now()
            for path in tmp_path.glob("*.token"):
                if _expires(path) <= now and now >= outage[1]:
                    stale_reads.append(now)
            scheduler.schedule("consumer", now + S / 5, consumer)

        try:
            await h.start()
            scheduler.schedule("consumer", start + S, consumer)
            await h.run_for(15 * M)
            assert all(view.published for view in h.engine.query(clock.now()))
        finally:
            await h.stop()

    asyncio.run(scenario())
    assert stale_reads, "no consumer read an expired token: the outage did not bite"
    assert max(stale_reads) - outage[1] <= 15 * S
    # While nothing was valid (from the last expiry to the heal), one probe per endpoint at
    # most every 10 s (7.5 to 10 s, jittered), not one request per token.
    last_expiry = outage[0] + 60 * S
    during = Counter(endpoint for at, endpoint in requests if last_expiry <= at < outage[1])
    window = (outage[1] - last_expiry).total_seconds()
    assert set(during) == {"v1", "v2"}
    assert all(count <= window / 7.5 + 1 for count in during.values()), during


def _endpoint(request: RecordedRequest) -> str:
    return "v2" if "/v2.0/" in request.path else "v1"


def test_a_permanent_failure_is_retried_when_the_secret_file_changes(
    idp: FakeIdp, tmp_path: Path
) -> None:
    """invalid_client until an operator rewrites the {file:} secret: tried again within 10 s of
    the change (the secret is watched while the token fails), not after the 5-minute backoff."""
    secret_file = tmp_path / "secret"
    secret_file.write_text("the-wrong-secret")
    config = Config.model_validate(
        {
            "identities": {"app": entra_identity(idp, {"file": str(secret_file)})},
            "tokens": {
                "crm": {
                    "identity": "app",
                    "resource": "https://crm.example",
                    "sinks": [{"type": "file", "path": str(tmp_path / "crm.token")}],
                }
            },
            "listen": None,
        }
    )

    async def scenario() -> None:
        h = Harness(config)
        try:
            await h.start()
            await h.run_for(30 * S)
            job = h.job()
            assert job.phase(h.clock.now()) is Phase.FAILING
            assert job.last_error is not None and job.last_error.code == "invalid_client/7000215"
            fixed_at = h.clock.now()
            secret_file.write_text(CLIENT_SECRET)
            await h.run_for(10 * S)
            assert job.phase(h.clock.now()) is Phase.FRESH
            assert job.last_success is not None and job.last_success - fixed_at <= 10 * S
        finally:
            await h.stop()

    asyncio.run(scenario())


def test_a_reload_retries_permanent_failures_at_once(idp: FakeIdp, tmp_path: Path) -> None:
    config = _config(idp, tmp_path, count=1)

    async def scenario() -> None:
        h = Harness(config)
        try:
            idp.fail(*[faults.entra_error(401, "invalid_client", 7000215)] * 2)
            await h.start()
            await h.run_for(S)
            job = h.job("v1-0")
            assert job.phase(h.clock.now()) is Phase.FAILING
            assert job.next_run is not None and job.next_run - h.clock.now() > 3 * M
            summary = await h.reload(config)  # same config: an operator acting (SIGHUP)
            assert summary.unchanged == ["v1-0", "v2-0"] and h.job("v1-0") is job
            await h.run_for(timedelta(0))
            assert job.phase(h.clock.now()) is Phase.FRESH
        finally:
            await h.stop()

    asyncio.run(scenario())


def test_a_job_stopped_by_a_reload_never_publishes_its_in_flight_result(
    idp: FakeIdp, tmp_path: Path
) -> None:
    """The token's config changes while its refresh is in flight: the old job's answer is
    dropped (not published, not persisted); only the new job's token reaches the sink."""
    document = _document(idp, tmp_path, count=1)
    document["state_dir"] = str(tmp_path / "state")
    config = Config.model_validate(document)
    for token in document["tokens"].values():
        token["refresh_threshold"] = "5m"
    changed = Config.model_validate(document)
    token_file = tmp_path / "v1-0.token"
    released = asyncio.Event()

    async def scenario() -> None:
        h = Harness(config)
        try:
            await h.start()
            await h.run_for(S)
            old = h.job("v1-0")
            published = token_file.read_text()
            loop = asyncio.get_running_loop()
            idp.fail(_held_until(released, loop))
            in_flight = asyncio.create_task(old._run())
            while not idp.token_requests[2:]:  # the old job's request has reached the IdP
                await asyncio.sleep(0.01)
            await h.reload(changed)
            new = h.job("v1-0")
            assert new is not old
            released.set()
            await in_flight
            assert old.token is not None and token_file.read_text() == published
            stored = StateStore(tmp_path / "state").load(
                "v1-0", fingerprint(new.request), h.clock.now()
            )
            assert stored is not None and stored.value in published  # not the dropped answer
            await h.run_for(S)
            assert new.token is not None
        finally:
            released.set()
            await h.stop()

    asyncio.run(scenario())


def _held_until(released: asyncio.Event, loop: asyncio.AbstractEventLoop) -> faults.Fault:
    """Answer normally, but only once the test says so (the fake IdP runs on another thread:
    it polls the flag rather than awaiting another loop's event)."""

    async def respond() -> None:
        while not released.is_set():
            await asyncio.sleep(0.01)

    return respond


def test_removing_a_token_applies_its_sinks_on_expiry_rule(
    idp: FakeIdp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tokend")
    kept, withdrawn = tmp_path / "kept.token", tmp_path / "withdrawn.token"
    document: dict[str, Any] = {
        "identities": {"app": entra_identity(idp, CLIENT_SECRET)},
        "tokens": {
            "crm": {
                "identity": "app",
                "resource": "https://crm.example",
                "sinks": [
                    {"type": "file", "path": str(kept)},
                    {"type": "file", "path": str(withdrawn), "on_expiry": "withdraw"},
                ],
            },
            "other": {
                "identity": "app",
                "resource": "https://other.example",
                "sinks": [{"type": "file", "path": str(tmp_path / "other.token")}],
            },
        },
        "listen": None,
    }
    config = Config.model_validate(document)
    del document["tokens"]["crm"]

    async def scenario() -> None:
        h = Harness(config)
        try:
            await h.start()
            await h.run_for(S)
            assert kept.exists() and withdrawn.exists()
            summary = await h.reload(Config.model_validate(document))
            assert summary.removed == ["crm"]
        finally:
            await h.stop()

    asyncio.run(scenario())
    assert kept.exists() and not withdrawn.exists()
    messages = [record.getMessage() for record in caplog.records]
    assert any("is left in place (on_expiry: keep)" in m for m in messages)
    assert any("value withdrawn" in m for m in messages)
