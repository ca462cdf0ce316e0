"""Deciding when: refresh policy, scheduling, the jobs that tie them together, and the read-only
views readers get of them."""

from tokend.engine.engine import Blueprint, Engine, EngineSettings, ReloadSummary
from tokend.engine.job import Phase, TokenJob
from tokend.engine.policy import RefreshPolicy, retry_at, startup_at
from tokend.engine.publisher import Deliveries, Publisher, SinkSlot
from tokend.engine.query import SinkView, TokenView
from tokend.engine.scheduler import ApsScheduler, Runner

__all__ = [
    "ApsScheduler",
    "Blueprint",
    "Deliveries",
    "Engine",
    "EngineSettings",
    "Phase",
    "Publisher",
    "RefreshPolicy",
    "ReloadSummary",
    "Runner",
    "SinkSlot",
    "SinkView",
    "TokenJob",
    "TokenView",
    "retry_at",
    "startup_at",
]
