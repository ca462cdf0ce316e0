"""Every value `/metrics` exposes, checked exactly, while a token is pending, healthy, failing,
and after it expired: the engine on virtual time, real HTTP to the fake Entra ID, real files.

Dashboards and alerts read these series: a wrong value is an outage nobody is told about."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import entra_identity
from tests.support import idp as faults
from tests.support.clock import FakeClock
from tests.support.harness import Harness, harness
from tests.support.idp import CLIENT_SECRET, FakeIdp
from tokend import __version__
from tokend.config import Config
from tokend.engine import Phase
from tokend.engine.engine import LeadershipView
from tokend.engine.once import refresh_once
from tokend.engine.query import Census, SinkView, TokenView
from tokend.metrics import Metrics
from tokend.oauth.grants.base import CredentialState

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _samples(metrics: Metrics) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
        if not sample.name.startswith("tokend_token_refresh_duration")
    }


HELP = {
    "tokend_build_info": ("gauge", "Always 1; the version label says which tokend is running."),
    "tokend_token_refresh_duration_seconds": (
        "histogram",
        "Time taken by token requests to identity providers, successful or not.",
    ),
    "tokend_token_expiry_timestamp_seconds": (
        "gauge",
        "When the currently held token expires (Unix time).",
    ),
    "tokend_token_next_refresh_timestamp_seconds": (
        "gauge",
        "When the next attempt is planned (Unix time).",
    ),
    "tokend_token_last_success_timestamp_seconds": (
        "gauge",
        "When a token was last acquired (Unix time).",
    ),
    "tokend_token_valid": ("gauge", "1 while a non-expired token is held, else 0."),
    "tokend_token_consecutive_failures": (
        "gauge",
        "Failed attempts since the last success (0 if healthy).",
    ),
    "tokend_token_refresh": ("counter", "Token requests by outcome."),
    "tokend_sink_publish": ("counter", "Attempts to publish a token to a sink, by outcome."),
    "tokend_sink_last_success_timestamp_seconds": (
        "gauge",
        "When a sink last accepted a token (Unix time).",
    ),
    "tokend_notifier_runs": (
        "counter",
        "Consumer notifications (on_publish) after a sink's write, by outcome.",
    ),
    "tokend_identity_certificate_expiry_timestamp_seconds": (
        "gauge",
        "When the certificate an identity signs its requests with expires (Unix time).",
    ),
    "tokend_endpoint_requests": (
        "counter",
        "Requests to the local token endpoint, by protocol and result.",
    ),
    "tokend_endpoint_request_duration_seconds": (
        "histogram",
        "Time the local token endpoint took to answer, by protocol (waits for a first "
        "token included).",
    ),
    "tokend_leader": (
        "gauge",
        "1 while this replica holds the leader election's lease, else 0.",
    ),
    "tokend_leader_transitions": ("counter", "Times this replica started or stopped leading."),
    "tokend_tokens": ("gauge", "Configured tokens in each state (as /status names it)."),
    "tokend_token_expiry_earliest_timestamp_seconds": (
        "gauge",
        "When the soonest-expiring valid token held expires (Unix time); absent if none.",
    ),
    "tokend_refreshes": ("counter", "Token requests of every token, by outcome."),
    "tokend_sink_publishes": (
        "counter",
        "Attempts to publish a token to a sink, every token and sink, by outcome.",
    ),
}
"""Every family's type and help text: dashboards and the operations guide quote them."""
LEADER_FAMILIES = ("tokend_leader", "tokend_leader_transitions")
"""Only with leader election."""
INSTANCE_SERIES = (
    "tokend_tokens",
    "tokend_token_expiry_earliest_timestamp_seconds",
    "tokend_refreshes_total",
    "tokend_sink_publishes_total",
)
"""Instance-wide series (whatever the number of tokens): tested apart from the per-token ones."""


def _per_token(samples: Samples) -> Samples:
    return {key: value for key, value in samples.items() if key[0] not in INSTANCE_SERIES}


def _families(metrics: Metrics) -> dict[str, tuple[str, str]]:
    return {
        family.name: (family.type, family.documentation)
        for family in text_string_to_metric_families(metrics.render().decode())
        if not family.name.endswith("_created")  # prometheus_client's own, per histogram
    }


def test_refresh_durations_fall_into_fixed_buckets() -> None:
    metrics = Metrics(FakeClock())
    for seconds in (0.03, 0.3, 0.7, 2, 3, 7, 20, 40):
        metrics.refresh_duration.observe(seconds)
    buckets = {
        sample.labels["le"]: sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
        if sample.name == "tokend_token_refresh_duration_seconds_bucket"
    }
    assert buckets == {
        "0.05": 1.0,
        "0.1": 1.0,
        "0.25": 1.0,
        "0.5": 2.0,
        "1.0": 3.0,
        "2.5": 4.0,
        "5.0": 5.0,
        "10.0": 6.0,
        "30.0": 7.0,
        "+Inf": 8.0,
    }
    assert _families(metrics) == {
        name: HELP[name]
        for name in (
            "tokend_build_info",
            "tokend_token_refresh_duration_seconds",
            "tokend_endpoint_requests",
            "tokend_endpoint_request_duration_seconds",
        )
    }


def _token(name: str, **labels: str) -> frozenset[tuple[str, str]]:
    return frozenset({"token": name, **labels}.items())


def test_metric_values_through_a_token_life(idp: FakeIdp, tmp_path: Path) -> None:
    config = Config.model_validate(
        {
            "identities": {"app": entra_identity(idp, CLIENT_SECRET)},
            "tokens": {
                "crm": {
                    "identity": "app",
                    "resource": "https://crm.example",
                    "sinks": [
                        {"type": "file", "path": str(tmp_path / "crm.token")},
                        {"type": "file", "path": str(tmp_path / "missing" / "crm.token")},
                    ],
                }
            },
            "defaults": {"startup_spread": 0},
        }
    )
    clock = FakeClock()
    crm = _token("crm")
    build = ("tokend_build_info", frozenset({("version", __version__)}))

    async def scenario() -> None:
        h = Harness(config, clock)
        metrics = Metrics(clock)
        try:
            assert _samples(metrics) == {build: 1.0}  # no engine watched yet
            metrics.watch(h.engine)
            await h.start()
            pending = _samples(metrics)
            assert pending[("tokend_token_valid", crm)] == 0.0
            assert ("tokend_token_expiry_timestamp_seconds", crm) not in pending
            assert ("tokend_token_last_success_timestamp_seconds", crm) not in pending

            await h.run_for(timedelta(0))
            job = h.job()
            token = job.token
            assert token is not None and job.next_run is not None
            sink_ok, sink_down = (slot.name for slot in job.publisher.slots)
            healthy = _samples(metrics)
            assert _families(metrics) == {
                name: value for name, value in HELP.items() if name not in LEADER_FAMILIES
            }
            everything = ("tokend_tokens", frozenset({("state", "sink_failing")}))
            assert healthy[everything] == 1.0  # one sink of one token failing
            assert healthy[("tokend_refreshes_total", frozenset({("result", "success")}))] == 1.0
            assert healthy[("tokend_sink_publishes_total", frozenset({("result", "error")}))] == 1
            earliest = ("tokend_token_expiry_earliest_timestamp_seconds", frozenset())
            assert healthy[earliest] == token.expires_at.timestamp()
            assert _per_token(healthy) == {
                build: 1.0,
                ("tokend_token_expiry_timestamp_seconds", crm): token.expires_at.timestamp(),
                ("tokend_token_next_refresh_timestamp_seconds", crm): job.next_run.timestamp(),
                ("tokend_token_last_success_timestamp_seconds", crm): clock.now().timestamp(),
                ("tokend_token_valid", crm): 1.0,
                ("tokend_token_consecutive_failures", crm): 0.0,
                ("tokend_token_refresh_total", _token("crm", result="success")): 1.0,
                ("tokend_token_refresh_total", _token("crm", result="transient_error")): 0.0,
                ("tokend_token_refresh_total", _token("crm", result="permanent_error")): 0.0,
                ("tokend_sink_publish_total", _token("crm", sink=sink_ok, result="success")): 1.0,
                ("tokend_sink_publish_total", _token("crm", sink=sink_ok, result="error")): 0.0,
                ("tokend_sink_publish_total", _token("crm", sink=sink_down, result="success")): 0.0,
                ("tokend_sink_publish_total", _token("crm", sink=sink_down, result="error")): 1.0,
                (
                    "tokend_sink_last_success_timestamp_seconds",
                    _token("crm", sink=sink_ok),
                ): clock.now().timestamp(),
            }

            # The secret is refused from now on: the token stays valid until it expires...
            idp.fail(*[faults.entra_error(401, "invalid_client", 7000215)] * 40)
            await h.run_for(token.expires_at - clock.now() - timedelta(seconds=2))
            failing = _samples(metrics)
            failures = job.failures
            assert failures >= 2
            assert failing[("tokend_token_valid", crm)] == 1.0
            assert failing[("tokend_token_consecutive_failures", crm)] == failures
            assert (
                failing[("tokend_token_refresh_total", _token("crm", result="permanent_error"))]
                == failures
            )

            # ...and not a moment longer, though it is still held (and still in the file).
            await h.run_for(timedelta(seconds=2))
            expired = _samples(metrics)
            assert job.token is token
            assert expired[("tokend_token_valid", crm)] == 0.0
            assert (
                expired[("tokend_token_expiry_timestamp_seconds", crm)]
                == token.expires_at.timestamp()
            )
            assert job.failures > failures  # the last-chance try, and the one at expiry
            assert expired[("tokend_token_consecutive_failures", crm)] == job.failures
        finally:
            await h.stop()

    asyncio.run(scenario())


class ViewsOnly:
    """An engine as the collector sees it: `query(now)`, `view(name, now)`, `census(now, late)`
    (here: from the views), `leadership()` and nothing else."""

    def __init__(self, *views: TokenView, leadership: LeadershipView | None = None) -> None:
        self.views = views
        self._leadership = leadership

    def query(self, now: datetime) -> Iterator[TokenView]:
        return iter(self.views)

    def view(self, name: str, now: datetime) -> TokenView | None:
        return next((view for view in self.views if view.name == name), None)

    def census(self, now: datetime, late: datetime) -> Census:
        census = Census(
            refreshes=dict.fromkeys(("success", "transient_error", "permanent_error"), 0),
            publishes=dict.fromkeys(("success", "error"), 0),
        )
        for view in self.views:
            if view.dormant:
                census.dormant += 1
                continue
            census.states[view.phase] += 1
            if view.standby:
                continue
            census.attention.append(view.name)
            credential = view.credential
            if credential and credential.expires_at:
                census.credentials.setdefault(credential.identity, credential.expires_at)
        return census

    def leadership(self) -> LeadershipView | None:
        return self._leadership


def _view(
    name: str, identity: str | None, notified: dict[str, int] | None, **flags: bool
) -> TokenView:
    sink = SinkView(
        name="file",
        held_expires_at=None,
        holds_valid_token=False,
        required_for_ready=True,
        last_success=None,
        failures=0,
        last_error=None,
        published=0,
        errors=0,
        notifications=notified,
    )
    credential = None
    if identity is not None:
        credential = CredentialState(identity, datetime(2027, 1, 1, tzinfo=UTC))
    return TokenView(
        name=name,
        phase=Phase.PENDING,
        token=None,
        valid=False,
        published=False,
        ready=False,
        next_refresh=None,
        last_success=None,
        failures=0,
        last_error=None,
        refreshes={"success": 0, "transient_error": 0, "permanent_error": 0},
        sinks=(sink,),
        credential=credential,
        **flags,
    )


def test_notifications_and_certificate_expiry_once_per_identity() -> None:
    metrics = Metrics(FakeClock())
    views = ViewsOnly(
        _view("crm", "app", {"success": 3, "error": 1}),
        _view("erp", "app", None),  # same identity: its certificate is counted once
        _view("api", "other", None),
        _view("web", None, {}),
    )
    metrics.watch(views)  # type: ignore[arg-type]
    samples = _samples(metrics)
    expiry = datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    certificates = {
        labels: value
        for (name, labels), value in samples.items()
        if name == "tokend_identity_certificate_expiry_timestamp_seconds"
    }
    assert certificates == {
        frozenset({("identity", "app")}): expiry,
        frozenset({("identity", "other")}): expiry,
    }
    exposition = metrics.render().decode()
    assert exposition.count("tokend_identity_certificate_expiry_timestamp_seconds{") == 2
    notified = {
        labels: value
        for (name, labels), value in samples.items()
        if name == "tokend_notifier_runs_total"
    }
    assert notified == {
        _token("crm", sink="file", result="success"): 3.0,
        _token("crm", sink="file", result="error"): 1.0,
    }


def test_dormant_and_standby_tokens_report_nothing_and_the_leader_says_so() -> None:
    """An on-demand token nobody asked for and a follower's token have no series (they would
    alert as never refreshed); with leader election, whether this replica leads is exposed."""
    metrics = Metrics(FakeClock())
    views = ViewsOnly(
        _view("idle", "idle", {"success": 1}, dormant=True),
        _view("crm", "app", {"success": 1}),  # (after a skipped one: the rest still count)
        _view("theirs", "theirs", {"success": 1}, standby=True),
        leadership=LeadershipView(leading=False, transitions=3),
    )
    metrics.watch(views)  # type: ignore[arg-type]
    samples = _samples(metrics)
    tokens = {dict(labels).get("token") for _, labels in samples} - {None}
    identities = {dict(labels).get("identity") for _, labels in samples} - {None}
    assert (tokens, identities) == ({"crm"}, {"app"})
    assert samples[("tokend_leader", frozenset())] == 0.0
    assert samples[("tokend_leader_transitions_total", frozenset())] == 3.0
    assert {name: _families(metrics)[name] for name in LEADER_FAMILIES} == {
        name: HELP[name] for name in LEADER_FAMILIES
    }
    metrics.watch(ViewsOnly(leadership=LeadershipView(leading=True, transitions=4)))  # type: ignore[arg-type]
    assert _samples(metrics)[("tokend_leader", frozenset())] == 1.0


class FakeClients:
    """Shared clients in use, as `Resources.in_use()` lists them."""

    def __init__(self, *pairs: tuple[Any, Any]) -> None:
        self.pairs = list(pairs)

    def in_use(self) -> list[tuple[Any, Any]]:
        return self.pairs


def test_each_kind_of_shared_client_reports_its_own_metrics_for_all_its_clients() -> None:
    def health(clients: list[str]) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("tokend_store_up", "Store reachable.", labels=["client"])
        for client in clients:
            family.add_metric([client], 1.0)
        yield family

    store = SimpleNamespace(section="store", metrics=health)
    silent = SimpleNamespace(section="silent", metrics=None)
    metrics = Metrics(FakeClock())
    metrics.watch(ViewsOnly(), FakeClients((store, "a"), (silent, "x"), (store, "b")))  # type: ignore[arg-type]
    samples = _samples(metrics)
    assert {key: value for key, value in samples.items() if key[0] == "tokend_store_up"} == {
        ("tokend_store_up", frozenset({("client", "a")})): 1.0,
        ("tokend_store_up", frozenset({("client", "b")})): 1.0,
    }
    assert _families(metrics)["tokend_store_up"] == ("gauge", "Store reachable.")


def test_the_query_view_of_a_token_with_a_failing_sink(idp: FakeIdp, tmp_path: Path) -> None:
    """What /status, /metrics and readiness read: every field of the token's and each sink's
    view, while one sink fails and the token is valid, then after the token expired."""
    config = Config.model_validate(
        {
            "identities": {"app": entra_identity(idp, CLIENT_SECRET)},
            "tokens": {
                "crm": {
                    "identity": "app",
                    "resource": "https://crm.example",
                    "sinks": [
                        {"type": "file", "path": str(tmp_path / "crm.token")},
                        {
                            "type": "file",
                            "path": str(tmp_path / "missing" / "crm.token"),
                            "required_for_ready": False,
                        },
                    ],
                }
            },
            "defaults": {"startup_spread": 0},
        }
    )

    async def scenario() -> None:
        async with harness(config) as h:
            await h.start()
            await h.run_for(timedelta(0))
            now = h.clock.now()
            job = h.job()
            view = h.engine.view("crm", now)
            assert view is not None and job.token is not None
            assert (view.phase, view.token, view.valid, view.published, view.ready) == (
                job.phase(now),
                job.token,
                True,
                False,  # not every sink holds it...
                True,  # ...but every sink readiness waits for does
            )
            assert (view.last_error, view.credential, view.failures) == (None, None, 0)
            ok, down = view.sinks
            assert (ok.held_expires_at, ok.holds_valid_token, ok.required_for_ready) == (
                job.token.expires_at,
                True,
                True,
            )
            assert (ok.failures, ok.last_error, ok.published, ok.errors) == (0, None, 1, 0)
            assert ok.notifications is None
            assert (down.held_expires_at, down.holds_valid_token, down.failures) == (None, False, 1)
            assert down.required_for_ready is False
            assert down.last_error is not None and "does not exist" in str(down.last_error)
            assert (down.published, down.errors) == (0, 1)
            later = job.token.expires_at + timedelta(seconds=1)
            expired = h.engine.view("crm", later)
            assert expired is not None
            assert (expired.valid, expired.published, expired.ready) == (False, False, False)
            assert expired.sinks[0].holds_valid_token is False
            assert expired.sinks[0].held_expires_at == job.token.expires_at

    asyncio.run(scenario())


def test_the_query_view_of_a_failing_token_and_of_one_in_flight(
    idp: FakeIdp, tmp_path: Path
) -> None:
    """The error and counts of a failing token, `refreshing` while a request is in flight, a
    required sink that fails keeps a valid token from being ready, and a sink's notifier
    results as its observer counts them."""
    config = Config.model_validate(
        {
            "identities": {"app": entra_identity(idp, CLIENT_SECRET)},
            "tokens": {
                "crm": {
                    "identity": "app",
                    "resource": "https://crm.example",
                    "sinks": [{"type": "file", "path": str(tmp_path / "missing" / "crm.token")}],
                }
            },
            "defaults": {"startup_spread": 0},
        }
    )

    async def scenario() -> None:
        async with harness(config) as h:
            await h.start()
            idp.fail(faults.entra_error(401, "invalid_client", 7000215))
            await h.run_for(timedelta(0))
            job = h.job()
            view = h.engine.view("crm", h.clock.now())
            assert view is not None and job.last_error is not None
            assert (view.last_error, view.failures, view.refreshing) == (job.last_error, 1, False)
            assert view.refreshes == {"success": 0, "transient_error": 0, "permanent_error": 1}
            request = asyncio.get_running_loop().create_task(refresh_once(job))
            await asyncio.sleep(0)
            in_flight = h.engine.view("crm", h.clock.now())
            assert (
                in_flight is not None and in_flight.refreshing and in_flight.phase == "refreshing"
            )
            await request
            view = h.engine.view("crm", h.clock.now())
            assert view is not None
            assert (view.valid, view.ready, view.refreshing) == (True, False, False)  # sink down
            slot = job.publisher.slots[0]
            slot.observer = SimpleNamespace(results={"success": 2, "error": 1})  # type: ignore[assignment]
            view = h.engine.view("crm", h.clock.now())
            assert view is not None and view.sinks[0].notifications == {"success": 2, "error": 1}
            slot.observer = SimpleNamespace()  # type: ignore[assignment]
            view = h.engine.view("crm", h.clock.now())
            assert view is not None and view.sinks[0].notifications == {}
            slot.observer = None

    asyncio.run(scenario())


def test_the_local_endpoint_requests_by_protocol_and_result_with_fixed_buckets() -> None:
    metrics = Metrics(FakeClock())
    metrics.endpoint_requests.labels(protocol="imds", result="success").inc()
    for seconds in (0.0004, 0.3, 0.6, 3, 10.5):
        metrics.endpoint_duration.labels(protocol="imds").observe(seconds)
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
        if sample.name.startswith("tokend_endpoint")
    }
    assert (
        samples[
            (
                "tokend_endpoint_requests_total",
                frozenset({("protocol", "imds"), ("result", "success")}),
            )
        ]
        == 1.0
    )
    buckets = {
        dict(labels)["le"]: value
        for (name, labels), value in samples.items()
        if name == "tokend_endpoint_request_duration_seconds_bucket"
        and dict(labels)["protocol"] == "imds"
    }
    assert buckets == {
        "0.0005": 1.0,
        "0.001": 1.0,
        "0.0025": 1.0,
        "0.005": 1.0,
        "0.01": 1.0,
        "0.025": 1.0,
        "0.1": 1.0,
        "0.5": 2.0,
        "2.5": 3.0,
        "10.0": 4.0,
        "+Inf": 5.0,
    }
