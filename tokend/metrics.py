"""Every Prometheus metric tokend exposes, defined in one place.

Token and sink state is read from the engine at scrape time by one collector (as cert-manager
does), so nothing is updated from all over the code and 10,000 tokens cost no extra objects.
Only the refresh-duration histogram records events as they happen; it has no per-token label.
Metric names are an interface: dashboards and alerts depend on them.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tokend import __version__
from tokend.clock import SYSTEM_CLOCK, Clock
from tokend.engine import Engine

REFRESH_RESULTS = ("success", "transient_error", "permanent_error")
SINK_RESULTS = ("success", "error")


class Metrics:
    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.refresh_duration = Histogram(
            "tokend_token_refresh_duration_seconds",
            "Time taken by token requests to identity providers, successful or not.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        Gauge(
            "tokend_build_info",
            "Always 1; the version label says which tokend is running.",
            ["version"],
            registry=self.registry,
        ).labels(__version__).set(1)
        self._collector = EngineCollector(clock)
        self.registry.register(self._collector)

    def watch(self, engine: Engine) -> None:
        self._collector.engine = engine

    def render(self) -> bytes:
        return generate_latest(self.registry)


class EngineCollector(Collector):
    """Token and sink metrics, read from the engine's current state at each scrape."""

    def __init__(self, clock: Clock) -> None:
        self.engine: Engine | None = None
        self._clock = clock

    def describe(self) -> Iterator[Metric]:
        return iter(())  # collected lazily; names are registered on first scrape

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        if engine is None:
            return
        now = self._clock.now()
        expiry = _gauge(
            "tokend_token_expiry_timestamp_seconds",
            "When the currently held token expires (Unix time).",
            ["token"],
        )
        next_refresh = _gauge(
            "tokend_token_next_refresh_timestamp_seconds",
            "When the next refresh attempt is planned (Unix time).",
            ["token"],
        )
        last_success = _gauge(
            "tokend_token_last_success_timestamp_seconds",
            "When a token was last acquired successfully (Unix time).",
            ["token"],
        )
        valid = _gauge(
            "tokend_token_valid", "1 while a non-expired token is held, else 0.", ["token"]
        )
        refreshes = CounterMetricFamily(
            "tokend_token_refresh", "Token requests by outcome.", labels=["token", "result"]
        )
        publishes = CounterMetricFamily(
            "tokend_sink_publish",
            "Attempts to publish a token to a sink, by outcome.",
            labels=["token", "sink", "result"],
        )
        sink_success = _gauge(
            "tokend_sink_last_success_timestamp_seconds",
            "When a sink last accepted a token (Unix time).",
            ["token", "sink"],
        )
        for name, job in engine.jobs.items():
            token = job.token
            valid.add_metric([name], 1.0 if token is not None and token.is_valid(now) else 0.0)
            if token is not None:
                expiry.add_metric([name], token.expires_at.timestamp())
            _add_time(next_refresh, [name], job.next_run)
            _add_time(last_success, [name], job.last_success)
            for result in REFRESH_RESULTS:
                refreshes.add_metric([name, result], job.results[result])
            for slot in job.publisher.slots:
                for result in SINK_RESULTS:
                    publishes.add_metric([name, slot.name, result], slot.results[result])
                _add_time(sink_success, [name, slot.name], slot.last_success)
        yield from (expiry, next_refresh, last_success, valid, refreshes, publishes, sink_success)


def _gauge(name: str, documentation: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=labels)


def _add_time(family: GaugeMetricFamily, labels: list[str], moment: datetime | None) -> None:
    if moment is not None:
        family.add_metric(labels, moment.timestamp())
