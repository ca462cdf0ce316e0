"""How refresh and publish attempts show outside a job: its phase (as `/status` and metrics name
it), an unexpected failure turned into an error, and the log line each outcome writes. (Attempts
are counted by the job and the slot themselves, in ints of their own.)"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from datetime import datetime
from enum import StrEnum
from typing import TypeVar

from tokend.clock import format_span
from tokend.errors import TokendError
from tokend.token import Token

log = logging.getLogger("tokend.refresh")

T = TypeVar("T")


class Phase(StrEnum):
    PENDING = "pending"  # never acquired yet, no failure yet
    FRESH = "fresh"  # valid token held and in every sink, last attempt succeeded
    PUBLISHING = "publishing"  # valid token held, not yet in every sink, no sink has failed
    SINK_FAILING = "sink_failing"  # valid token held, a sink failed to take it (retrying)
    REFRESHING = "refreshing"  # a request is in flight
    RETRYING = "retrying"  # last attempt failed transiently; backing off
    FAILING = "failing"  # last attempt failed permanently; an operator must act
    EXPIRED = "expired"  # the last good token has expired and no new one was obtained
    STANDBY = "standby"  # leader election: the leader runs this token, this replica does not


async def settle(
    action: Awaitable[T], logger: logging.Logger, failing: str, token_name: str
) -> T | TokendError:
    """`action`'s result, or its failure as a value. Anything unexpected (a bug) is logged to
    `logger` with its traceback as `failing` and becomes a transient internal error, so that it
    is retried and shows in status rather than ending a job's loop."""
    try:
        return await action
    except TokendError as exc:
        return exc
    except Exception as exc:
        logger.exception(failing, extra={"token": token_name})
        return _unexpected(exc)


def _unexpected(exc: Exception) -> TokendError:
    return TokendError(f"unexpected {type(exc).__name__}", code="internal", transient=True)


def same_failure(error: TokendError, previous: TokendError | None) -> bool:
    """The same failure again (said once at WARNING; repeats at DEBUG, and in status and
    metrics)."""
    return previous is not None and str(error) == str(previous)


def log_success(
    name: str, token: Token, now: datetime, *, next_run: datetime | None, took: float
) -> None:
    """`next_run`: None when there is no next run to speak of (`tokend once`)."""
    plan = f", next refresh in {format_span(next_run - now)}" if next_run else ""
    log.info(
        "refreshed: expires %s (in %s)%s, took %.2fs",
        clock_time(token.expires_at),
        format_span(token.expires_at - now),
        plan,
        took,
        extra={"token": name},
    )


def log_failure(
    name: str,
    error: TokendError,
    now: datetime,
    *,
    attempt: int,
    repeated: bool,
    next_run: datetime | None,
    holding: Token | None,
) -> None:
    """Each new kind of failure is logged; the same failure again goes to DEBUG (status and
    metrics show it is ongoing), so thousands of tokens in an outage don't flood the log."""
    permanent = not error.transient
    level = logging.DEBUG if repeated else logging.ERROR if permanent else logging.WARNING
    kind = "needs operator action" if permanent else "transient"
    plan = f"; next try in {format_span(next_run - now)}" if next_run else ""
    held = (
        f"current token valid {format_span(holding.expires_at - now)} more"
        if holding
        else "no valid token"
    )
    log.log(
        level,
        "refresh failed (%s, attempt %d): %s%s; %s",
        kind,
        attempt,
        error,
        plan,
        held,
        extra={"token": name},
    )


def log_resumed(name: str, token: Token) -> None:
    log.info(
        "resumed stored token: expires %s", clock_time(token.expires_at), extra={"token": name}
    )


def log_recovered(name: str, failures: int) -> None:
    log.info("recovered after %d failed attempts", failures, extra={"token": name})


def log_expired(name: str, token: Token, last_error: TokendError | None) -> None:
    log.error(
        "token expired at %s with no replacement (last error: %s); consumers now hold an "
        "expired token unless their sink withdraws it",
        clock_time(token.expires_at),
        last_error or "none",
        extra={"token": name},
    )


def clock_time(moment: datetime) -> str:
    """`moment` as log lines show it: UTC to the second."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
