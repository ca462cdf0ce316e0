"""Every Prometheus metric tokend exposes, defined in one place.

Token and sink state is read from the engine at scrape time by one collector (as cert-manager
does), so nothing is updated from all over the code and 10,000 tokens cost no extra objects.
Only the refresh-duration histogram records events as they happen; it has no per-token label.
Shared clients (the Vault session) contribute their own families through their resource kind
(`ResourceKind.metrics`), also read at scrape time; this module names none of them.
Metric names are an interface: dashboards and alerts depend on them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tokend import __version__
from tokend.clock import SYSTEM_CLOCK, Clock
from tokend.engine import Engine, TokenView
from tokend.engine.query import OVERDUE, Census
from tokend.resources import ResourceKind, Resources
from tokend.status import ON_DEMAND

Scope = Literal["all", "problems"]
"""Which tokens have their own series (`metrics.per_token`)."""

REFRESH_RESULTS = ("success", "transient_error", "permanent_error")
ENDPOINT_PROTOCOLS = ("app_service", "imds", "requesttoken", "other")
ENDPOINT_RESULTS = (
    "success",  # a token was served
    "unauthorized",  # missing or wrong header secret, password
    "bad_request",  # malformed, IMDS without Metadata: true, proxied (X-Forwarded-For)
    "not_served",  # no configured token for that resource and identity
    "unavailable",  # no valid token yet (503, Retry-After)
    "rate_limited",  # too many wrong passwords from one client (429)
    "not_found",  # no such path or method
)


class Metrics:
    def __init__(self, clock: Clock = SYSTEM_CLOCK, scope: Scope = "all") -> None:
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
        self.endpoint_requests = Counter(
            "tokend_endpoint_requests",
            "Requests to the local token endpoint, by protocol and result.",
            ["protocol", "result"],
            registry=self.registry,
        )
        self.endpoint_duration = Histogram(
            "tokend_endpoint_request_duration_seconds",
            "Time the local token endpoint took to answer, by protocol (waits for a first "
            "token included).",
            ["protocol"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5, 10),
            registry=self.registry,
        )
        self._collector = EngineCollector(clock, scope)
        self.registry.register(self._collector)

    def watch(self, engine: Engine, resources: Resources | None = None) -> None:
        """Read token and sink metrics from `engine`, and those of the shared clients in use
        (Vault's health...) from `resources`, at each scrape."""
        self._collector.engine = engine
        if resources is not None:
            self.registry.register(ResourcesCollector(resources))

    def configure(self, scope: Scope) -> None:
        """Which tokens' own series to export from the next scrape on (`metrics.per_token`)."""
        self._collector.scope = scope

    def render(self) -> bytes:
        return generate_latest(self.registry)


class EngineCollector(Collector):
    """Token and sink metrics, read from the engine's current state at each scrape.

    Instance-wide aggregates always; per-token series for every token (`per_token: all`) or
    only for those that need attention (`problems`: see `needs_attention`)."""

    def __init__(self, clock: Clock, scope: Scope = "all") -> None:
        self.engine: Engine | None = None
        self.scope: Scope = scope
        self._clock = clock

    def describe(self) -> Iterator[Metric]:
        return iter(())  # collected lazily; names are registered on first scrape

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        if engine is None:
            return
        now = self._clock.now()
        census = engine.census(now, late=now - OVERDUE)
        tokens = TokenFamilies()
        if self.scope == "all":
            views: Iterable[TokenView | None] = engine.query(now)
        else:  # a view for each token that needs attention only: 100,000 views take seconds
            views = (engine.view(name, now) for name in census.attention)
        for view in views:
            if view is not None and not view.dormant and not view.standby:
                tokens.add(view)  # not dormant (nobody asked) nor the leader's: nothing to say
        yield from tokens.families()
        yield from _totals(census)
        yield from _leadership(engine)


class TokenFamilies:
    """The per-token (and per-token-and-sink) series of one scrape."""

    def __init__(self) -> None:
        self.gauges = {
            key: GaugeMetricFamily(f"tokend_token_{key}", text, labels=["token"])
            for key, text in (
                ("expiry_timestamp_seconds", "When the currently held token expires (Unix time)."),
                ("next_refresh_timestamp_seconds", "When the next attempt is planned (Unix time)."),
                ("last_success_timestamp_seconds", "When a token was last acquired (Unix time)."),
                ("valid", "1 while a non-expired token is held, else 0."),
                ("consecutive_failures", "Failed attempts since the last success (0 if healthy)."),
            )
        }
        self.refreshes = CounterMetricFamily(
            "tokend_token_refresh", "Token requests by outcome.", labels=["token", "result"]
        )
        self.publishes = CounterMetricFamily(
            "tokend_sink_publish",
            "Attempts to publish a token to a sink, by outcome.",
            labels=["token", "sink", "result"],
        )
        self.notifier_runs = CounterMetricFamily(
            "tokend_notifier_runs",
            "Consumer notifications (on_publish) after a sink's write, by outcome.",
            labels=["token", "sink", "result"],
        )
        self.sink_success = GaugeMetricFamily(
            "tokend_sink_last_success_timestamp_seconds",
            "When a sink last accepted a token (Unix time).",
            labels=["token", "sink"],
        )

    def add(self, view: TokenView) -> None:
        name = view.name
        _add_time(self.gauges["expiry_timestamp_seconds"], [name], view.expires_at)
        _add_time(self.gauges["next_refresh_timestamp_seconds"], [name], view.next_refresh)
        _add_time(self.gauges["last_success_timestamp_seconds"], [name], view.last_success)
        self.gauges["valid"].add_metric([name], 1.0 if view.valid else 0.0)
        self.gauges["consecutive_failures"].add_metric([name], view.failures)
        for result in REFRESH_RESULTS:
            self.refreshes.add_metric([name, result], view.refreshes[result])
        for sink in view.sinks:
            if sink.standby:
                continue  # the leader's to write and report
            self.publishes.add_metric([name, sink.name, "success"], sink.published)
            self.publishes.add_metric([name, sink.name, "error"], sink.errors)
            _add_time(self.sink_success, [name, sink.name], sink.last_success)
            for result, count in (sink.notifications or {}).items():
                self.notifier_runs.add_metric([name, sink.name, result], count)

    def families(self) -> Iterator[Metric]:
        yield from self.gauges.values()
        yield from (self.refreshes, self.publishes, self.sink_success, self.notifier_runs)


def _totals(census: Census) -> Iterator[Metric]:
    """Instance-wide series, a handful whatever the number of tokens."""
    states = GaugeMetricFamily(
        "tokend_tokens",
        "Configured tokens in each state (as /status names it).",
        labels=["state"],
    )
    for phase, count in census.states.items():
        states.add_metric([phase.value], count)
    states.add_metric([ON_DEMAND], census.dormant)
    earliest = GaugeMetricFamily(
        "tokend_token_expiry_earliest_timestamp_seconds",
        "When the soonest-expiring valid token held expires (Unix time); absent if none.",
    )
    _add_time(earliest, [], census.earliest_expiry)
    refreshes = CounterMetricFamily(
        "tokend_refreshes", "Token requests of every token, by outcome.", labels=["result"]
    )
    for result, count in census.refreshes.items():
        refreshes.add_metric([result], count)
    publishes = CounterMetricFamily(
        "tokend_sink_publishes",
        "Attempts to publish a token to a sink, every token and sink, by outcome.",
        labels=["result"],
    )
    for result, count in census.publishes.items():
        publishes.add_metric([result], count)
    certificates = GaugeMetricFamily(
        "tokend_identity_certificate_expiry_timestamp_seconds",
        "When the certificate an identity signs its requests with expires (Unix time).",
        labels=["identity"],
    )
    for identity, expires_at in census.credentials.items():
        _add_time(certificates, [identity], expires_at)
    yield from (states, earliest, refreshes, publishes, certificates)


def _leadership(engine: Engine) -> Iterator[Metric]:
    """With leader election: whether this replica leads, and how often that changed."""
    view = engine.leadership()
    if view is None:
        return
    leader = GaugeMetricFamily(
        "tokend_leader", "1 while this replica holds the leader election's lease, else 0."
    )
    leader.add_metric([], 1.0 if view.leading else 0.0)
    transitions = CounterMetricFamily(
        "tokend_leader_transitions", "Times this replica started or stopped leading."
    )
    transitions.add_metric([], view.transitions)
    yield from (leader, transitions)


class ResourcesCollector(Collector):
    """Metric families of the shared clients in use, as each resource kind defines them."""

    def __init__(self, resources: Resources) -> None:
        self._resources = resources

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        clients: dict[str, tuple[ResourceKind[Any, Any], list[Any]]] = {}
        for kind, client in self._resources.in_use():
            clients.setdefault(kind.section, (kind, []))[1].append(client)
        for kind, in_use in clients.values():
            if kind.metrics is not None:
                yield from kind.metrics(in_use)


def _add_time(family: GaugeMetricFamily, labels: list[str], moment: datetime | None) -> None:
    if moment is not None:
        family.add_metric(labels, moment.timestamp())
