"""What `/status` and `tokend status` report: per token its state, expiry, next refresh,
failures and last error, and per sink its last success and last error. No secret, no token."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tokend.engine import Engine, TokenJob
from tokend.engine.publisher import SinkSlot


def engine_status(engine: Engine, now: datetime) -> dict[str, Any]:
    return {
        "time": _iso(now),
        "ready": engine.is_ready(now),
        "tokens": {name: token_status(job, now) for name, job in engine.jobs.items()},
    }


def token_status(job: TokenJob, now: datetime) -> dict[str, Any]:
    token = job.token
    return {
        "state": job.phase(now).value,
        "expires_at": _iso(token.expires_at) if token else None,
        "expires_in_seconds": _seconds_until(token.expires_at, now) if token else None,
        "next_refresh": _iso(job.next_run),
        "last_success": _iso(job.last_success),
        "consecutive_failures": job.failures,
        "last_error": str(job.last_error) if job.last_error else None,
        "sinks": {slot.name: sink_status(slot) for slot in job.publisher.slots},
    }


def sink_status(slot: SinkSlot) -> dict[str, Any]:
    return {
        "holds_expires_at": _iso(slot.held.expires_at) if slot.held else None,
        "last_success": _iso(slot.last_success),
        "consecutive_failures": slot.failures,
        "last_error": slot.last_error,
    }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def _seconds_until(moment: datetime, now: datetime) -> int:
    return max(int((moment - now).total_seconds()), 0)
