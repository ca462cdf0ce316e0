"""The census over every token (`tokend.engine.query`): the figures `/metrics` exports as totals,
each checked to the exact value over a mix of tokens in every situation that changes them
(dormant, standby, an expired token, a failing or a standby sink, an overdue refresh)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

from tokend.engine import TokenJob
from tokend.engine.outcome import Phase
from tokend.engine.query import Census, RetiredCounts, take_census, view_of
from tokend.oauth.grants import CredentialState
from tokend.token import Token

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LATE = NOW - timedelta(minutes=1)


def _token(minutes: int) -> Token:
    return Token("v", "Bearer", expires_at=NOW + timedelta(minutes=minutes), obtained_at=NOW)


def _slot(success: int = 0, error: int = 0, *, failures: int = 0, standby: bool = False) -> Any:
    return SimpleNamespace(
        successes=success,
        errors=error,
        results={"success": success, "error": error},
        failures=failures,
        standby=standby,
    )


class _Grant:
    def __init__(self, credential: CredentialState | None) -> None:
        self.credential = credential

    def credential_state(self) -> CredentialState | None:
        return self.credential


@dataclass
class _Job:
    """What the census reads of a `TokenJob`, set directly."""

    name: str
    state: Phase = Phase.FRESH
    token: Token | None = None
    failures: int = 0
    next_run: datetime | None = NOW + timedelta(minutes=30)
    slots: list[Any] = field(default_factory=list)
    refreshes: tuple[int, int, int] = (0, 0, 0)
    credential: CredentialState | None = None

    def __post_init__(self) -> None:
        self.last_success: datetime | None = None
        self.last_error = None
        self.successes, self.transient_errors, self.permanent_errors = self.refreshes
        names = ("success", "transient_error", "permanent_error")
        self.results = dict(zip(names, self.refreshes, strict=True))
        self.publisher = SimpleNamespace(slots=self.slots)
        self.request = SimpleNamespace(grant=_Grant(self.credential))

    def phase(self, now: datetime) -> Phase:
        assert now == NOW
        return self.state

    def job(self) -> TokenJob:
        return cast(TokenJob, self)


def _jobs() -> list[tuple[_Job, bool, bool]]:
    """(job, dormant, standby) for a census of ten tokens."""
    app = CredentialState("app", NOW + timedelta(days=90))
    return [
        (_Job("fresh", token=_token(50), refreshes=(3, 2, 1), credential=app,
              slots=[_slot(4, 1), _slot(2)]), False, False),
        (_Job("sink-failing", Phase.SINK_FAILING, _token(20), credential=CredentialState(
            "app", NOW + timedelta(days=10)), slots=[_slot(0, 1, failures=1), _slot(1)]),
         False, False),
        (_Job("standby", token=_token(10), failures=2, refreshes=(1, 0, 0),
              next_run=LATE - timedelta(minutes=5), slots=[_slot(5, 2, failures=2, standby=True)]),
         False, True),
        (_Job("dormant", Phase.PENDING, refreshes=(0, 7, 0), slots=[_slot(0, 3)],
              next_run=LATE - timedelta(minutes=9), credential=CredentialState("asleep", NOW)),
         True, False),
        (_Job("dormant-too", Phase.PENDING), True, False),
        (_Job("expired", Phase.EXPIRED, _token(-1), credential=CredentialState("other", None)),
         False, False),
        (_Job("overdue", token=_token(40), next_run=LATE - timedelta(seconds=1)), False, False),
        (_Job("due", token=_token(40), next_run=LATE, credential=CredentialState(
            "cert", NOW + timedelta(days=5))), False, False),
        (_Job("failing", Phase.RETRYING, _token(30), failures=1, refreshes=(0, 1, 0)),
         False, False),
        (_Job("shared-sink-led-elsewhere", token=_token(45),
              slots=[_slot(failures=1, standby=True), _slot(1)]), False, False),
    ]  # fmt: skip


def test_the_census_of_tokens_in_every_situation() -> None:
    retired = (
        {"success": 10, "transient_error": 20, "permanent_error": 30},
        {"success": 40, "error": 50},
    )
    census = take_census(
        ((job.job(), dormant, standby) for job, dormant, standby in _jobs()), NOW, LATE, retired
    )
    states = dict.fromkeys(Phase, 0) | {
        Phase.FRESH: 4,
        Phase.SINK_FAILING: 1,
        Phase.STANDBY: 1,
        Phase.EXPIRED: 1,
        Phase.RETRYING: 1,
    }
    assert census == Census(
        states=states,
        dormant=2,
        refreshes={"success": 14, "transient_error": 30, "permanent_error": 31},
        publishes={"success": 53, "error": 57},
        earliest_expiry=NOW + timedelta(minutes=20),  # not the standby's, nor the expired one
        attention=["sink-failing", "expired", "overdue", "failing"],
        credentials={"app": NOW + timedelta(days=90), "cert": NOW + timedelta(days=5)},
        running=9,  # all but the standby, the dormant included
        valid=6,  # not the standby's, the dormant's (none) nor the expired one
        next_refresh=LATE - timedelta(seconds=1),  # the overdue's: not the standby's or dormant's
    )
    assert retired[0]["success"] == 10 and retired[1]["success"] == 40  # copied, not summed into


def test_no_token_is_not_published_and_needs_attention() -> None:
    totals = RetiredCounts()
    census = take_census(
        [(_Job("new", Phase.PENDING).job(), False, False)],
        NOW,
        LATE,
        (totals.refreshes, totals.publishes),
    )
    assert (census.attention, census.earliest_expiry, census.states[Phase.PENDING]) == (
        ["new"],
        None,
        1,
    )


def test_retired_counts_add_each_job_to_the_totals() -> None:
    retired = RetiredCounts()
    retired.add(_Job("a", refreshes=(1, 2, 3), slots=[_slot(4, 5), _slot(6, 7)]).job())
    retired.add(_Job("b", refreshes=(10, 0, 1), slots=[_slot(1)]).job())
    assert retired.refreshes == {"success": 11, "transient_error": 2, "permanent_error": 4}
    assert retired.publishes == {"success": 11, "error": 12}


def test_a_view_names_the_credential_of_its_grant() -> None:
    credential = CredentialState("app", NOW + timedelta(days=90))
    job = _Job("crm", token=_token(50), credential=credential)
    view = view_of(job.job(), NOW)
    assert (view.credential, view.phase, view.valid, view.published, view.ready) == (
        credential,
        Phase.FRESH,
        True,
        True,
        True,
    )
    assert view_of(_Job("other").job(), NOW).credential is None
