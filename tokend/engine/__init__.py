"""Deciding when: refresh policy, backoff, scheduling, and the jobs that tie them together."""

from tokend.engine.engine import Engine, http_settings, run_limit, token_request
from tokend.engine.job import Phase, TokenJob
from tokend.engine.policy import Backoff, RefreshPolicy, retry_at, startup_at
from tokend.engine.publisher import Publisher, SinkSlot
from tokend.engine.scheduler import ApsScheduler, Runner, Scheduler

__all__ = [
    "ApsScheduler",
    "Backoff",
    "Engine",
    "Phase",
    "Publisher",
    "RefreshPolicy",
    "Runner",
    "Scheduler",
    "SinkSlot",
    "TokenJob",
    "http_settings",
    "retry_at",
    "run_limit",
    "startup_at",
    "token_request",
]
