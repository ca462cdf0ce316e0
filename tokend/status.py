"""What `/status` and `tokend status` report: per token its state, expiry, next refresh,
failures and last error, and per sink its last success and last error. No secret, no token."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tokend.clock import format_span
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
        "last_error_code": job.last_error.code if job.last_error else None,
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


def render_table(status: dict[str, Any]) -> str:
    """`tokend status` output: one line per token, one indented line per sink."""
    now = datetime.fromisoformat(status["time"])
    rows = [("TOKEN", "STATE", "EXPIRES IN", "NEXT TRY", "FAILURES", "LAST ERROR")]
    sink_lines: dict[str, list[str]] = {}
    for name, token in status["tokens"].items():
        rows.append(
            (
                name,
                token["state"],
                _until(token["expires_at"], now, past="expired"),
                _until(token["next_refresh"], now, past="now"),
                str(token["consecutive_failures"]),
                token["last_error"] or "-",
            )
        )
        sink_lines[name] = [_sink_line(sink, info, now) for sink, info in token["sinks"].items()]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for row in rows:
        lines.append(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
            + "  "
            + row[5]
        )
        lines += [f"    {line}" for line in sink_lines.get(row[0], [])]
    lines.append("ready" if status["ready"] else "NOT READY: some token is not valid in every sink")
    return "\n".join(line.rstrip() for line in lines)


def _sink_line(name: str, sink: dict[str, Any], now: datetime) -> str:
    when = (
        f"last success {_ago(sink['last_success'], now)}"
        if sink["last_success"]
        else "never written"
    )
    if sink["last_error"]:
        return (
            f"sink {name}: failing ({sink['consecutive_failures']}x, {when}): {sink['last_error']}"
        )
    return f"sink {name}: ok, {when}"


def _until(moment: str | None, now: datetime, past: str) -> str:
    if moment is None:
        return "-"
    delta = datetime.fromisoformat(moment) - now
    return format_span(delta) if delta.total_seconds() >= 1 else past


def _ago(moment: str, now: datetime) -> str:
    return format_span(now - datetime.fromisoformat(moment)) + " ago"
