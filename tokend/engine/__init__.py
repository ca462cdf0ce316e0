"""Deciding when: refresh policy, scheduling, the jobs that tie them together, and the read-only
views readers get of them. Names are imported on first use (`tokend.lazy`)."""

from typing import TYPE_CHECKING

from tokend.lazy import exports

if TYPE_CHECKING:
    from tokend.engine.aps import ApsScheduler
    from tokend.engine.blueprint import Blueprint, EngineSettings
    from tokend.engine.engine import Engine, ReloadSummary
    from tokend.engine.job import JobKit, TokenJob
    from tokend.engine.outcome import Phase
    from tokend.engine.policy import RefreshPolicy, retry_at, startup_at
    from tokend.engine.publisher import Deliveries, Publisher
    from tokend.engine.query import SinkView, TokenView
    from tokend.engine.scheduler import Runner
    from tokend.engine.slot import SinkSlot, SlotKit

__all__ = [
    "ApsScheduler",
    "Blueprint",
    "Deliveries",
    "Engine",
    "EngineSettings",
    "JobKit",
    "Phase",
    "Publisher",
    "RefreshPolicy",
    "ReloadSummary",
    "Runner",
    "SinkSlot",
    "SinkView",
    "SlotKit",
    "TokenJob",
    "TokenView",
    "retry_at",
    "startup_at",
]

_MODULES = {
    "tokend.engine.aps": ("ApsScheduler",),
    "tokend.engine.blueprint": ("Blueprint", "EngineSettings"),
    "tokend.engine.engine": ("Engine", "ReloadSummary"),
    "tokend.engine.job": ("JobKit", "TokenJob"),
    "tokend.engine.outcome": ("Phase",),
    "tokend.engine.policy": ("RefreshPolicy", "retry_at", "startup_at"),
    "tokend.engine.publisher": ("Deliveries", "Publisher"),
    "tokend.engine.slot": ("SinkSlot", "SlotKit"),
    "tokend.engine.query": ("SinkView", "TokenView"),
    "tokend.engine.scheduler": ("Runner",),
}
__getattr__ = exports(__name__, _MODULES)
