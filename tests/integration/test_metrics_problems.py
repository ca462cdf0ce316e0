"""`metrics.per_token` in-process (test_metrics_scope.py runs a real `tokend run` for the same,
which mutation testing cannot see): by default every token has its own series; with `problems`
only a token that needs attention (no token, or a sink failing), a token due within the minute not yet counted as late; the
scope switched at a reload (`configure`). And a token's sink another replica writes leaves the
token's other sinks reported."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import entra_identity
from tests.integration.test_metrics import ViewsOnly, _view
from tests.integration.test_metrics_scope import BROKEN, _refuse_broken
from tests.support.clock import FakeClock
from tests.support.harness import harness
from tests.support.idp import CLIENT_SECRET, FakeIdp, running_idp
from tokend.config import validate_config
from tokend.metrics import Metrics


@pytest.fixture(scope="module")
def idp() -> Iterator[FakeIdp]:
    with running_idp() as idp:
        idp.policy = _refuse_broken
        yield idp


def _tokens(metrics: Metrics, family: str = "tokend_token_valid") -> set[str]:
    """The tokens with a series of `family`."""
    return {
        sample.labels["token"]
        for parsed in text_string_to_metric_families(metrics.render().decode())
        for sample in parsed.samples
        if sample.name == family
    }


def test_per_token_series_for_all_or_only_for_problems(idp: FakeIdp, tmp_path: Path) -> None:
    config = validate_config(
        {
            "identities": {"app": entra_identity(idp, CLIENT_SECRET)},
            "tokens": {
                name: {
                    "identity": "app",
                    "resource": resource,
                    "sinks": [{"type": "file", "path": str(tmp_path / f"{name}.token")}],
                }
                for name, resource in (
                    ("ok", "https://ok.example"),
                    ("broken", BROKEN),
                    ("stuck", "https://stuck.example"),  # its file is a directory: cannot write
                )
            },
            "defaults": {"startup_spread": 0},
        }
    )

    (tmp_path / "stuck.token").mkdir()

    async def scenario() -> None:
        async with harness(config) as h:
            await h.start()
            await h.run_for(timedelta(seconds=1))
            everything, problems = Metrics(h.clock), Metrics(h.clock, scope="problems")
            everything.watch(h.engine)
            problems.watch(h.engine)
            assert _tokens(everything) == {"ok", "broken", "stuck"}
            assert _tokens(problems) == {"broken", "stuck"}
            next_run = h.job("ok").next_run
            assert next_run is not None
            h.clock.set(next_run - timedelta(seconds=30))  # due soon, not late
            assert _tokens(problems) == {"broken", "stuck"}
            problems.configure("all")
            assert _tokens(problems) == {"ok", "broken", "stuck"}

    asyncio.run(scenario())


def test_a_sink_the_leader_writes_leaves_the_tokens_other_sinks_reported() -> None:
    view = _view("crm", "app", None)
    (local,) = view.sinks
    shared = dataclasses.replace(local, name="vault", standby=True)
    view = dataclasses.replace(view, sinks=(shared, local))
    metrics = Metrics(FakeClock())
    metrics.watch(ViewsOnly(view))  # type: ignore[arg-type]
    sinks = {
        sample.labels.get("sink")
        for parsed in text_string_to_metric_families(metrics.render().decode())
        for sample in parsed.samples
        if "sink" in sample.labels
    }
    assert sinks == {"file"}
