"""Deciding when: refresh policy, backoff, scheduling, and the jobs that tie them together."""

from tokend.engine.engine import Engine, http_settings, token_request
from tokend.engine.job import Phase, TokenJob
from tokend.engine.policy import Backoff, RefreshPolicy, retry_at, startup_at
from tokend.engine.publisher import Publisher, SinkSlot
from tokend.engine.scheduler import ApsScheduler, Scheduler

__all__ = [
    "ApsScheduler",
    "Backoff",
    "Engine",
    "Phase",
    "Publisher",
    "RefreshPolicy",
    "Scheduler",
    "SinkSlot",
    "TokenJob",
    "http_settings",
    "retry_at",
    "startup_at",
    "token_request",
]
