"""What the composition root hands the engine: how to build each token's job, and the engine's
settings. The engine compares nothing itself: a `Blueprint` says whether a job is unchanged."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from tokend.engine.policy import DEFAULT_STARTUP_SPREAD
from tokend.transport import DEFAULT_MAX_CONCURRENT_REQUESTS

if TYPE_CHECKING:
    from tokend.engine.job import TokenJob


@dataclass(frozen=True)
class Blueprint:
    """How to build one token's job. `unchanged`: everything the job is built from is as it was
    for the job running under this name, so a reload keeps that job (its state, token and
    schedule). The composition root knows both configs; the engine keeps nothing to compare."""

    build: Callable[[], TokenJob]
    unchanged: bool = False
    on_demand: bool = False
    """Not acquired at start: `demand()` (the local endpoint's first request) starts it."""
    leader_only: bool = False
    """Every sink writes to a store shared between replicas: with leader election, only the
    leader runs it (see `Engine.lead_with`). A token with local sinks too runs everywhere,
    its shared sinks written by the leader only (`Publisher.follow`)."""


Blueprints = Iterable[tuple[str, "Blueprint"]]
"""Each token's name and blueprint, taken one at a time (see `Assembly.blueprints`)."""


@dataclass(frozen=True)
class EngineSettings:
    startup_spread: timedelta = DEFAULT_STARTUP_SPREAD
    """First acquisitions at start are spread over this long, when there are many..."""
    spread_above: int = DEFAULT_MAX_CONCURRENT_REQUESTS
    """...more than this (the cap on concurrent requests): a handful start at once, so readiness
    is not delayed for nothing."""
    run_limit: int = 32
    """How many refreshes `refresh_all` runs at once."""
