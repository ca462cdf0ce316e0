"""Read-only views of the engine's state, for its readers: `/metrics`, `/status`, `tokend
status`, readiness, the local token endpoint. Readers never reach into jobs or sinks.

A view is a snapshot taken at one instant; it holds the current `Token` (whose `repr` never shows
the value) so that the local endpoint can serve it, and nothing else secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from tokend.engine.job import Phase
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


def view_of(
    job: TokenJob, now: datetime, *, dormant: bool = False, standby: bool = False
) -> TokenView:
    token = job.token
    valid = token is not None and token.is_valid(now)
    sinks = tuple(_sink_view(slot, now) for slot in job.publisher.slots)
    phase = job.phase(now)
    return TokenView(
        name=job.name,
        phase=Phase.STANDBY if standby else phase,
        token=token,
        valid=valid,
        published=valid and all(sink.holds_valid_token for sink in sinks),
        # Not waited for: an on-demand token nobody has asked for yet, or one another
        # replica runs (leader election).
        ready=dormant
        or standby
        or (valid and all(s.holds_valid_token for s in sinks if s.required_for_ready)),
        next_refresh=job.next_run,
        last_success=job.last_success,
        failures=job.failures,
        last_error=job.last_error,
        refreshes={
            "success": job.results.success,
            "transient_error": job.results.transient_error,
            "permanent_error": job.results.permanent_error,
        },
        sinks=sinks,
        credential=credential_state(job.request.grant),
        dormant=dormant,
        refreshing=phase == "refreshing",
        standby=standby,
    )


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
        published=slot.results.success,
        errors=slot.results.error,
        notifications=dict(getattr(slot.observer, "results", {})) if slot.observer else None,
    )
