"""`/metrics` is rendered off the event loop: with a series per token (`per_token: all`, the
default) a scrape of 20,000 tokens takes seconds of CPU in prometheus_client, and on the loop it
held refreshes and `/healthz` up for as long."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tests.conftest import entra_identity
from tests.support.asgi import asgi_get
from tests.support.harness import harness
from tests.support.idp import CLIENT_SECRET, FakeIdp
from tokend.config import validate_config
from tokend.metrics import Metrics
from tokend.status_app import create_app


class _WaitsForTheLoop(Collector):
    """A collector that finishes only once the event loop has run something else (or gives up
    after 10 s, saying so in its sample)."""

    def __init__(self) -> None:
        self.loop_ran = threading.Event()

    def describe(self) -> Iterator[Metric]:
        return iter(())  # not collected at registration

    def collect(self) -> Iterator[Metric]:
        ran = self.loop_ran.wait(timeout=10)
        yield GaugeMetricFamily("test_loop_ran", "The loop ran during the scrape.", value=ran)


def test_a_scrape_leaves_the_event_loop_free(idp: FakeIdp, tmp_path: Path) -> None:
    sinks = [{"type": "file", "path": str(tmp_path / "crm.token")}]
    config = validate_config(
        {
            "identities": {"app": entra_identity(idp, CLIENT_SECRET)},
            "tokens": {"crm": {"identity": "app", "resource": "https://crm", "sinks": sinks}},
        }
    )

    async def scenario() -> None:
        async with harness(config) as running:
            metrics = Metrics(running.clock)
            metrics.watch(running.engine)
            waiting = _WaitsForTheLoop()
            metrics.registry.register(waiting)
            app = create_app(running.engine, metrics, running.clock)
            scrape = asyncio.create_task(asgi_get(app, "/metrics"))
            await asyncio.sleep(0)  # the scrape begins
            waiting.loop_ran.set()  # this line runs during it only if the loop is free
            status, body = await scrape
            assert status == 200
            text = body.decode()
            assert "test_loop_ran 1.0" in text
            assert 'tokend_token_valid{token="crm"} 0.0' in text  # the engine's series too

    asyncio.run(scenario())
