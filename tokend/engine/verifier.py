"""Repairing drift: sinks that can tell whether they still hold tokend's token (`verify()`, e.g.
the Vault sink: one read) are asked on a slow jittered timer, so a value deleted or overwritten
by someone else is written again within about one interval, not at the next refresh (~50 min
away with 1-hour tokens).

What it costs:
- Nothing for sink types without `verify()` (file sinks): their slots are never registered.
- One scheduler key per sink *type*, not per sink: each type keeps a heap of its sinks' due
  times, and its timer fires for the earliest, at most once a second, checking every sink due.
  10,000 Vault sinks are one timer and a 10,000-entry heap; the checks run in that type's
  delivery lane (`Deliveries`), a few at a time, so a stuck store fills only its own lane.

When one sink of a type recovers after failures (Vault is back, unsealed), every other sink of
that type catches up at once: failing ones retry now instead of at the end of their backoff
(up to 5 minutes), the others are checked, since the store may have lost or rolled back data
while it was away. A sweep at most every `SWEEP_GAP`, so 10,000 recoveries make one sweep.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from tokend.clock import Timing
from tokend.errors import TokendError
from tokend.sinks import can_verify
from tokend.token import Token

if TYPE_CHECKING:
    from tokend.engine.publisher import Deliveries
    from tokend.engine.slot import SinkSlot

log = logging.getLogger("tokend.publisher")

GRANULARITY = timedelta(seconds=1)
"""A type's timer fires at most this often; sinks due meanwhile are checked together."""
SWEEP_GAP = timedelta(seconds=10)
"""Recoveries closer together than this make one catch-up sweep."""


@dataclass(eq=False)
class _Kind:
    """The verifiable sinks of one type, by when each is next due."""

    key: str
    heap: list[tuple[datetime, int, SinkSlot]] = field(default_factory=list)
    live: dict[SinkSlot, int] = field(default_factory=dict)
    """Each registered slot and the sequence number of its current heap entry."""
    armed_at: datetime | None = None
    last_sweep: datetime | None = None


class Verifier:
    """Plans `SinkSlot.check()` for every slot whose sink can verify. One per process."""

    def __init__(self, timing: Timing, deliveries: Deliveries) -> None:
        self._timing = timing
        self._deliveries = deliveries
        self._kinds: dict[type, _Kind] = {}
        self._sequence = itertools.count()

    def watch(self, slot: SinkSlot) -> None:
        """Check `slot` from now on, first at a random point of its first interval (so that
        thousands of sinks registered together are spread out)."""
        kind = self._kind(slot)
        if slot not in kind.live:
            self._plan(kind, slot, self._timing.clock.now(), first=True)
            self._arm(kind)

    def forget(self, slot: SinkSlot) -> None:
        kind = self._kinds.get(type(slot.sink))
        if kind is not None:
            kind.live.pop(slot, None)  # its heap entry is dropped when it comes up

    def recovered(self, slot: SinkSlot) -> None:
        """`slot` was written again after failures: its store is back. Every other sink of the
        same type catches up now (see the module docstring)."""
        kind = self._kinds.get(type(slot.sink))
        now = self._timing.clock.now()
        if kind is None or (kind.last_sweep is not None and now - kind.last_sweep < SWEEP_GAP):
            return
        kind.last_sweep = now
        for other in kind.live:
            if other is not slot:
                self._deliveries.submit(other, other.catch_up)

    def _kind(self, slot: SinkSlot) -> _Kind:
        sink_type = type(slot.sink)
        kind = self._kinds.get(sink_type)
        if kind is None:
            kind = self._kinds[sink_type] = _Kind(f"verify/{sink_type.__name__}")
        return kind

    def _plan(self, kind: _Kind, slot: SinkSlot, now: datetime, *, first: bool = False) -> None:
        sink = slot.sink
        interval = sink.verify_interval if can_verify(sink) else timedelta(0)
        sequence = next(self._sequence)
        kind.live[slot] = sequence
        if interval <= timedelta(0):
            return  # only caught up after a recovery
        spread = self._timing.rand.random() if first else 0.75 + 0.5 * self._timing.rand.random()
        heapq.heappush(kind.heap, (now + max(interval * spread, GRANULARITY), sequence, slot))

    def _arm(self, kind: _Kind, not_before: datetime | None = None) -> None:
        """Set the type's timer for its earliest due sink (dropping entries of forgotten or
        re-planned sinks on the way)."""
        heap = kind.heap
        while heap and kind.live.get(heap[0][2]) != heap[0][1]:
            heapq.heappop(heap)
        if not heap:
            return
        at = max(heap[0][0], not_before) if not_before else heap[0][0]
        if kind.armed_at is not None and kind.armed_at <= at:
            return  # the timer fires earlier anyway
        kind.armed_at = at
        self._timing.scheduler.schedule(kind.key, at, lambda: self._tick(kind))

    async def _tick(self, kind: _Kind) -> None:
        now = self._timing.clock.now()
        kind.armed_at = None
        heap = kind.heap
        while heap and heap[0][0] <= now:
            _, sequence, slot = heapq.heappop(heap)
            if kind.live.get(slot) != sequence:
                continue  # forgotten, or planned anew
            self._plan(kind, slot, now)
            self._deliveries.submit(slot, slot.check)
        self._arm(kind, not_before=now + GRANULARITY)


async def verified(slot: SinkSlot, held: Token) -> bool:
    """The sink's answer to "do you still hold `held`?"; True when it cannot tell now (Vault
    is down: asked again at the next check, and its failures show when it is written to)."""
    sink = slot.sink
    if not can_verify(sink):
        return True
    extra = {"token": slot.token_name}
    try:
        return await sink.verify(held)
    except TokendError as exc:
        log.debug("sink %s: cannot verify: %s", slot.name, exc, extra=extra)
    except Exception:
        log.exception("sink %s: unexpected failure to verify", slot.name, extra=extra)
    return True
