"""Read-only views of the engine's state, for its readers: `/metrics`, `/status`, `tokend
status`, readiness, the local token endpoint. Readers never reach into jobs or sinks.

A view is a snapshot taken at one instant; it holds the current `Token` (whose `repr` never shows
the value) so that the local endpoint can serve it, and nothing else secret.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from tokend.engine.outcome import Phase
from tokend.errors import TokendError
from tokend.oauth.grants import CredentialState, credential_state
from tokend.token import Token

if TYPE_CHECKING:
    from tokend.engine.job import TokenJob
    from tokend.engine.slot import SinkSlot


@dataclass(frozen=True, slots=True)
class SinkView:
    name: str
    held_expires_at: datetime | None
    """Expiry of the token this sink holds (None: never written, or withdrawn)."""
    holds_valid_token: bool
    required_for_ready: bool
    """Readiness waits for this sink to hold a valid token."""
    last_success: datetime | None
    failures: int
    """Failed attempts since the last success."""
    last_error: TokendError | None
    published: int
    """Successful publishes so far."""
    errors: int
    """Failed publishes so far."""
    notifications: dict[str, int] | None = None
    """Consumer notifications (`on_publish`) by result, if the sink has any."""
    standby: bool = False
    """Leader election: a shared sink another replica leads and writes; this one does not."""


@dataclass(frozen=True, slots=True)
class TokenView:
    name: str
    phase: Phase
    token: Token | None
    """The current token (possibly expired), or None before the first success."""
    valid: bool
    """A token is held and has not expired."""
    published: bool
    """Valid, and every sink holds a valid token."""
    ready: bool
    """Valid, and every sink that readiness waits for (`required_for_ready`) holds one; or
    standby (a follower stays ready)."""
    next_refresh: datetime | None
    last_success: datetime | None
    failures: int
    """Failed attempts since the last success."""
    last_error: TokendError | None
    refreshes: dict[str, int]
    """Attempts by result: success, transient_error, permanent_error."""
    sinks: tuple[SinkView, ...]
    credential: CredentialState | None = None
    """What is known about the grant's own credential (a certificate's expiry), if anything."""
    dormant: bool = False
    """An on-demand token nobody has asked for yet (not started)."""
    refreshing: bool = False
    """A request for it is in flight."""
    standby: bool = False
    """Leader election: another replica leads and runs this token; this one does not."""

    @property
    def expires_at(self) -> datetime | None:
        return self.token.expires_at if self.token is not None else None

    def needs_attention(self, late: datetime) -> bool:
        """As the census counts it (`needs_attention`); never a dormant or standby token."""
        return not (self.dormant or self.standby) and needs_attention(
            valid=self.valid,
            failures=self.failures,
            sink_failing=any(sink.failures > 0 and not sink.standby for sink in self.sinks),
            next_refresh=self.next_refresh,
            late=late,
        )


def view_of(
    job: TokenJob, now: datetime, *, dormant: bool = False, standby: bool = False
) -> TokenView:
    token = job.token
    valid = token is not None and token.is_valid(now)
    sinks = tuple(_sink_view(slot, now) for slot in job.publisher.slots)
    written = [sink for sink in sinks if not sink.standby]
    phase = job.phase(now)
    return TokenView(
        name=job.name,
        phase=Phase.STANDBY if standby else phase,
        token=token,
        valid=valid,
        published=valid and all(sink.holds_valid_token for sink in written),
        ready=is_ready(job, now, dormant=dormant, standby=standby),
        next_refresh=job.next_run,
        last_success=job.last_success,
        failures=job.failures,
        last_error=job.last_error,
        refreshes=job.results,
        sinks=sinks,
        credential=credential_state(job.request.grant),
        dormant=dormant,
        refreshing=phase == "refreshing",
        standby=standby,
    )


def is_ready(job: TokenJob, now: datetime, *, dormant: bool, standby: bool) -> bool:
    """Valid, and every sink readiness waits for (`required_for_ready`) holds a valid token; or
    not waited for: an on-demand token nobody has asked for yet, or one another replica runs
    (leader election). Cheap: no view is built (`/readyz` asks it of every token)."""
    if dormant or standby:
        return True
    token = job.token
    if token is None or not token.is_valid(now):
        return False
    for slot in job.publisher.slots:  # a loop, not all(...): no generator per token
        if slot.required_for_ready and not slot.standby and not slot.holds_valid_token(now):
            return False
    return True


def _sink_view(slot: SinkSlot, now: datetime) -> SinkView:
    held = slot.held
    return SinkView(
        name=slot.name,
        held_expires_at=held.expires_at if held is not None else None,
        holds_valid_token=held is not None and held.is_valid(now),
        required_for_ready=slot.required_for_ready,
        last_success=slot.last_success,
        failures=slot.failures,
        last_error=slot.last_error,
        published=slot.successes,
        errors=slot.errors,
        notifications=dict(getattr(slot.observer, "results", {})) if slot.observer else None,
        standby=slot.standby,
    )


OVERDUE = timedelta(seconds=60)
"""A token whose planned refresh is this far in the past needs attention (as the alert
TokendTokenRefreshStuck reads it)."""


def needs_attention(
    *, valid: bool, failures: int, sink_failing: bool, next_refresh: datetime | None, late: datetime
) -> bool:
    """A token someone should look at: no valid token, failed attempts since its last success,
    a sink failing, or its planned refresh before `late` (overdue)."""
    return (
        not valid
        or failures > 0
        or sink_failing
        or (next_refresh is not None and next_refresh < late)
    )


@dataclass(slots=True)
class Census:
    """Figures over every token, gathered without building a view per token, so that readers
    needing only these (and the views of the few tokens that need attention) stay fast at
    100,000 tokens."""

    states: dict[Phase, int] = field(default_factory=lambda: dict.fromkeys(Phase, 0))
    """Tokens by phase (`Phase` values), dormant ones not included."""
    dormant: int = 0
    """On-demand tokens nobody has asked for yet."""
    refreshes: dict[str, int] = field(default_factory=dict)
    """Attempts by result, summed (with those of retired jobs)."""
    publishes: dict[str, int] = field(default_factory=dict)
    """Sink publishes by result (success, error), summed (with those of retired jobs)."""
    earliest_expiry: datetime | None = None
    """The soonest expiry of a valid token held (running here, not dormant)."""
    attention: list[str] = field(default_factory=list)
    """Tokens running here that need attention (`needs_attention`)."""
    credentials: dict[str, datetime] = field(default_factory=dict)
    """Identity -> when its credential (a certificate) expires, where known."""
    running: int = 0
    """Tokens this replica runs (not standby), dormant ones included."""
    valid: int = 0
    """Tokens running here that hold a valid token."""
    next_refresh: datetime | None = None
    """The soonest planned refresh of a token running here."""

    def count(
        self, job: TokenJob, now: datetime, late: datetime, *, dormant: bool, standby: bool
    ) -> None:
        self.refreshes["success"] += job.successes
        self.refreshes["transient_error"] += job.transient_errors
        self.refreshes["permanent_error"] += job.permanent_errors
        sink_failing = False
        for slot in job.publisher.slots:
            self.publishes["success"] += slot.successes
            self.publishes["error"] += slot.errors
            sink_failing = sink_failing or (slot.failures > 0 and not slot.standby)
        if not standby:
            self.running += 1
        if dormant:
            self.dormant += 1
            return
        self.states[Phase.STANDBY if standby else job.phase(now)] += 1
        if not standby:
            self._count_running(job, now, late, sink_failing=sink_failing)

    def _count_running(
        self, job: TokenJob, now: datetime, late: datetime, *, sink_failing: bool
    ) -> None:
        """A token this replica runs (not standby), started (not dormant)."""
        token = job.token
        valid = token is not None and token.is_valid(now)
        if valid and token:
            self.valid += 1
            if self.earliest_expiry is None or token.expires_at < self.earliest_expiry:
                self.earliest_expiry = token.expires_at
        if job.next_run and (self.next_refresh is None or job.next_run < self.next_refresh):
            self.next_refresh = job.next_run
        if needs_attention(
            valid=valid,
            failures=job.failures,
            sink_failing=sink_failing,
            next_refresh=job.next_run,
            late=late,
        ):
            self.attention.append(job.name)
        credential = credential_state(job.request.grant)
        if credential and credential.expires_at:  # the tokens of one identity share it
            self.credentials.setdefault(credential.identity, credential.expires_at)


@dataclass
class RetiredCounts:
    """Attempts made by jobs that a reload replaced or removed, so that instance-wide totals
    (the sum over every job, plus these) never go down."""

    refreshes: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("success", "transient_error", "permanent_error"), 0)
    )
    publishes: dict[str, int] = field(default_factory=lambda: {"success": 0, "error": 0})

    def add(self, job: TokenJob) -> None:
        for result, count in job.results.items():
            self.refreshes[result] += count
        for slot in job.publisher.slots:
            for result, count in slot.results.items():
                self.publishes[result] += count


def take_census(
    jobs: Iterable[tuple[TokenJob, bool, bool]],
    now: datetime,
    late: datetime,
    retired: tuple[dict[str, int], dict[str, int]],
) -> Census:
    """`jobs`: (job, dormant, standby). `retired`: counts of jobs a reload replaced or removed
    (refreshes, publishes), so that the sums never go down."""
    census = Census(refreshes=dict(retired[0]), publishes=dict(retired[1]))
    for job, dormant, standby in jobs:
        census.count(job, now, late, dormant=dormant, standby=standby)
    return census
